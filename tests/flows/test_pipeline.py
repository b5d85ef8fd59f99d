"""The whole pipeline under a real (temporary) Prefect server, on a generated corpus."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil

import pytest
from transformers import pipeline

from flows.cli import main
from flows.config import build_config
from flows.pipeline import codeparrot_pipeline
from storage.stages import MANIFEST_NAME
from storage.store import Store
from tasks.publish.build import latest_model, published_folder
from tasks.registry import STAGES

pytestmark = pytest.mark.slow
STAGE_NAMES = [stage.name for stage in STAGES]

TINY = [
    "corpus.group_files=40",
    "filter.valid_fraction=0.2",
    "tokenizer.vocab_size=400",
    "tokenize.mode=packed",
    "tokenize.context_length=64",
    "model.n_layer=1",
    "model.n_embd=32",
    "model.n_head=2",
    "train.batch_size=8",
    "train.gradient_accumulation_steps=2",
    "train.max_steps=30",
    "train.warmup_steps=3",
    "train.learning_rate=0.01",
    "train.eval_interval=15",
    "train.log_interval=5",
    "evaluate.max_new_tokens=8",
    "evaluate.humaneval=true",
    "evaluate.humaneval_problems=2",
    "evaluate.humaneval_max_new_tokens=16",
]


def _config(corpus_dir, *extra):
    return build_config(overrides=[f"corpus.roots=[{corpus_dir}]", *TINY, *extra])


def _manifest_times(store: Store, stages: dict[str, str]) -> dict[str, str]:
    times = {}
    for name, uri in stages.items():
        rel = uri[len(store.url) + 1 :]
        times[name] = store.read_json(f"{rel}/{MANIFEST_NAME}")["created_at"]
    return times


@pytest.fixture(params=["file", "s3"])
def any_store(request, tmp_path) -> Store:
    """The pipeline's store: a local folder, then a bucket on a real S3 server."""
    if request.param == "s3":
        return request.getfixturevalue("s3_store")
    return Store(str(tmp_path / "store"))


def test_pipeline_end_to_end_then_cached(
    prefect_server, corpus_dir, any_store, caplog, monkeypatch
):
    store = any_store
    if store.is_local:  # the default: the group tasks on a local Dask cluster
        monkeypatch.delenv("CODEPARROT_DASK_ADDRESS")
    with caplog.at_level(logging.INFO):
        result = codeparrot_pipeline(
            preset="custom", config=_config(corpus_dir), store_url=store.url
        )

    assert result["perplexity"] < result["untrained_perplexity"] / 4
    assert isinstance(result["scatter_completion"], str)
    # The completion eval ran on held-out code, none of it from a training document.
    assert [c["name"] for c in result["course_prompts"]][0] == "scatter plot from x, y"
    assert result["api_cases"] > 0 and 0 <= result["api_accuracy"] <= 1
    assert result["valid_rows_evaluated"] == result["valid_rows"]  # the whole split
    # HumanEval ran its first two problems in the sandbox; a tiny model passes neither.
    assert result["humaneval"]["problems"] == 2 and result["humaneval"]["passed"] == 0
    # The periodic validations measured API accuracy: the curve against training tokens.
    training_rel = result["stages"]["train"][len(store.url) + 1 :]
    history = json.loads(store.read_bytes(f"{training_rel}/history.json"))
    assert [(r["step"], r["tokens"]) for r in history["valid"]] == [
        (15, 15 * 16 * 64),
        (30, 30 * 16 * 64),
    ]
    assert all(0 <= r["api_accuracy"] <= 1 and r["api_cases"] > 0 for r in history["valid"])
    folder = published_folder(store, latest_model(store, "codeparrot-ds"))
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
        assert (folder / name).is_file(), name
    card = (folder / "README.md").read_text()
    assert "perplexity" in card and "# create scatter plot with x, y" in card
    assert "API accuracy@1" in card and "mean income per profession" in card
    assert "HumanEval (sandboxed): pass@1 0.0%" in card and "0 of 2 problems" in card
    latest = store.read_json("publish/codeparrot-ds/LATEST")
    assert store.uri(latest["path"]) == result["model_uri"]

    generator = pipeline("text-generation", model=str(folder))
    output = generator("import pandas as pd\n", max_new_tokens=5)[0]["generated_text"]
    assert output.startswith("import pandas as pd\n") and len(output) > len("import pandas as pd\n")

    # No credential reaches the logs or any object in the store.
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if store.url.startswith("s3://"):
        assert secret and secret not in caplog.text
        for rel in store.list_files(""):
            assert secret.encode() not in store.read_bytes(rel), rel

    # The same config again: every stage finds its committed manifest; nothing is rebuilt.
    before = _manifest_times(store, result["stages"])
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = codeparrot_pipeline(
            preset="custom", config=_config(corpus_dir), store_url=store.url
        )
    assert again["reused"] == dict.fromkeys(STAGE_NAMES, True)
    assert result["reused"] == dict.fromkeys(STAGE_NAMES, False)
    assert again["stages"] == result["stages"]
    assert _manifest_times(store, again["stages"]) == before

    # Only a training parameter changes: every data stage is reused.
    changed = codeparrot_pipeline(
        preset="custom",
        config=_config(corpus_dir, "train.learning_rate=0.005", "publish.force=true"),
        store_url=store.url,
    )
    for stage in ("corpus", "filter", "tokenizer", "tokenize"):
        assert changed["stages"][stage] == result["stages"][stage]
    assert changed["stages"]["train"] != result["stages"]["train"]


