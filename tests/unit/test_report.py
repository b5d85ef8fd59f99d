"""What the UI shows of a run: the data report, metrics, samples and the loss curve."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET

import pytest

from flows import report

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


def test_metrics_rows_carry_losses_perplexity_throughput_and_wall_time():
    rows = report.metrics_rows(
        {"final_train_loss": 3.0, "tokens_per_second": 14205.7, "train_seconds": 119.85},
        {"valid_loss": 3.43, "perplexity": 30.96, "untrained_perplexity": 4167.6},
        251.3,
    )
    values = {r["metric"]: r["value"] for r in rows}
    assert values["validation perplexity"] == "30.96"
    assert values["training tokens/s"] == "14,205.7"
    assert values["pipeline wall time (s)"] == "251.3"
    assert values["training processes"] == "n/a"


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
    with pytest.raises(ValueError, match="no logged step"):
        report.loss_curve_svg({"train": [], "valid": []})
