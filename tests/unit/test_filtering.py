"""The keyword filter, deduplication, the split, and the errors for useless corpora."""

from __future__ import annotations

import pytest

from storage.stages import StageWriter
from tasks.corpus import CorpusError, Document
from tasks.filtering import (
    FilterConfig,
    FilterError,
    contains_any_keyword,
    content_hash,
    filter_documents,
    is_validation,
)


def test_keyword_rule_is_any_substring():
    keywords = ["pandas", "sklearn", "matplotlib", "seaborn"]
    assert contains_any_keyword("import pandas as pd", keywords)
    assert contains_any_keyword("from sklearn.svm import SVC", keywords)
    assert contains_any_keyword("# uses matplotlib.pyplot", keywords)
    assert not contains_any_keyword("import numpy as np", keywords)
    assert not contains_any_keyword(
        "import Pandas", keywords
    )  # the course's rule is case-sensitive


def test_content_hash_ignores_whitespace_only():
    assert content_hash("a = 1\nb = 2") == content_hash("a  =  1\n\n\tb = 2   ")
    assert content_hash("a = 1") != content_hash("a = 2")


def test_split_is_deterministic_and_near_the_fraction():
    ids = [f"pkg/file_{i}.py" for i in range(20_000)]
    first = [is_validation(i, 0.1) for i in ids]
    assert first == [is_validation(i, 0.1) for i in ids]
    assert 0.09 < sum(first) / len(ids) < 0.11
    assert first != [is_validation(i, 0.1, seed=1) for i in ids]


def _run(store, docs, config):
    def counted(stats, skip):
        for doc in docs[skip:]:
            stats["seen"] += 1
            stats["read"] += 1
            yield doc

    return filter_documents(counted, config, StageWriter(store, "documents", "k"))


def test_filter_counts_keeps_and_deduplicates(store):
    docs = [Document(f"f{i}.py", f"import pandas as pd\nx = {i}\n") for i in range(40)]
    docs.append(Document("dup.py", "import pandas as pd\n  x = 0\n"))  # same as f0 modulo spaces
    docs.append(Document("plain.py", "import os\n"))
    counts = _run(store, docs, FilterConfig(valid_fraction=0.25))
    assert counts["read"] == 42
    assert counts["kept"] == 40
    assert counts["duplicates"] == 1
    assert counts["no_keyword"] == 1
    assert counts["train_documents"] + counts["valid_documents"] == 40
    assert counts["valid_documents"] > 0


def test_empty_corpus_is_a_clear_error(store):
    with pytest.raises(CorpusError, match="corpus is empty"):
        _run(store, [], FilterConfig())


def test_filter_that_keeps_nothing_is_a_clear_error(store):
    docs = [Document(f"f{i}.py", "import numpy\n") for i in range(10)]
    with pytest.raises(FilterError, match=r"kept nothing.*widen filter.keywords"):
        _run(store, docs, FilterConfig())


def test_empty_validation_split_is_a_clear_error(store):
    docs = [Document("only.py", "import pandas\n")]
    with pytest.raises(FilterError, match="split is empty"):
        _run(store, docs, FilterConfig(valid_fraction=0.01))


def test_empty_keyword_is_rejected():
    with pytest.raises(ValueError, match="empty keyword"):
        FilterConfig(keywords=["pandas", ""])
