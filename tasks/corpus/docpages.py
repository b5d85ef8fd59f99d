"""Documentation pages as usage code: the Python blocks of ``.rst``, ``.md`` and ``.txt`` pages,
each after one ``#`` line from the paragraph or heading that introduces it.

Read: rst ``code-block``/``code``/``sourcecode`` directives in Python or IPython, ``ipython``
directives (``In []``/``Out[]`` prompts, ``@savefig``-style decorators and magics dropped),
``plot`` directives, doctest blocks, and Markdown fences in Python. Blocks in other languages,
and blocks that do not parse as Python, are left out.
"""

from __future__ import annotations

import fnmatch
import re
import textwrap
from collections.abc import Iterable

from tasks.corpus.docstrings import (
    PROMPT,
    UNDERLINE,
    comment_line,
    doctest_blocks,
    join_blocks,
    parses,
)

PAGE_SUFFIXES = (".rst", ".md", ".txt")
# Pages that hold no user code: generated API pages, release notes and developer docs.
EXCLUDED_PAGES = (
    "*/generated/*",
    "*/reference/api/*",
    "*/_autosummary/*",
    "*/modules/generated/*",
    "*release*",
    "*whatsnew*",
    "*whats_new*",
    "*changelog*",
    "*/changes/*",
    "*/news/*",
    "*/upcoming_changes/*",
    "*/api_changes/*",
    "*/prev_api_changes/*",
    "*/development/*",
    "*/devel/*",
    "*/dev/*",
    "*contributing*",
    "*/maintainers/*",
)
DIRECTIVE = re.compile(
    r"^(?P<indent>\s*)\.\.\s+(?P<name>code-block|code|sourcecode|ipython|plot)::\s*(?P<arg>\S*)"
)
PYTHON_LANGUAGES = {"", "python", "python3", "py", "ipython", "ipython3", "pycon", "default"}
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*\{?(?P<lang>[\w+-]*)")
IPYTHON_PROMPT = re.compile(r"^\s*In \[\d*\]:\s?")
IPYTHON_CONTINUATION = re.compile(r"^\s*\.\.\.+:\s?")
IPYTHON_OUTPUT = re.compile(r"^\s*Out\[\d*\]:")
# IPython directive pseudo-decorators: @savefig, @suppress, @verbatim, @doctest, @okexcept...
PSEUDO_DECORATOR = re.compile(r"^\s*@(savefig|suppress|verbatim|doctest|okexcept|okwarning)\b")


def is_user_page(path: str) -> bool:
    """Whether a documentation member is a page of user docs (not API, release or dev pages)."""
    lowered = "/" + path.lower()
    return lowered.endswith(PAGE_SUFFIXES) and not any(
        fnmatch.fnmatch(lowered, pattern) for pattern in EXCLUDED_PAGES
    )


def _ipython_code(lines: list[str]) -> str:
    """An ipython block's code: prompts stripped, outputs, decorators and magics dropped."""
    kept = []
    in_output = False
    for line in lines:
        if IPYTHON_OUTPUT.match(line):
            in_output = True
            continue
        if IPYTHON_PROMPT.match(line):
            in_output = False
            line = IPYTHON_PROMPT.sub("", line, count=1)
        elif IPYTHON_CONTINUATION.match(line):
            line = IPYTHON_CONTINUATION.sub("", line, count=1)
        elif in_output:
            continue
        if PSEUDO_DECORATOR.match(line) or line.lstrip().startswith(("%", "!")):
            continue
        kept.append(line)
    return "\n".join(kept)


def _block_code(lines: list[str], ipython: bool) -> str:
    body = textwrap.dedent("\n".join(lines)).strip("\n")
    if any(PROMPT.match(line) for line in body.splitlines()):
        return "\n".join(code for _, code in doctest_blocks(body))
    if ipython or any(IPYTHON_PROMPT.match(line) for line in body.splitlines()):
        body = textwrap.dedent(_ipython_code(body.splitlines())).strip("\n")
    return body


def _directive_body(lines: list[str], start: int, indent: int) -> tuple[list[str], int]:
    """The indented content of a directive at ``start`` (options skipped); and the next line."""
    body: list[str] = []
    index = start + 1
    options = True
    while index < len(lines):
        line = lines[index]
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        if options and re.match(r"^\s*:[\w-]+:", line):
            index += 1
            continue
        if line.strip():
            options = False
        body.append(line)
        index += 1
    return body, index


def page_blocks(text: str) -> Iterable[tuple[str | None, str]]:
    """(comment, code) for each Python block of an rst or Markdown page."""
    lines = text.splitlines()
    paragraph: list[str] = []
    closed = False
    index = 0
    while index < len(lines):
        line = lines[index]
        intro = comment_line(" ".join(paragraph)) if paragraph else None
        directive = DIRECTIVE.match(line)
        fence = FENCE.match(line)
        if directive:
            body, index = _directive_body(lines, index, len(directive["indent"]))
            name, language = directive["name"], directive["arg"].lower()
            if name in ("ipython", "plot") or language in PYTHON_LANGUAGES:
                code = _block_code(body, ipython=name == "ipython" or "ipython" in language)
                if code.strip() and parses(code):
                    yield intro, code
            paragraph = []
            continue
        if fence:
            end = index + 1
            while end < len(lines) and not lines[end].strip().startswith(fence["fence"]):
                end += 1
            if fence["lang"].lower() in PYTHON_LANGUAGES - {""}:
                code = _block_code(lines[index + 1 : end], ipython="ipython" in fence["lang"])
                if code.strip() and parses(code):
                    yield intro, code
            index, paragraph = end + 1, []
            continue
        if PROMPT.match(line):  # an rst doctest block: prose-free lines from >>> to a blank
            end = index
            while end < len(lines) and lines[end].strip():
                end += 1
            for _, code in doctest_blocks("\n".join(lines[index:end])):
                yield intro, code
            index, paragraph = end, []
            continue
        if not line.strip():
            closed = True
        elif UNDERLINE.match(line):
            pass  # a heading's underline: the heading line before it is the paragraph
        elif line.lstrip().startswith(("..", "|", "<", "![")):
            pass  # comments, other directives, tables and HTML introduce no code
        else:
            if closed:
                paragraph, closed = [], False
            paragraph.append(line.strip().lstrip("#").strip())
        index += 1


def page_examples(text: str, seen: set[bytes] | None = None) -> str:
    """The Python blocks of a documentation page as one Python document (empty if none)."""
    return join_blocks(page_blocks(text), seen)
