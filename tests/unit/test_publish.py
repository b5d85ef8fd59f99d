"""The model card shows prompts, completions and config text literally; generate's errors."""

from __future__ import annotations

import logging

import pytest
from markdown_it import MarkdownIt

from storage.stages import StageRef, StageSpec, run_stage
from tasks.publish.build import model_card

LOG = logging.getLogger("tests")
HOSTILE = "```\n<script>alert(1)</script>\n| a | b |\n[click](javascript:alert(1))\n````"


def _sources(store):
    counts = {"train_seconds": 1.0, "tokens_per_second": 2.0, "steps": 3, "tokens": 4}
    spec = StageSpec.of("train", {"note": HOSTILE}, {}, "t")
    training = run_stage(store, spec, lambda writer: {**counts, "mixed_precision": HOSTILE}, LOG)
    other = StageRef(stage="x", key="0" * 20, counts={"kept<b>": 5})
    return {"filter": other, "tokenize": other, "train": training}


def test_the_model_card_escapes_every_embedded_text(store):
    samples = [{"prompt": "# plot\n", "completion": HOSTILE}]
    card = model_card(store, "codeparrot-ds", _sources(store), {"perplexity": 2.0}, samples)
    text = str(card)
    assert card.data.library_name == "transformers"
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    kinds = {t.type for t in tokens}
    assert "html_block" not in kinds
    inline = [c for t in tokens if t.type == "inline" for c in t.children or []]
    assert not [c for c in inline if c.type in ("html_inline", "link_open")]
    fences = [t.content for t in tokens if t.type == "fence"]
    assert f"# plot\n{HOSTILE}\n" in fences  # the completion stays whole, inside its fence
    assert any(HOSTILE in fence for fence in fences)  # the config value, in the JSON fence
    html = MarkdownIt("commonmark").enable("table").render(text)
    assert "<script>" not in html and 'href="javascript' not in html


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("./no/such/folder", "does not exist"),
        ("{empty}", "holds no model (no config.json)"),
        ("codeparrot-store/publish/codeparrot-ds/0123", "does not exist"),  # not a Hub name
    ],
)
def test_generate_with_a_bad_model_folder_is_one_clear_line(tmp_path, capsys, model, message):
    from flows.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["generate", "x", "--model", model.format(empty=tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "published model" in err


def test_the_gate_compares_api_accuracy_always_and_perplexity_on_the_same_split():
    from tasks.publish.build import promotion_refusal

    current = {"api_accuracy": 0.35, "perplexity": 20.0, "tokenizer": "t/1", "validation": "v/1"}
    same = {"tokenizer": "t/1", "validation": "v/1"}
    assert (
        promotion_refusal({**same, "api_accuracy": 0.34, "perplexity": 20.1}, current, 0.02) is None
    )
    refused = promotion_refusal({**same, "api_accuracy": 0.31, "perplexity": 19.0}, current, 0.02)
    assert refused == (
        "not promoted: API accuracy 31.0% < 35.0% of the current model (tolerance 2.0 points)"
    )
    worse_ppl = promotion_refusal({**same, "api_accuracy": 0.35, "perplexity": 25.0}, current, 0.02)
    assert worse_ppl.startswith("not promoted: validation perplexity 25.00 > 20.00")
    other_split = {"tokenizer": "t/2", "validation": "v/2", "api_accuracy": 0.35, "perplexity": 99}
    assert promotion_refusal(other_split, current, 0.02) is None  # perplexities not comparable
    assert promotion_refusal({"api_accuracy": 0.0}, None, 0.02) is None  # nothing to beat


def _published(store, api_accuracy):
    """A current model as the pipeline leaves it: evaluation, publish record, LATEST."""
    from tasks.evaluate.build import METRICS_PART
    from tasks.publish.build import models_area, set_latest

    metrics = {"api_accuracy": api_accuracy, "perplexity": 30.0}

    def evaluate(writer):
        writer.write_json(METRICS_PART, metrics)
        return metrics

    inputs = {n: run_stage(store, StageSpec.of(n, {}, {}, "v"), lambda w: {}, LOG) for n in "ab"}
    tokenizer, tokens = inputs["a"], inputs["b"]
    evaluation = run_stage(store, StageSpec.of("evaluate", {}, {}, "v"), evaluate, LOG)
    sources = {"evaluate": evaluation, "tokenizer": tokenizer, "tokenize": tokens}
    counts = {**metrics, "tokenizer": tokenizer.prefix, "validation": tokens.prefix}
    spec = StageSpec.of(models_area("m"), {}, sources, "v")
    published = run_stage(store, spec, lambda w: counts, LOG)
    set_latest(store, "m", published.key)
    return evaluation, published


def test_the_gate_compares_against_the_checked_evaluation_not_an_edited_record(store):
    import json

    from storage.stages import MANIFEST_NAME
    from tasks.publish.build import current_model_counts

    _, published = _published(store, 0.25)
    manifest = store.read_json(f"{published.prefix}/{MANIFEST_NAME}")
    manifest["counts"]["api_accuracy"] = 0.99  # an edit that no checksum covers
    store.write_bytes(f"{published.prefix}/{MANIFEST_NAME}", json.dumps(manifest).encode())
    current = current_model_counts(store, "m", LOG)
    assert current["api_accuracy"] == 0.25 and current["perplexity"] == 30.0


def test_an_edited_evaluation_is_no_current_model_for_the_gate(store):
    from tasks.evaluate.build import METRICS_PART
    from tasks.publish.build import current_model_counts

    evaluation, _ = _published(store, 0.25)
    store.write_bytes(f"{evaluation.prefix}/{METRICS_PART}", b'{"api_accuracy": 0.99}')
    assert current_model_counts(store, "m", LOG) is None  # the new model replaces it
