"""Docstring examples as usage code: each ``>>>`` block of a module's docstrings becomes plain
Python, after one ``#`` line taken from the prose that introduces it.

Library docstrings (numpydoc ``Examples`` sections) hold most of the public usage of pandas
and numpy, in the comment -> code pattern the course's prompts rely on, but behind doctest
prompts and among printed outputs. This keeps the calls and drops the rest: prompts, output
lines, ``# doctest:`` directives and bare display lines (``>>> df``), which only print.
"""

from __future__ import annotations

import ast
import hashlib
import re
import textwrap
import warnings
from collections.abc import Iterable

COMMENT_WIDTH = 100
PROMPT = re.compile(r"^\s*>>>(?: |$)")
CONTINUATION = re.compile(r"^\s*\.\.\.(?: |$)")
DIRECTIVE = re.compile(r"\s*#\s*doctest:.*$")
# A numpydoc section header's underline, or an rst heading's.
UNDERLINE = re.compile(r"^\s*([=\-~^\"'`#*+])\1{2,}\s*$")
# rst roles (:func:`pandas.read_csv`), literals (``x``), emphasis (*x*) and links (`x <url>`_).
ROLE = re.compile(r":[\w:.+-]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
LITERAL = re.compile(r"``([^`]*)``|`([^`<]*?)(?:\s*<[^>]*>)?`_{0,2}")
EMPHASIS = re.compile(r"\*{1,2}([^*\s][^*]*)\*{1,2}")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`*])")


def strip_markup(text: str) -> str:
    """Prose without rst markup: roles, literals, emphasis and link targets become their text."""
    text = ROLE.sub(lambda m: m.group(1).strip(), text)
    text = LITERAL.sub(lambda m: m.group(1) if m.group(1) is not None else m.group(2), text)
    return EMPHASIS.sub(r"\1", text)


def comment_line(paragraph: str) -> str | None:
    """One ``#`` line from the prose before a code block: its last sentence, without markup
    and the colon that leads into the code; None when there is no prose."""
    sentences = SENTENCE_END.split(" ".join(strip_markup(paragraph).split()))
    # The last sentence leads into the code, unless it is only "For example:".
    text = next((s for s in reversed(sentences) if len(s.split()) >= 3), sentences[-1])
    text = text.rstrip(":").strip()
    if not any(c.isalpha() for c in text):
        return None
    return "# " + text[:COMMENT_WIDTH].rstrip()


def is_display_only(code: str) -> bool:
    """Whether the code is one bare name or attribute (``df``, ``df.dtypes``): in a doctest it
    only prints a value, in a program it does nothing."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    return (
        len(tree.body) == 1
        and isinstance(tree.body[0], ast.Expr)
        and isinstance(tree.body[0].value, ast.Name | ast.Attribute | ast.Constant)
    )


def parses(code: str) -> bool:
    """Whether the text is valid Python (a block of pseudo code or a diagram is not)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old examples
            ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def doctest_code(lines: list[str]) -> str:
    """The statements of doctest lines (``>>>``/``...`` prompts), without prompts, outputs,
    directives and bare display lines. Lines that carry no prompt are outputs."""
    statements: list[list[str]] = []
    for line in lines:
        if PROMPT.match(line):
            statements.append([PROMPT.sub("", line, count=1)])
        elif CONTINUATION.match(line) and statements:
            statements[-1].append(CONTINUATION.sub("", line, count=1))
    kept = []
    for statement in statements:
        code = DIRECTIVE.sub("", "\n".join(statement)).rstrip()
        if code.strip() and not is_display_only(code):
            kept.append(code)
    return "\n".join(kept)


def doctest_blocks(text: str, fallback: str | None = None) -> Iterable[tuple[str | None, str]]:
    """(comment, code) for each run of doctest lines in a text, the comment from the paragraph
    before it (else from ``fallback``, such as the docstring's summary line)."""
    paragraph: list[str] = []  # the last paragraph of prose, kept across the blank line after it
    closed = False  # whether a blank line ended that paragraph
    block: list[str] = []
    intro: str | None = None

    def finish():
        code = doctest_code(block)
        if code and parses(code):
            yield intro if intro is not None else comment_line(fallback or ""), code

    lines = text.splitlines()
    for number, line in enumerate(lines):
        if PROMPT.match(line) or (block and CONTINUATION.match(line)):
            if not block:
                intro = comment_line(" ".join(paragraph)) if paragraph else None
            block.append(line)
        elif block and line.strip():
            block.append(line)  # an output line: dropped by doctest_code
        elif block:
            yield from finish()
            block, paragraph = [], []
        elif not line.strip():
            closed = True
        elif UNDERLINE.match(line) or (
            number + 1 < len(lines) and UNDERLINE.match(lines[number + 1])
        ):
            paragraph = []  # a section header ("Examples") introduces no one block
        else:
            if closed:
                paragraph, closed = [], False
            paragraph.append(line.strip())
    if block:
        yield from finish()


def _docstrings(tree: ast.Module) -> Iterable[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=True)
            if docstring and ">>>" in docstring:
                yield docstring


def join_blocks(blocks: Iterable[tuple[str | None, str]], seen: set[bytes] | None = None) -> str:
    """Blocks as one document: each block's comment line, then its code, blank lines between.
    A block whose code is in ``seen`` (shared across one archive's modules) is left out."""
    seen = set() if seen is None else seen
    parts = []
    for comment, code in blocks:
        digest = hashlib.sha256(code.encode("utf-8", "surrogatepass")).digest()
        if digest in seen:
            continue
        seen.add(digest)
        parts.append(f"{comment}\n{code}" if comment else code)
    return "\n\n".join(parts) + "\n" if parts else ""


def module_examples(source: str, seen: set[bytes] | None = None) -> str:
    """The docstring examples of a Python (or Cython) module as one Python document; empty when
    it has none or does not parse. Cython modules are read with their docstrings only."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return join_blocks(_cython_docstring_blocks(source), seen)
    blocks = []
    for docstring in _docstrings(tree):
        summary = docstring.strip().splitlines()[0]
        blocks.extend(doctest_blocks(docstring, fallback=summary))
    return join_blocks(blocks, seen)


# A triple-quoted string in a module Python cannot parse (Cython's .pyx): its docstrings.
TRIPLE_QUOTED = re.compile(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'', re.DOTALL)


def _cython_docstring_blocks(source: str) -> Iterable[tuple[str | None, str]]:
    for match in TRIPLE_QUOTED.finditer(source):
        body = match.group(1) if match.group(1) is not None else match.group(2)
        if ">>>" in body:
            docstring = textwrap.dedent(body).strip()
            yield from doctest_blocks(docstring, fallback=docstring.splitlines()[0])
