"""Every benchmark runs for a few steps, so none can rot unnoticed (figures are not checked:
the machines are noisy; the benches print them beside their baselines)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _run_bench(script: str, *args: str, timeout: int = 600, env: dict | None = None) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_tokenize_throughput_bench_prints_ours_beside_raw_tokenizers():
    out = _run_bench("tokenize_throughput.py", "--megabytes", "0.2", "--vocab", "300")
    assert "raw tokenizers encode_batch " in out and "raw tokenizers encode_batch_fast" in out
    assert "ours, course mode + shards" in out and "ours, packed mode + shards" in out


def test_corpus_kinds_bench_counts_each_kind_of_an_archive(tmp_path):
    from tests.unit.test_packages import PLOT, _sdist

    archive = tmp_path / "demo-1.0.tar.gz"
    library = b'def f():\n    """F.\n\n    >>> df = pd.DataFrame()\n    >>> df.plot()\n    """\n'
    archive.write_bytes(_sdist("demo-1.0", {"examples/a.py": PLOT.encode(), "demo/x.py": library}))
    rows = _run_bench("corpus_kinds.py", str(archive)).splitlines()
    assert "| demo-1.0.tar.gz | code | 1 | 0 | 1 | 1 |" in rows
    assert "| demo-1.0.tar.gz | docstrings | 1 | 0 | 2 | 1 |" in rows


def test_same_cases_bench_scores_published_models_and_an_untrained_one(
    prefect_server, corpus_dir, tmp_path
):
    from flows.pipeline import codeparrot_pipeline
    from tests.flows.test_pipeline import _config

    store = str(tmp_path / "store")
    config = _config(corpus_dir, "evaluate.humaneval=false")
    codeparrot_pipeline(preset="custom", config=config, store_url=store)
    out = _run_bench("same_cases.py", "codeparrot-ds", "--store", store, "--cases", "20")
    scores = json.loads(out[out.index("\n{\n") + 1 :])  # the JSON after the lines
    assert sorted(scores) == ["codeparrot-ds", "untrained"]
    assert scores["codeparrot-ds"]["cases"] == scores["untrained"]["cases"] > 0


def test_resume_costs_bench_runs_on_a_few_steps(prefect_server):
    from prefect.settings import PREFECT_API_URL

    # Its runs report to the session's Prefect server and run the group tasks in-process:
    # the bench's own figures include a temporary server and a Dask cluster per run.
    env = {"PREFECT_API_URL": PREFECT_API_URL.value(), "CODEPARROT_DASK_ADDRESS": "none"}
    out = _run_bench(
        "resume_costs.py",
        "--kill-after-step=8",
        "--stores=s3",
        *[
            f"--set={item}"
            for item in (
                "corpus.max_bytes=2000000",
                "model.n_layer=1",
                "filter.valid_fraction=0.2",
                "tokenizer.vocab_size=500",
                "train.max_steps=16",
                "train.checkpoint_interval=4",
                "train.eval_interval=8",
                "train.log_interval=2",
                "train.api_eval_cases=8",
                "evaluate.api_cases=8",
            )
        ],
        env=env,
    )
    figures = [line for line in out.splitlines() if "first_run_s" in line]
    assert [line.split()[0] for line in figures] == ["s3"]
    kill = json.loads(out[out.index("kill: ") + len("kill: ") :].splitlines()[0])
    assert kill["killed_at_step"] == 8 and kill["lost_steps"] == 8 - kill["resumed_from_step"]


def test_data_stages_bench_prints_workers_rerun_memory_and_projection(tmp_path, prefect_server):
    from prefect.settings import PREFECT_API_URL

    figures_path = tmp_path / "figures.json"
    # On the session's Prefect server: the bench's own figures include a temporary one.
    out = _run_bench(
        "data_stages.py",
        *("--megabytes", "30", "--repeats", "1", "--json", str(figures_path)),
        env={"PREFECT_API_URL": PREFECT_API_URL.value()},
    )
    figures = json.loads(figures_path.read_text())
    # Each phase's time is found under the stage's own task names.
    assert figures["mapped_one"] > 0 and figures["mapped_many"] > 0
    assert figures["tokenizer_seconds"] > 0 and figures["per_token_us"] > 0
    assert "in each of 1 pair(s) of runs" in out
    assert "1 worker (baseline)" in out and "2 workers" in out
    assert "rerun after +5% files" in out and "of the first run's" in out
    assert "peak memory per worker" in out and "4 machines x 16 cores" in out
    assert "to submit a group's task" in out


def test_gpu_check_runs_every_step_tiny_where_prefect_is_not_installed(tmp_path, data_store):
    """Its first step is the training bench (train_throughput.py), so this covers that too."""
    from tests.unit.test_prefect_boundary import BLOCK

    # Every process the check starts has Prefect, pydantic-settings and datasets missing.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--cpu-tiny", "--out", str(out)]
        + ["--data", data_store.url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"throughput", "compiled_vs_eager", "ds_model"}
    lines = results["throughput"]["lines"]
    assert [line.split(" loop")[0] for line in lines if " loop " in line] == ["course", "our"]
    assert all("peak process RSS" in line for line in lines if " loop " in line)
    assert any(line.startswith("checkpoints every 2 steps") for line in lines)
    assert results["compiled_vs_eager"]["steps"] == 6
    assert results["ds_model"]["api_cases"] > 0 and results["ds_model"]["perplexity"] > 1
    assert {f.name for f in out.iterdir()} >= {"throughput.log", "ds_model.log", "results.json"}
