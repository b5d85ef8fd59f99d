"""Training checkpoints: atomic, the newest K kept, and a resumed run equal to an unbroken one."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from storage.store import Store
from tasks.train.checkpoint import CheckpointStore
from tasks.train.config import ModelConfig, TrainConfig
from tasks.train.data import TokenRows
from tasks.train.hooks import TrainHook
from tasks.train.loop import make_accelerator, train_model_loop
from tasks.train.model import build_model, gpt2_config

LOG = logging.getLogger("tests")
CONFIG = TrainConfig(
    batch_size=4,
    gradient_accumulation_steps=2,
    learning_rate=3e-3,
    warmup_steps=3,
    max_steps=16,
    epochs=10,  # several epochs: resuming mid-epoch and across epochs both happen
    eval_interval=8,
    eval_batches=2,
    log_interval=1,
    checkpoint_interval=5,
    keep_checkpoints=2,
)


def _rows(n=40, context=16, vocab=64):
    starts = np.random.default_rng(0).integers(0, vocab, n)
    return TokenRows([((starts[:, None] + np.arange(context)) % vocab).astype(np.uint16)])


def _train(store=None, crash_at=None, hooks=()):
    # Dropout on, so that a resumed run must also restore the random generator.
    model_config = ModelConfig(n_layer=1, n_embd=32, n_head=2, dropout=0.1)
    model = build_model(gpt2_config(model_config, 64, 16, 0), CONFIG.seed)
    checkpoints = CheckpointStore(store, "ckpt", CONFIG.keep_checkpoints, LOG) if store else None
    hooks = [*hooks, *([_CrashAt(crash_at)] if crash_at else [])]
    rows = _rows()
    return train_model_loop(
        model,
        rows,
        rows,
        [1, 2],
        CONFIG,
        make_accelerator(CONFIG),
        LOG,
        checkpoints,
        hooks=hooks,
    )


class _CrashAt(TrainHook):
    """Raises after a given step, like a crash mid-run."""

    def __init__(self, step):
        self.step = step

    def on_step(self, loop, output):
        if output.step == self.step:
            raise KeyboardInterrupt(f"crash at step {self.step}")


def _losses(result):
    return [(r["step"], r["loss"], r["ce"]) for r in result.history]


def test_resumed_run_matches_an_unbroken_run(store):
    unbroken = _train()
    with pytest.raises(KeyboardInterrupt):
        _train(store, crash_at=13)
    checkpoints = CheckpointStore(store, "ckpt", 2, LOG)
    assert checkpoints.committed_steps() == [5, 10]
    resumed = _train(store)
    assert resumed.resumed_from == 10
    assert resumed.steps == unbroken.steps == 16
    assert [s for s, _, _ in _losses(resumed)] == list(range(1, 17))
    np.testing.assert_allclose(
        np.array(_losses(resumed)), np.array(_losses(unbroken)), rtol=0, atol=1e-6
    )
    assert [e["valid_loss"] for e in resumed.evals] == pytest.approx(
        [e["valid_loss"] for e in unbroken.evals], abs=1e-6
    )
    # Steps 10 and 15 kept, then 16 (the end) replaces 10.
    assert checkpoints.committed_steps() == [15, 16]


def test_half_written_or_damaged_checkpoints_are_ignored(store):
    with pytest.raises(KeyboardInterrupt):
        _train(store, crash_at=12)
    checkpoints = CheckpointStore(store, "ckpt", 2, LOG)
    # A save killed before its commit record leaves files only: not a checkpoint.
    store.write_bytes("ckpt/step-00000015/state.pt", b"half")
    assert checkpoints.committed_steps() == [5, 10]
    # A committed checkpoint whose file was damaged is skipped for the one before.
    store.write_bytes("ckpt/step-00000010/state.pt", b"damaged")
    resumed = _train(store)
    assert resumed.resumed_from == 5
    assert resumed.steps == 16


class _Planted:
    """A pickle that runs a command when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("crafted", ["pickle", "shapes", "commit record"])
