"""Markdown that shows untrusted text (prompts, model output, config values) as text only."""

from __future__ import annotations

import re
from typing import Any

# The marks that can start markup inside a line: HTML, entities, links, images, emphasis,
# code spans, strikethrough, table cells, escapes. Backslash-escaped (CommonMark) they show
# as themselves.
_MARKUP = re.compile(r"([\\`*_\[\]()<>&|~!#])")


def inline_text(value: Any) -> str:
    """One line of literal text: every mark that could start markup is backslash-escaped, so
    no HTML, link, emphasis or table pipe can come out of it."""
    return _MARKUP.sub(r"\\\1", " ".join(str(value).split()))


def code_block(text: str, language: str = "") -> str:
    """A fenced code block that ``text`` cannot close: the fence is longer than any run of
    backticks inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"


def table(rows: list[tuple[Any, Any]], header: tuple[str, str] = ("", "")) -> str:
    """A two-column table whose cells are literal text."""
    lines = [f"| {inline_text(header[0])} | {inline_text(header[1])} |", "|---|---|"]
    lines += [f"| {inline_text(k)} | {inline_text(v)} |" for k, v in rows]
    return "\n".join(lines)
