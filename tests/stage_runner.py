"""Runs one stage in a child process, so that a fault test can SIGKILL it mid-stage.

Usage: python -m tests.stage_runner tokenize|train ARGS_JSON. The stage runs exactly as in the
pipeline (``run_stage`` with the stage's own spec and build); only a pause per batch or step is
added, so that the parent can kill it at a known point. A training run writes each step it
finishes to ``step_file`` (from a training hook), so the parent knows where it was killed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from functools import partial
from pathlib import Path

from storage.stages import StageRef, run_stage
from storage.store import Store

logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
LOG = logging.getLogger("stage_runner")


def run_tokenize(args: dict) -> StageRef:
    """The tokenize stage, pausing after each batch."""
    from tasks.tokenize.build import TokenizeConfig, tokenize_documents, tokenize_spec
    from tasks.tokenizer.build import load_stage_tokenizer

    documents = StageRef.model_validate(args["documents"])
    tokenizer_ref = StageRef.model_validate(args["tokenizer"])
    config = TokenizeConfig.model_validate(args["config"])
    pause = lambda split, docs, rows: time.sleep(args["pause"])  # noqa: E731
    store = Store(args["store_url"])
    tokenizer = load_stage_tokenizer(store, tokenizer_ref)
    build = partial(tokenize_documents, store, documents, tokenizer, config, progress=pause)
    spec = tokenize_spec(documents, tokenizer_ref, config)
    return run_stage(store, spec, build, LOG)


def run_train(args: dict) -> StageRef:
    """The train stage, pausing after each optimizer step."""
    from tasks.train.build import train_from_shards, train_spec
    from tasks.train.config import ModelConfig, TrainConfig
    from tasks.train.hooks import TrainHook

    class SlowSteps(TrainHook):
        """Records each finished step, then pauses."""

        def on_step(self, loop, output):
            # Written whole, then renamed: a kill mid-write must not leave the parent an
            # empty file to read.
            step_file = Path(args["step_file"])
            partial_file = step_file.with_name(step_file.name + ".partial")
            partial_file.write_text(str(output.step))
            os.replace(partial_file, step_file)
            time.sleep(args["pause"])

    tokens = StageRef.model_validate(args["tokens"])
    tokenizer = StageRef.model_validate(args["tokenizer"])
    model_config = ModelConfig.model_validate(args["model"])
    train_config = TrainConfig.model_validate(args["train"])
    store = Store(args["store_url"])
    build = partial(
        train_from_shards,
        store,
        tokens,
        tokenizer,
        model_config,
        train_config,
        log=LOG,
        hooks=[SlowSteps()],
    )
    spec = train_spec(tokens, tokenizer, model_config, train_config)
    return run_stage(store, spec, build, LOG)


if __name__ == "__main__":
    runners = {"tokenize": run_tokenize, "train": run_train}
    ref = runners[sys.argv[1]](json.loads(sys.argv[2]))
    print(json.dumps(ref.model_dump(mode="json")))