def test_a_crafted_checkpoint_is_skipped_for_the_one_before(store, tmp_path, caplog, crafted):
    import hashlib
    import io
    import json

    import torch

    with pytest.raises(KeyboardInterrupt):
        _train(store, crash_at=12)
    marker = tmp_path / "pwned"
    folder = "ckpt/step-00000010"
    if crafted == "commit record":
        store.write_bytes(f"{folder}/_commit.json", b"\x00 not json")
    else:
        if crafted == "pickle":
            buffer = io.BytesIO()
            torch.save({"model": _Planted(marker)}, buffer)  # what weights_only refuses
            data = buffer.getvalue()
        else:
            state = torch.load(
                io.BytesIO(store.read_bytes(f"{folder}/state.pt")), weights_only=True
            )
            state["model"] = {k: v[:1] for k, v in state["model"].items()}  # wrong shapes
            buffer = io.BytesIO()
            torch.save(state, buffer)
            data = buffer.getvalue()
        # Committed as whole: the record's checksum matches the crafted file.
        store.write_bytes(f"{folder}/state.pt", data)
        record = json.loads(store.read_bytes(f"{folder}/_commit.json"))
        record["files"]["state.pt"] = {
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        store.write_json(f"{folder}/_commit.json", record)
    with caplog.at_level(logging.WARNING):
        resumed = _train(store)
    assert not marker.exists()
    assert resumed.resumed_from == 5 and resumed.steps == 16
    assert "skipped" in caplog.text


class _Events(TrainHook):
    """Records steps and committed checkpoints in the order the loop reports them."""

    def __init__(self, reached: tuple[int, threading.Event] | None = None):
        self.events = []
        self.reached = reached  # (step, event): the event is set once that step is done

    def on_step(self, loop, output):
        self.events.append(("step", output.step))
        if self.reached and output.step >= self.reached[0]:
            self.reached[1].set()

    def on_checkpoint(self, loop, report):
        self.events.append(("checkpoint", report.step))


class _SlowStateStore(Store):
    """A store whose first checkpoint state write lasts until ``released`` is set (at most two
    minutes), as a large one to S3 takes a while: a loop that wrote checkpoints in its own
    thread would wait out the two minutes, on a fast machine or a slow one."""

    def __init__(self, url, released: threading.Event):
        super().__init__(url)
        self.released = released
        self.first = True

    def write_bytes(self, rel, data):
        if rel.endswith("/state.pt") and self.first:
            self.first = False
            self.released.wait(timeout=120)
        super().write_bytes(rel, data)


def test_checkpoints_are_written_in_the_background_and_reported_once_committed(tmp_path):
    step_7_done = threading.Event()
    store = _SlowStateStore(str(tmp_path / "store"), released=step_7_done)
    events = _Events(reached=(7, step_7_done))
    result = _train(store, hooks=[events])
    committed = [step for kind, step in events.events if kind == "checkpoint"]
    assert committed == [5, 10, 15, 16]  # the last one too, before the loop returns
    # Training went on while the checkpoint of step 5 was being written.
    assert not store.first  # that write went through the held path
    assert events.events.index(("checkpoint", 5)) > events.events.index(("step", 7))
    assert result.checkpoints == 4
    assert CheckpointStore(store, "ckpt", 2, LOG).committed_steps() == [15, 16]


class _FailingStateStore(Store):
    def write_bytes(self, rel, data):
        if rel.endswith("/state.pt"):
            raise OSError("disk full")
        super().write_bytes(rel, data)


def test_a_failed_background_checkpoint_stops_training_with_its_error(tmp_path):
    store = _FailingStateStore(str(tmp_path / "store"))
    with pytest.raises(OSError, match="disk full"):
        _train(store)
    assert CheckpointStore(store, "ckpt", 2, LOG).committed_steps() == []
