"""What the UI shows of a run: the data report, metrics, samples and the loss curve."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET

import pytest

from flows import report
from storage.stages import StageRef

HISTORY = {
    "train": [{"step": s, "loss": 6.0 - s / 10} for s in (10, 20, 30)],
    "valid": [{"step": 30, "valid_loss": 3.5}],
}


def test_data_report_counts_every_kind_of_skipped_file_and_the_shards():
    text = report.data_report(
        {"files": 140},
        {
            "seen": 140,
            "skipped_too_large": 2,
            "skipped_non_utf8": 1,
            "no_keyword": 21,
            "duplicates": 3,
            "kept": 113,
        },
        {"train_tokens": 38_570, "train_shards": 1, "valid_shards": 1, "context_length": 64},
    )
    for line in [
        "| files seen by the filter | 140 |",
        "| skipped when reading: too large | 2 |",
        "| skipped when reading: non utf8 | 1 |",
        "| dropped: duplicates | 3 |",
        "| kept | 113 |",
        "| train tokens | 38,570 |",
        "| valid shards | 1 |",
    ]:
        assert line in text


def _ref(stage: str, counts: dict, **origin) -> StageRef:
    return StageRef(stage=stage, key="0" * 20, counts=counts, **origin)


def test_metrics_rows_carry_losses_perplexity_throughput_wall_time_and_origins():
    training = {"final_train_loss": 3.0, "tokens_per_second": 14205.7, "train_seconds": 119.85}
    evaluation = {"valid_loss": 3.43, "perplexity": 30.96, "untrained_perplexity": 4167.6}
    rows = report.metrics_rows(
        {"train": _ref("train", training), "evaluate": _ref("evaluate", evaluation)}, 251.3
    )
    values = {r["metric"]: r["value"] for r in rows}
    assert values["validation perplexity"] == "30.96"
    assert values["training tokens/s"] == "14,205.7"
    assert values["training wall time (s)"] == "119.8"
    assert values["pipeline wall time (s), this run"] == "251.3"
    assert values["training processes"] == "n/a"
    assert values["train stage"] == "built in this run"


def test_metrics_rows_say_which_run_built_a_reused_model():
    reused = _ref(
        "train",
        {"train_seconds": 38.2},
        reused=True,
        built_by="flow run cerise-bloodhound (1234)",
        built_at="2026-12-01T13:20:00+00:00",
    )
    values = {
        r["metric"]: r["value"]
        for r in report.metrics_rows({"train": reused, "evaluate": _ref("evaluate", {})}, 3.1)
    }
    assert values["train stage"] == (
        "reused from the store: built by flow run cerise-bloodhound (1234) at "
        "2026-12-01T13:20:00+00:00"
    )
    assert values["training wall time (s), in the run that built the model"] == "38.2"


def test_try_it_command_quotes_the_prompt_and_carries_the_store_settings():
    command = report.try_it_command(
        "s3://bucket/store/publish/m/v1",
        ".venv/bin/codeparrot-ds",
        {"CODEPARROT_S3_ENDPOINT_URL": "http://127.0.0.1:8333"},
    )
    assert command == (
        "CODEPARROT_S3_ENDPOINT_URL=http://127.0.0.1:8333 .venv/bin/codeparrot-ds generate "
        "'# create scatter plot with x, y' --model s3://bucket/store/publish/m/v1"
    )


def test_charts_are_markdown_with_the_image_embedded_and_their_figures():
    text = report.chart_markdown("Loss", report.loss_curve_svg(HISTORY), report.loss_table(HISTORY))
    assert "![Loss](data:image/svg+xml;base64," in text
    assert "| 30 | 3.000 | 3.500 |" in text


def test_samples_are_code_blocks():
    text = report.samples_markdown([{"prompt": "# plot\n", "completion": "plt.plot(x)"}])
    assert "```python\n# plot\nplt.plot(x)\n```" in text


def test_loss_curve_is_an_svg_with_a_line_per_series():
    svg = report.loss_curve_svg(HISTORY)
    root = ET.fromstring(svg)
    lines = root.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 2
    train_points = lines[0].get("points").split()
    assert len(train_points) == 3
    # Loss falls, so the curve goes down the chart: SVG y grows downwards.
    ys = [float(p.split(",")[1]) for p in train_points]
    assert ys == sorted(ys)
    url = report.svg_data_url(svg)
    assert base64.b64decode(url.split(",", 1)[1]).decode() == svg


def test_loss_curve_of_an_empty_history_says_so():
    with pytest.raises(ValueError, match="no point to plot"):
        report.loss_curve_svg({"train": [], "valid": []})


def test_api_curve_plots_accuracy_against_training_tokens():
    history = {
        "train": [],
        "valid": [
            {"step": 250, "tokens": 1_024_000, "valid_loss": 3.0, "api_accuracy": 0.0},
            {
                "step": 500,
                "tokens": 2_048_000,
                "valid_loss": 2.5,
                "api_accuracy": 0.125,
                "api_cases": 64,
            },
            # A validation without the probe (api_eval_cases=0) is not a point.
            {"step": 750, "tokens": 3_072_000, "valid_loss": 2.4},
        ],
    }
    assert report.api_curve_points(history) == [(1_024_000, 0.0), (2_048_000, 12.5)]
    svg = report.api_curve_svg(history)
    root = ET.fromstring(svg)
    (line,) = root.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(line.get("points").split()) == 2
    assert "64 held-out cases" in svg and "training tokens" in svg and "12.5%" in svg
    assert report.api_curve_points(HISTORY) == []


def test_data_report_counts_what_each_quality_filter_removed():
    text = report.data_report(
        {"files": 10, "skipped_not_regular": 1},
        {"seen": 9, "dropped_autogenerated": 3, "comment_lines_cut": 7, "kept": 6},
        {},
    )
    for line in (
        "| skipped when listing: not regular | 1 |",
        "| dropped: autogenerated | 3 |",
        "| comment lines cut | 7 |",
    ):
        assert line in text
