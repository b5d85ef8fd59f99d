"""What the Prefect UI shows of a run, built from stage counts: pure functions, no Prefect."""

from __future__ import annotations

import base64
import shlex
from collections.abc import Mapping
from html import escape
from typing import Any

from storage.stages import StageRef
from tasks.completions import percent
from tasks.evaluate.humaneval import describe as describe_humaneval
from tasks.publish.markdown import code_block, inline_text


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "n/a" if value is None else str(value)


def markdown_table(rows: list[tuple[str, Any]], header: tuple[str, str]) -> str:
    """A two-column Markdown table."""
    lines = [f"| {header[0]} | {header[1]} |", "|---|---:|"]
    lines += [f"| {inline_text(name)} | {inline_text(_number(value))} |" for name, value in rows]
    return "\n".join(lines)


KINDS = ("code", "notebooks", "docstrings", "docs", "tests")


def kinds_table(by_group: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: the files and kB the filter kept (before dedup) of each kind of document, per
    group (for a packages corpus, per package) and in all."""
    present = [k for k in KINDS if any(c.get(f"kept_{k}") for c in by_group.values())]
    header = " | ".join(f"{kind} files | {kind} kB" for kind in present)
    lines = [f"| group | {header} |", "|---|" + "---:|" * (2 * len(present))]
    total: dict[str, int] = {}
    for name, counts in [*by_group.items(), ("all", total)]:
        cells = []
        for kind in present:
            files, size = counts.get(f"kept_{kind}", 0), counts.get(f"bytes_kept_{kind}", 0)
            if counts is not total:
                total[f"kept_{kind}"] = total.get(f"kept_{kind}", 0) + files
                total[f"bytes_kept_{kind}"] = total.get(f"bytes_kept_{kind}", 0) + size
            cells += [_number(files), _number(round(size / 1000))]
        lines.append(f"| {inline_text(name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def data_report(
    corpus: dict,
    documents: dict,
    tokens: dict,
    groups: dict[str, int] | None = None,
    by_group: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """Markdown: what the corpus held, what the filter kept (by kind of document, per group
    when ``by_group`` holds the groups' filter counts), what tokenizing made of it, and how
    many of the corpus's groups this run filtered and tokenized (the rest were reused)."""

    def skipped(counts: dict, when: str) -> list[tuple[str, Any]]:
        return [
            (f"skipped {when}: " + name.removeprefix("skipped_").replace("_", " "), count)
            for name, count in sorted(counts.items())
            if name.startswith("skipped_")
        ]

    files = [
        *skipped(corpus, "when listing"),
        ("files in the corpus snapshot", corpus.get("files")),
        ("files seen by the filter", documents.get("seen")),
        *skipped(documents, "when reading"),
        *[
            ("dropped: " + name.removeprefix("dropped_").replace("_", " "), count)
            for name, count in sorted(documents.items())
            if name.startswith("dropped_")
        ],
        ("comment lines cut", documents.get("comment_lines_cut")),
        ("dropped: no data-science keyword", documents.get("no_keyword")),
        ("dropped: duplicates", documents.get("duplicates")),
        ("dropped: near duplicates (MinHash)", documents.get("near_duplicates")),
        ("kept", documents.get("kept")),
    ]
    splits = [
        (f"{split} {what}", tokens.get(f"{split}_{what}"))
        for split in ("train", "valid")
        for what in ("documents", "tokens", "rows", "shards")
    ]
    settings = [
        ("context length", tokens.get("context_length")),
        ("vocabulary size", tokens.get("vocab_size")),
    ]
    sections = [
        "# Data report",
        "## Files",
        markdown_table([r for r in files if r[1] is not None], ("", "count")),
        *(["## Kinds of document kept (before dedup)", kinds_table(by_group)] if by_group else []),
        "## Tokens and shards",
        markdown_table(splits + settings, ("", "count")),
    ]
    if groups:
        rows = [
            ("groups in the corpus", groups.get("groups")),
            ("groups filtered in this run", groups.get("filtered")),
            ("groups tokenized in this run", groups.get("tokenized")),
        ]
        sections += [
            "## Groups (the rest were reused from the store)",
            markdown_table(rows, ("", "count")),
        ]
    return "\n\n".join(sections)


def stage_origin(ref: StageRef) -> str:
    """Whether this run built a stage's output, or reused it and from which run."""
    if not ref.reused:
        return "built in this run"
    by = ref.built_by or "an earlier run"
    return f"reused from the store: built by {by} at {ref.built_at or 'an unknown time'}"


def metrics_rows(sources: Mapping[str, StageRef], wall_seconds: float) -> list[dict[str, str]]:
    """The run's headline figures, and where each stage's output came from, as table rows."""
    training, evaluation = sources["train"].counts, sources["evaluate"].counts
    wall_label = "training wall time (s)"
    if sources["train"].reused:
        wall_label += ", in the run that built the model"
    rows = [
        ("final train loss", training.get("final_train_loss")),
        ("validation loss", evaluation.get("valid_loss")),
        ("validation perplexity", evaluation.get("perplexity")),
        ("validation rows evaluated", evaluation.get("valid_rows_evaluated")),
        ("validation rows", evaluation.get("valid_rows")),
        ("untrained model's perplexity", evaluation.get("untrained_perplexity")),
        ("API accuracy@1 (held-out calls)", percent(evaluation.get("api_accuracy"))),
        ("API cases", evaluation.get("api_cases")),
        ("untrained model's API accuracy@1", percent(evaluation.get("untrained_api_accuracy"))),
        ("course prompts passed (of 4)", evaluation.get("course_prompts_passed")),
        (
            "HumanEval",
            describe_humaneval(evaluation["humaneval"])
            if evaluation.get("humaneval")
            else "not measured",
        ),
        ("training tokens/s", training.get("tokens_per_second")),
        ("training processes", training.get("processes")),
        ("optimizer steps", training.get("steps")),
        ("training tokens", training.get("tokens")),
        (wall_label, training.get("train_seconds")),
        ("pipeline wall time (s), this run", wall_seconds),
        *[(f"{name} stage", stage_origin(ref)) for name, ref in sources.items()],
    ]
    return [{"metric": name, "value": _number(value)} for name, value in rows]


def samples_markdown(samples: list[dict[str, str]]) -> str:
    """Each prompt with the model's completion, as Python code blocks."""
    blocks = [code_block(f"{s['prompt']}{s['completion']}", "python") for s in samples]
    return "# Sample generations\n\nGreedy completions of the fixed prompts.\n\n" + "\n\n".join(
        blocks
    )


def try_it_command(model_uri: str, program: str, environment: Mapping[str, str]) -> str:
    """A shell command that completes the course's prompt with the model: ``program`` with
    ``environment`` (the store's settings) in front."""
    settings = [f"{name}={shlex.quote(value)}" for name, value in environment.items()]
    prompt = shlex.quote("# create scatter plot with x, y")
    return " ".join([*settings, program, "generate", prompt, "--model", shlex.quote(model_uri)])


def model_markdown(model_uri: str, perplexity: float, command: str, note: str = "") -> str:
    """Where the published model is and how to use it."""
    return (
        f"Published model: `{model_uri}` (validation perplexity {perplexity:.2f}).\n\n"
        f"Try it, from the repository root:\n\n{code_block(command, 'bash')}"
        + (f"\n\n{note}" if note else "")
    )


def chart_markdown(title: str, svg: str, table: str) -> str:
    """A chart as Markdown: a heading, the SVG embedded as an image, and its figures."""
    return f"# {title}\n\n![{title}]({svg_data_url(svg)})\n\n{table}"


def loss_table(history: dict[str, list[dict]]) -> str:
    """Train and validation loss at each periodic validation (the chart's figures)."""
    train = {r["step"]: r["loss"] for r in history.get("train", [])}
    lines = ["| step | train loss | validation loss |", "|---:|---:|---:|"]
    for record in history.get("valid", []):
        step = record["step"]
        nearest = max((s for s in train if s <= step), default=None)
        loss = f"{train[nearest]:.3f}" if nearest is not None else "n/a"
        lines.append(f"| {step:,} | {loss} | {record['valid_loss']:.3f} |")
    return "\n".join(lines)


def api_table(history: dict[str, list[dict]]) -> str:
    """API accuracy@1 at each periodic validation (the chart's figures)."""
    lines = ["| training tokens | API accuracy@1 |", "|---:|---:|"]
    lines += [f"| {tokens:,} | {accuracy:.1f}% |" for tokens, accuracy in api_curve_points(history)]
    return "\n".join(lines)


# Geometry of the charts, in SVG user units.
WIDTH, HEIGHT, MARGIN = 640, 360, 56
COLOURS = ("#2563eb", "#dc2626", "#16a34a")


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    step = (high - low) / (count - 1) if high > low else 1.0
    return [low + i * step for i in range(count)]


def line_chart_svg(
    title: str, series: dict[str, list[tuple[float, float]]], x_label: str, y_format: str
) -> str:
    """An SVG line chart of named series of (x, y) points, x from 0; ``y_format`` formats
    the y-axis ticks (``{:.2f}``)."""
    points = [p for values in series.values() for p in values]
    if not points:
        raise ValueError(f"no point to plot in {title!r}")
    x_high = max(x for x, _ in points)
    y_low, y_high = min(y for _, y in points), max(y for _, y in points)
    if y_high == y_low:
        y_high = y_low + 1.0
    plot_w, plot_h = WIDTH - 2 * MARGIN, HEIGHT - 2 * MARGIN

    def px(value: float) -> float:
        return MARGIN + plot_w * value / max(x_high, 1)

    def py(value: float) -> float:
        return MARGIN + plot_h * (y_high - value) / (y_high - y_low)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="24" text-anchor="middle" font-size="15">{escape(title)}</text>',
    ]
    for value in _ticks(y_low, y_high):
        parts.append(
            f'<line x1="{MARGIN}" x2="{WIDTH - MARGIN}" y1="{py(value):.1f}" '
            f'y2="{py(value):.1f}" stroke="#e5e7eb"/>'
            f'<text x="{MARGIN - 6}" y="{py(value) + 4:.1f}" text-anchor="end">'
            f"{escape(y_format.format(value))}</text>"
        )
    for tick in sorted({round(value) for value in _ticks(0, x_high)}):
        parts.append(
            f'<text x="{px(tick):.1f}" y="{HEIGHT - MARGIN + 18}" text-anchor="middle">'
            f"{tick:,}</text>"
        )
    parts.append(
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 12}" text-anchor="middle">{escape(x_label)}</text>'
    )
    for index, (name, values) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        if values:
            coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in values)
            parts.append(
                f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
        legend_y = MARGIN + 16 * index
        parts.append(
            f'<line x1="{WIDTH - MARGIN - 150}" x2="{WIDTH - MARGIN - 130}" y1="{legend_y}" '
            f'y2="{legend_y}" stroke="{colour}" stroke-width="2"/>'
            f'<text x="{WIDTH - MARGIN - 124}" y="{legend_y + 4}">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def loss_curve_svg(history: dict[str, list[dict]]) -> str:
    """An SVG line chart of train and validation loss against the optimizer step."""
    series = {
        "train loss": [(r["step"], r["loss"]) for r in history.get("train", [])],
        "validation loss": [(r["step"], r["valid_loss"]) for r in history.get("valid", [])],
    }
    return line_chart_svg("Loss by step", series, "optimizer step", "{:.2f}")


def api_curve_points(history: dict[str, list[dict]]) -> list[tuple[int, float]]:
    """(training tokens, API accuracy@1 in %) at each periodic validation that measured it."""
    return [
        (r["tokens"], 100 * r["api_accuracy"])
        for r in history.get("valid", [])
        if r.get("api_accuracy") is not None and "tokens" in r
    ]


def api_curve_svg(history: dict[str, list[dict]]) -> str:
    """An SVG line chart of held-out API accuracy@1 against training tokens."""
    points = api_curve_points(history)
    cases = max((r.get("api_cases", 0) for r in history.get("valid", [])), default=0)
    return line_chart_svg(
        f"API accuracy@1 by training tokens ({cases} held-out cases)",
        {"API accuracy@1 (%)": points},
        "training tokens",
        "{:.1f}%",
    )


def svg_data_url(svg: str) -> str:
    """The SVG as a data URL: an image any browser shows without reaching the store."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()
