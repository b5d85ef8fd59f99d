"""Two runs of one config at once against one store: both succeed, each output built once."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from storage.stages import MANIFEST_NAME, load_manifest
from storage.store import Store
from storage.verify import verify_store
from tasks.registry import STAGES
from tests.flows.test_pipeline import TINY

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_two_pipeline_runs_at_once_share_one_consistent_store(corpus_dir, tmp_path):
    store = Store(str(tmp_path / "store"))
    overrides = [f"corpus.roots=[{corpus_dir}]", *TINY]
    command = [sys.executable, "-m", "flows.cli", "run", "--store", store.url]
    command += [arg for item in overrides for arg in ("--set", item)]
    runs = []
    for name in ("a", "b"):
        # Each run has its own Prefect (as on two machines); only the store is shared.
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / f"prefect-{name}")}
        runs.append(
            subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        )
    outputs = [run.communicate(timeout=600)[0].decode() for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output[-3000:]
    models = {
        line for output in outputs for line in output.splitlines() if line.startswith("model:")
    }
    assert len(models) == 1

    manifests = [f for f in store.list_files("") if f.endswith(MANIFEST_NAME)]
    per_stage = Counter(m.rsplit("/", 2)[0] for m in manifests)
    groups = per_stage.pop("filter/groups")  # one output per corpus group, and its tokens
    assert groups >= 2 and per_stage.pop("tokenize/groups") == groups
    # One output per stage, each in the stage's folder (publish's under its model's name).
    assert per_stage == {
        ("publish/codeparrot-ds" if stage.name == "publish" else stage.name): 1 for stage in STAGES
    }
    report = verify_store(store)  # every part whole and the one its manifest names
    assert report.outputs == len(STAGES) + 2 * groups and report.damage == []
    for manifest in manifests:
        stage, key = manifest.removesuffix(f"/{MANIFEST_NAME}").rsplit("/", 1)
        parts = load_manifest(store, stage, key).parts
        leftovers = [
            f
            for f in store.list_files(f"{stage}/{key}")
            if f not in parts and not f.startswith("_checkpoints/")
        ]
        assert leftovers == [MANIFEST_NAME], leftovers
