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
