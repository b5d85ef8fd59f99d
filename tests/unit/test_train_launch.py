"""Multi-process training through ``accelerate launch``: two CPU processes stand in for GPUs."""

from __future__ import annotations

import logging
from functools import partial

import pytest

from storage.stages import read_part, run_stage
from tasks.train.build import HISTORY_PART, train_spec
from tasks.train.config import ModelConfig, TrainConfig
from tasks.train.launch import PROGRESS_MARK, TrainingLaunchError, build_training, forward_output

LOG = logging.getLogger("test_train_launch")
MODEL = ModelConfig(n_layer=1, n_embd=32, n_head=2, dropout=0.0)
TRAIN = TrainConfig(
    batch_size=4,
    gradient_accumulation_steps=2,
    learning_rate=3e-3,
    warmup_steps=2,
    max_steps=12,
    eval_interval=6,
    eval_batches=2,
    log_interval=3,
    checkpoint_interval=6,
    processes=2,
)


def test_forward_output_logs_lines_and_hands_over_progress(caplog):
    records = []
    lines = [
        "step 3/12 | loss 5.0\n",
        "\n",
        PROGRESS_MARK + '{"step": 3, "total_steps": 12}\n',
        "WARNING: [rank 1] disk: almost full\n",
    ]
    with caplog.at_level(logging.INFO, logger=LOG.name):
        forward_output(lines, LOG, records.append)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "step 3/12 | loss 5.0"),
        ("WARNING", "[rank 1] disk: almost full"),
    ]
    assert records == [{"step": 3, "total_steps": 12}]


@pytest.mark.slow  # launches training processes
def test_two_processes_train_one_model_and_report_through_the_caller(
    tokens_ref, tokenizer_ref, data_store, caplog
):
    store = data_store
    progress = []
    build = partial(
        build_training,
        store,
        tokens_ref,
        tokenizer_ref,
        MODEL,
        TRAIN,
        log=LOG,
        on_progress=progress.append,
    )
    with caplog.at_level(logging.INFO, logger=LOG.name):
        ref = run_stage(store, train_spec(tokens_ref, tokenizer_ref, MODEL, TRAIN), build, LOG)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "launching 2 training processes" in logged
    # The launched processes' own lines reach the caller's logger.
    assert "* 2 process(es)" in logged
    assert "step 12/12" in logged
    assert ref.counts["processes"] == 2
    assert ref.counts["steps"] == 12
    # 4 seqs * 2 accumulation * 2 processes per optimizer step.
    assert ref.counts["tokens"] == 12 * 4 * 2 * 2 * 32
    assert [p["step"] for p in progress] == [3, 6, 9, 12]
    history = read_part(store, ref, HISTORY_PART)
    assert b'"valid_loss"' in history
    assert any(name.startswith("model/") for name in store.list_files(ref.prefix))


@pytest.mark.slow  # launches training processes
def test_a_failing_launched_run_is_an_error_naming_the_fix(tokens_ref, tokenizer_ref, data_store):
    store = data_store
    broken = TRAIN.model_copy(update={"batch_size": 10_000})  # no full optimizer step
    build = partial(build_training, store, tokens_ref, tokenizer_ref, MODEL, broken, log=LOG)
    with pytest.raises(TrainingLaunchError, match="train.processes=1"):
        run_stage(store, train_spec(tokens_ref, tokenizer_ref, MODEL, broken), build, LOG)
