"""Test functions as usage code: ``# <test name in words>``, then the test's body without what
only checks (asserts, ``assert_*`` helpers, ``pytest.raises``/``warns`` blocks, skips).

A library's tests call its API the most, in every combination, and their names say in words
what the calls do: ``test_groupby_mean_with_nan`` is the comment -> code pattern the course's
prompts rely on. Fixtures and decorators are left out (only bodies are kept), and so are
issue-number comments (``# GH 12345``), which teach nothing. A share of the functions, chosen
by a hash of their identity, is kept, so tests cannot swamp the corpus.
"""

from __future__ import annotations

import ast
import hashlib
import re
import textwrap
import warnings
from collections.abc import Iterable

# Calls that only check or steer the test run; their statements are dropped.
CHECK_CALL = re.compile(r"(^|\.)(assert\w*|raises|warns|skip|xfail|importorskip|fail)$")
CHECK_CONTEXT = re.compile(r"(^|\.)(raises|warns|assert_produces_warning|deprecated_call)$")
ISSUE_COMMENT = re.compile(r"\s*#\s*(?:GH|gh|issue|Issue|see)?[\s#:-]*\d{3,}\S*\s*$")
TEST_PATH_PARTS = ("tests", "testing", "test")


def is_test_path(path: str) -> bool:
    """Whether an archive member is a test module: under a tests folder or named test_*.py."""
    parts = path.split("/")
    name = parts[-1]
    return name.endswith(".py") and (
        name.startswith("test_") or any(part in TEST_PATH_PARTS for part in parts[:-1])
    )


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Call):
        node = node.func
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _is_check(statement: ast.stmt) -> bool:
    if isinstance(statement, ast.Assert):
        return True
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call):
        return bool(CHECK_CALL.search(_dotted(statement.value)))
    if isinstance(statement, ast.With | ast.AsyncWith):
        return any(
            isinstance(item.context_expr, ast.Call)
            and CHECK_CONTEXT.search(_dotted(item.context_expr))
            for item in statement.items
        )
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
        return True  # a docstring or bare string
    return isinstance(statement, ast.Pass)


def _is_fixture(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any("fixture" in _dotted(decorator) for decorator in node.decorator_list)


def _test_functions(tree: ast.Module) -> Iterable[tuple[str, ast.FunctionDef]]:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield f"{node.name}.{item.name}", item
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node


class _DropChecks(ast.NodeTransformer):
    """Removes check statements at every depth; a block left empty gets ``pass``."""

    def generic_visit(self, node):
        super().generic_visit(node)
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                kept = [s for s in block if not _is_check(s)]
                setattr(node, field, kept or ([ast.Pass()] if field == "body" else []))
        return node


def _body(lines: list[str], function: ast.FunctionDef) -> str:
    """The function's body without checks, in its own lines where cutting the checks' lines
    leaves valid Python, else rewritten from the tree."""
    statements = [s for s in function.body if not _is_check(s)]
    if not statements:
        return ""
    first, last = statements[0].lineno, max(s.end_lineno or s.lineno for s in statements)
    dropped = set()
    for statement in statements:
        for node in ast.walk(statement):
            if isinstance(node, ast.stmt) and node is not statement and _is_check(node):
                dropped.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    # Lines of the span that belong to a check at the top level are cut too.
    for statement in function.body:
        if _is_check(statement) and first <= statement.lineno <= last:
            dropped.update(range(statement.lineno, (statement.end_lineno or statement.lineno) + 1))
    kept = [lines[n - 1] for n in range(first, last + 1) if n not in dropped]
    body = textwrap.dedent("".join(kept)).strip("\n")
    stripped = "\n".join(ISSUE_COMMENT.sub("", line) for line in body.splitlines())
    for candidate in (stripped, body):  # the comment pattern can end inside a string ("#1234")
        parsed = _parse(candidate)
        if parsed is not None and all(not _is_check(s) for s in parsed.body):
            return candidate
    module = ast.Module(body=statements, type_ignores=[])
    return ast.unparse(_DropChecks().visit(module))


def _parse(source: str) -> ast.Module | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(source)
    except (SyntaxError, ValueError):
        return None


def name_in_words(name: str) -> str:
    """A test's name as a comment: ``test_groupby_mean`` -> ``# groupby mean``."""
    words = name.removeprefix("test_").removeprefix("test").replace("_", " ").split()
    return "# " + " ".join(words)


def kept_share(identity: str) -> float:
    """Where a test function falls in [0, 1): the ones below the cap are kept."""
    digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def module_tests(source: str, identity: str, keep_fraction: float) -> tuple[str, int, int]:
    """The kept test functions of a test module as one Python document, how many test
    functions it had, and how many were kept. ``identity`` (the module's path) seeds which
    share is kept."""
    tree = _parse(source)
    if tree is None:
        return "", 0, 0
    parts, total = [], 0
    lines = source.splitlines(keepends=True)
    for qualified, function in _test_functions(tree):
        if not function.name.startswith("test") or _is_fixture(function):
            continue
        total += 1
        if kept_share(f"{identity}::{qualified}") >= keep_fraction:
            continue
        body = _body(lines, function)
        if body.strip() and body.strip() != "pass":
            parts.append(f"{name_in_words(function.name)}\n{body}")
    return ("\n\n".join(parts) + "\n" if parts else ""), total, len(parts)
