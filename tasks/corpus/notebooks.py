"""Jupyter notebooks as Python: code cells stay code, markdown becomes short comments.

The comment -> code pattern is what the course's prompts rely on (``# create scatter plot with
x, y`` then ``plt.scatter(x, y)``), so each markdown cell becomes a few ``#`` lines placed
before the code it explains. Magics, shell escapes and outputs are dropped.
"""

from __future__ import annotations

import warnings

# A markdown cell keeps at most this many lines of this many characters: a heading or a
# sentence explains the next cell; paragraphs of narrative teach the model prose, not code.
COMMENT_LINES = 2
COMMENT_WIDTH = 100


class NotebookError(ValueError):
    """The bytes are not a notebook nbformat can read."""


def _comment(markdown: str) -> list[str]:
    lines = []
    for raw in markdown.splitlines():
        text = raw.strip().lstrip("#").strip()
        if not text or text.startswith(("<", "![", "```", "---", "|")):
            continue  # HTML, images, fences, rules and tables explain no code
        lines.append("# " + text[:COMMENT_WIDTH])
        if len(lines) == COMMENT_LINES:
            break
    return lines


def _code(source: str) -> list[str]:
    # IPython magics (%, %%) and shell escapes (!) are not Python.
    if source.lstrip().startswith("%%"):
        return []
    return [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]


def notebook_to_python(text: str) -> str:
    """The Python of a notebook: its code cells in order, each markdown cell as comments."""
    # Imported here: a machine that reads no notebook (a GPU worker) needs no nbformat.
    import nbformat

    try:
        with warnings.catch_warnings():
            # Notebooks in the wild lack cell ids and such: nbformat warns, we only read them.
            warnings.simplefilter("ignore")
            notebook = nbformat.reads(text, as_version=4)
    except Exception as err:  # noqa: BLE001 - nbformat raises many types for bad input
        raise NotebookError(f"not a readable notebook ({type(err).__name__})") from None
    blocks: list[str] = []
    pending: list[str] = []
    for cell in notebook.cells:
        source = cell.get("source", "")
        if not isinstance(source, str):
            continue
        if cell.get("cell_type") == "markdown":
            pending = _comment(source)
        elif cell.get("cell_type") == "code":
            code = _code(source)
            if any(line.strip() for line in code):
                blocks.append("\n".join(pending + code).strip("\n"))
            pending = []
    return "\n\n".join(blocks) + "\n" if blocks else ""
