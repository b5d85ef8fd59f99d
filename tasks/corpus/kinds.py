"""Which kind of document an archive member is read as, and its conversion to Python.

One kind a member: a ``.py`` file that ``member_patterns`` picks is code as it is; one in a
tests folder is read for its test functions; any other ``.py`` or ``.pyx`` module is read for
its docstring examples; ``.rst``/``.md``/``.txt`` pages under ``doc/`` or ``docs/`` for their
Python blocks; ``.ipynb`` notebooks that the patterns pick become Python.
"""

from __future__ import annotations

import fnmatch
from collections import Counter

from tasks.corpus.build import CorpusConfig
from tasks.corpus.docpages import PAGE_SUFFIXES, is_user_page, page_examples
from tasks.corpus.docstrings import module_examples
from tasks.corpus.notebooks import NotebookError, notebook_to_python
from tasks.corpus.testbodies import is_test_path, module_tests

MEMBER_SUFFIXES = (".py", ".pyx", ".ipynb", *PAGE_SUFFIXES)
DOC_FOLDERS = ("doc", "docs")
# What a document of each kind that converts to nothing is counted as.
EMPTY = {
    "docstrings": "no_docstring_examples",
    "docs": "no_python_blocks",
    "tests": "no_kept_tests",
    "notebooks": "empty_notebook",
}


def member_kind(inner: str, config: CorpusConfig) -> str | None:
    """The kind an archive member (its path below the sdist's top folder) is read as, or None
    when it is not read."""
    kinds = config.kinds
    patterns = config.member_patterns
    picked = not patterns or any(fnmatch.fnmatch(inner, pattern) for pattern in patterns)
    if inner.endswith(".ipynb"):
        return "notebooks" if picked and "notebooks" in kinds else None
    if inner.endswith(".py") and picked and "code" in kinds:
        return "code"
    if inner.endswith(PAGE_SUFFIXES):
        in_docs = inner.split("/", 1)[0] in DOC_FOLDERS
        return "docs" if "docs" in kinds and in_docs and is_user_page(inner) else None
    if is_test_path(inner):
        return "tests" if "tests" in kinds else None
    if inner.endswith((".py", ".pyx")) and "docstrings" in kinds:
        return "docstrings"
    return None


def convert(
    kind: str, doc_id: str, text: str, config: CorpusConfig, seen: set[bytes], stats: Counter
) -> str | None:
    """The Python a document of this kind is read as; None (counted in ``stats`` under
    ``skipped_<reason>``) when nothing of it is kept. ``seen`` holds the digests of the blocks
    already taken from the same archive, so a docstring copied between modules is read once."""
    if kind == "code":
        return text
    if kind == "notebooks":
        try:
            converted = notebook_to_python(text)
        except NotebookError:
            stats["skipped_bad_notebook"] += 1
            return None
    elif kind == "docstrings":
        converted = module_examples(text, seen)
    elif kind == "docs":
        converted = page_examples(text, seen)
    else:
        converted, total, kept = module_tests(text, doc_id, config.tests_keep_fraction)
        stats["test_functions_seen"] += total
        stats["test_functions_kept"] += kept
    if not converted.strip():
        stats[f"skipped_{EMPTY[kind]}"] += 1
        return None
    stats[f"{kind}_read"] += 1
    return converted