class _Planted:
    """A pickle that runs a command when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_copied_store_with_planted_pickles_reruns_from_its_own_manifests(
    prefect_server, corpus_dir, tmp_path, caplog
):
    original = Store(str(tmp_path / "original"))
    first = codeparrot_pipeline(preset="custom", config=_config(corpus_dir), store_url=original.url)
    # Moved to another place, the original deleted: references are relative to the store.
    shutil.copytree(original.local_file(""), tmp_path / "copy")
    shutil.rmtree(original.local_file(""))
    copy = Store(str(tmp_path / "copy"))
    # Whoever can write to a shared store plants pickles where Prefect kept its result
    # records, and beside every object: nothing reads them.
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Planted(marker))
    for rel in copy.list_files(""):
        if rel.endswith(MANIFEST_NAME):
            folder = rel.removesuffix(MANIFEST_NAME)
            copy.write_bytes(f"{folder}_prefect_result", payload)
            copy.write_bytes(f"{folder}_result.pickle", payload)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = codeparrot_pipeline(preset="custom", config=_config(corpus_dir), store_url=copy.url)
    assert not marker.exists()
    assert again["reused"] == dict.fromkeys(STAGE_NAMES, True)
    assert {k: v.removeprefix(copy.url) for k, v in again["stages"].items()} == {
        k: v.removeprefix(original.url) for k, v in first["stages"].items()
    }
    assert main(["generate", "import pandas as pd", "--store", copy.url]) == 0


def test_cli_reports_an_empty_corpus_clearly(prefect_server, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["run", "--set", f"corpus.roots=[{empty}]", "--store", str(tmp_path / "s")])
    assert code == 2
    assert "corpus is empty" in capsys.readouterr().err
    assert not list((tmp_path / "s").glob("*/*/" + MANIFEST_NAME))


def test_cli_reports_an_invalid_config_value(tmp_path, capsys):
    assert main(["run", "--set", "train.batch_size=0", "--store", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "train.batch_size" in err and "greater than or equal to 1" in err


def test_cli_print_config(capsys):
    assert main(["run", "--preset", "smoke", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["n_layer"] == 4


def test_io_errors_are_retried_and_user_errors_are_not(prefect_server):
    from prefect import flow, task

    from tasks.running import retry_on_io_error

    calls = {"io": 0, "value": 0}

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_on_io_error)
    def flaky_io():
        calls["io"] += 1
        if calls["io"] == 1:
            raise OSError("connection reset")
        return "ok"

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_on_io_error)
    def bad_value():
        calls["value"] += 1
        raise ValueError("invalid setting")

    @flow
    def both():
        result = flaky_io()
        with pytest.raises(ValueError):
            bad_value()
        return result

    assert both() == "ok"
    assert calls == {"io": 2, "value": 1}


@pytest.mark.parametrize(
    ("deployment", "message"),
    [
        ("codeparrot-ds-train/missing", "there is no deployment"),
        ("gpu", "must look like flow-name/deployment-name"),
    ],
)
def test_training_on_an_unknown_deployment_says_what_to_do(
    prefect_server, tokens_ref, tokenizer_ref, store, deployment, message
):
    from tasks.train.task import TrainingRunError, train_model_on_deployment

    config = _config("unused")
    with pytest.raises(TrainingRunError, match=message):
        train_model_on_deployment.fn(
            tokens_ref, tokenizer_ref, config.model, config.train, store.url, deployment
        )


def test_the_quality_gate_refuses_a_worse_model_unless_forced(
    prefect_server, corpus_dir, tmp_path, capsys
):
    import hashlib

    from tasks.evaluate.build import METRICS_PART
    from tasks.publish.build import ModelNotPromotedError

    store = Store(str(tmp_path / "store"))
    first = codeparrot_pipeline(preset="custom", config=_config(corpus_dir), store_url=store.url)
    latest = store.read_json("publish/codeparrot-ds/LATEST")
    # Make the current model much better than any tiny model can be: its evaluation
    # re-committed at 100% (metrics part and manifest agreeing), as the gate checks them.
    manifest_rel = f"{latest['path']}/{MANIFEST_NAME}"
    manifest = store.read_json(manifest_rel)
    manifest["counts"]["api_accuracy"] = 1.0
    store.write_json(manifest_rel, manifest)
    evaluation = manifest["inputs"]["evaluate"]
    metrics = json.loads(store.read_bytes(f"{evaluation}/{METRICS_PART}"))
    data = json.dumps({**metrics, "api_accuracy": 1.0}).encode()
    store.write_bytes(f"{evaluation}/{METRICS_PART}", data)
    evaluation_manifest = store.read_json(f"{evaluation}/{MANIFEST_NAME}")
    evaluation_manifest["parts"][METRICS_PART] = {
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    store.write_json(f"{evaluation}/{MANIFEST_NAME}", evaluation_manifest)

    worse = [f"corpus.roots=[{corpus_dir}]", *TINY, "train.seed=7"]
    args = ["run", "--store", store.url] + [a for item in worse for a in ("--set", item)]
    assert main(args) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("codeparrot-ds: error: not promoted: API accuracy") and "100.0%" in last
    assert store.read_json("publish/codeparrot-ds/LATEST")["version"] == latest["version"]
    with pytest.raises(ModelNotPromotedError, match="publish.force=true"):
        codeparrot_pipeline(
            preset="custom", config=build_config(overrides=worse), store_url=store.url
        )

    forced = codeparrot_pipeline(
        preset="custom",
        config=build_config(overrides=[*worse, "publish.force=true"]),
        store_url=store.url,
    )
    assert forced["model_uri"] != first["model_uri"]
    assert store.uri(store.read_json("publish/codeparrot-ds/LATEST")["path"]) == forced["model_uri"]
