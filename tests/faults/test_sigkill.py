"""SIGKILL in the middle of a stage, then rerun: nothing partial is trusted, nothing is lost."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from storage.stages import CHECKPOINTS_DIR, load_manifest, run_stage
from tasks.tokenize.build import TokenizeConfig, tokenize_documents, tokenize_spec
from tasks.train.build import train_from_shards, train_spec
from tasks.train.config import ModelConfig, TrainConfig

pytestmark = pytest.mark.slow
LOG = logging.getLogger("tests")
ROOT = Path(__file__).resolve().parents[2]


def _start(kind: str, args: dict, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "w")  # noqa: SIM115 (the child owns it)
    return subprocess.Popen(
        [sys.executable, "-m", "tests.stage_runner", kind, json.dumps(args)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _kill_when(child: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert child.poll() is None, "the child finished before it could be killed"
        assert time.monotonic() < deadline, "the child never reached the kill point"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()


def test_tokenize_killed_mid_stage_resumes_to_the_same_result(
    documents_ref, tokenizer_ref, tokenizer, session_store, data_store, tmp_path, caplog
):
    store = data_store  # the child reads its inputs from the store it writes to
    config = TokenizeConfig(mode="packed", context_length=32, batch_size=2)
    spec = tokenize_spec(documents_ref, tokenizer_ref, config)
    reference_store = type(store)(str(tmp_path / "reference"))
    build = partial(tokenize_documents, session_store, documents_ref, tokenizer, config)
    reference = run_stage(reference_store, spec, build, LOG)

    args = {
        "store_url": store.url,
        "documents": documents_ref.model_dump(mode="json"),
        "tokenizer": tokenizer_ref.model_dump(mode="json"),
        "config": config.model_dump(mode="json"),
        "pause": 0.05,
    }
    child = _start("tokenize", args, tmp_path / "child.log")
    _kill_when(child, lambda: store.exists(f"{spec.prefix}/_progress/000003.json"))
    assert load_manifest(store, spec.stage, spec.key) is None
    kept = store.list_files(f"{spec.prefix}/train")

    with caplog.at_level(logging.INFO):
        resumed = run_stage(store, spec, build, LOG)
    assert resumed.resumed_progress_records >= 3
    manifest = load_manifest(store, spec.stage, spec.key)
    assert set(kept) <= {n.removeprefix("train/") for n in manifest.parts}
    assert manifest.parts == load_manifest(reference_store, spec.stage, spec.key).parts
    assert resumed.counts == reference.counts


TRAIN = TrainConfig(
    batch_size=4,
    gradient_accumulation_steps=2,
    learning_rate=3e-3,
    warmup_steps=5,
    max_steps=40,
    eval_interval=20,
    eval_batches=2,
    log_interval=1,
    checkpoint_interval=5,
    keep_checkpoints=2,
)
MODEL = ModelConfig(n_layer=1, n_embd=32, n_head=2, dropout=0.1)


def test_training_killed_mid_run_resumes_exactly(
    tokens_ref, tokenizer_ref, session_store, data_store, tmp_path, caplog
):
    store = data_store
    spec = train_spec(tokens_ref, tokenizer_ref, MODEL, TRAIN)
    build = partial(
        train_from_shards, session_store, tokens_ref, tokenizer_ref, MODEL, TRAIN, log=LOG
    )
    reference_store = type(store)(str(tmp_path / "reference"))
    run_stage(reference_store, spec, build, LOG)

    args = {
        "store_url": store.url,
        "tokens": tokens_ref.model_dump(mode="json"),
        "tokenizer": tokenizer_ref.model_dump(mode="json"),
        "model": MODEL.model_dump(mode="json"),
        "train": TRAIN.model_dump(mode="json"),
        "pause": 0.05,
        "step_file": str(tmp_path / "step"),
    }
    child = _start("train", args, tmp_path / "child.log")
    commit = f"{spec.prefix}/{CHECKPOINTS_DIR}/step-00000015/_commit.json"
    _kill_when(child, lambda: store.exists(commit))
    killed_at = int((tmp_path / "step").read_text())  # the last step the child finished
    assert load_manifest(store, spec.stage, spec.key) is None

    with caplog.at_level(logging.INFO):
        resumed = run_stage(store, spec, build, LOG)
    resumed_from = resumed.counts["resumed_from_step"]
    assert 15 <= resumed_from <= killed_at
    # One checkpoint may still be writing when the child is killed (one save is in flight at
    # a time, and training goes on meanwhile), so a loaded machine can lose up to two intervals.
    assert killed_at - resumed_from <= 2 * TRAIN.checkpoint_interval
    assert resumed.counts["steps"] == 40

    def history(s):
        data = json.loads(s.read_bytes(f"{spec.prefix}/history.json"))
        return np.array([[r["step"], r["loss"], r["ce"]] for r in data["train"]])

    np.testing.assert_allclose(history(store), history(reference_store), rtol=0, atol=1e-6)
