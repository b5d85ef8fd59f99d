"""The keyword filter, deduplication, the split, and the errors for useless corpora."""

from __future__ import annotations

import logging
import random

import pytest

from storage.shards import iter_document_batches
from storage.stages import StageSpec, StageWriter, run_stage
from tasks.corpus.build import CorpusError, Document
from tasks.filter.build import (
    FilterConfig,
    FilterError,
    contains_any_keyword,
    content_hash,
    filter_documents,
    is_validation,
)
from tasks.filter.join import deduplicate


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


def _filter_group(store, docs, config, name="g"):
    def counted(stats, skip):
        for doc in docs[skip:]:
            stats["seen"] += 1
            stats["read"] += 1
            yield doc

    spec = StageSpec.of("documents", {"group": name, **config.model_dump()}, {}, "t")
    return run_stage(store, spec, lambda w: filter_documents(counted, config, w), LOG)


def _dedup(store, groups, config):
    spec = StageSpec.of(
        "filter", {"groups": [g.key for g in groups], **config.model_dump()}, {}, "t"
    )
    return run_stage(store, spec, lambda w: deduplicate(store, groups, config, w), LOG)


def _run(store, docs, config, groups=1):
    """Filter the documents cut into ``groups`` groups, then dedup across them: the counts."""
    size = -(-len(docs) // groups) or 1
    refs = [
        _filter_group(store, docs[i : i + size], config, f"g{i}")
        for i in range(0, max(len(docs), 1), size)
    ]
    return _dedup(store, refs, config).counts


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


def test_duplicates_are_found_across_groups_and_the_result_does_not_depend_on_the_cut(tmp_path):
    from storage.store import Store

    rng = random.Random(0)
    vocabulary = [f"name_{i}" for i in range(400)]
    originals = [
        Document(f"pkg/f{i:02d}.py", "import pandas as pd\n" + " ".join(rng.sample(vocabulary, 60)))
        for i in range(30)
    ]
    # In other groups: an exact copy (but for whitespace) and a near copy (2 of 61 words
    # changed) of f00, and a near copy of f01.
    planted = [
        Document("zz/copy.py", originals[0].content.replace(" ", "  ")),
        Document("zz/near0.py", originals[0].content.replace("name_", "nom_", 2)),
        Document("zz/near1.py", originals[1].content + " extra_word"),
    ]
    config = FilterConfig(valid_fraction=0.25)
    texts = None
    for groups in (1, 3, 7):
        store = Store(str(tmp_path / f"store-{groups}"))
        counts = _run(store, originals + planted, config, groups)
        assert counts["duplicates"] == 1 and counts["near_duplicates"] == 2
        assert counts["kept"] == 30 and counts["groups"] == groups
        union = _dedup_ref(store)
        kept = [
            t
            for split in ("train", "valid")
            for b in iter_document_batches(store, union, split)
            for t in b
        ]
        assert sorted(kept) == sorted(d.content for d in originals)  # smaller ids are kept
        texts = texts or kept
        assert kept == texts  # the same documents in the same order, however cut


def _dedup_ref(store):
    from storage.stages import committed_ref, load_manifest

    (key,) = [p.name for p in store.local_file("filter").iterdir()]
    return committed_ref(load_manifest(store, "filter", key))


def test_near_duplicate_removal_can_be_turned_off(store):
    words = " ".join(f"w{j}" for j in range(40))
    near = [Document(f"n{i}.py", f"import pandas as pd\n{words} v{i}") for i in range(8)]
    unique = [
        Document(f"u{i}.py", "import pandas as pd\n" + " ".join(f"u{i}_{j}" for j in range(40)))
        for i in range(12)
    ]
    counts = _run(store, near + unique, FilterConfig(valid_fraction=0.25))
    assert counts["near_duplicates"] == 7 and counts["kept"] == 13
    off = FilterConfig(valid_fraction=0.25, near_duplicate_threshold=None)
    counts = _run(store, near + unique, off)
    assert counts["near_duplicates"] == 0 and counts["kept"] == 20


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


LOG = logging.getLogger("tests")


def _filter(store, documents, copies=20, **settings):
    """Filter ``copies`` of each (id, content), each copy under its own folder."""
    from tasks.corpus.build import Document
    from tasks.filter.build import FilterConfig, filter_documents

    docs = [Document(f"{n}/{i}", c) for n in range(copies) for i, c in documents]

    def open_documents(stats, skip):
        for doc in docs[skip:]:
            stats["seen"] += 1
            stats["read"] += 1
            yield doc

    config = FilterConfig(valid_fraction=0.5, keywords=["pd"], deduplicate=False, **settings)
    return filter_documents(open_documents, config, StageWriter(store, "filter", "0" * 20))


QUALITY_DOCS = [
    ("ok.py", "import pandas as pd\ndf = pd.read_csv('a.csv')\n"),
    ("gen.py", "# This file is auto-generated. Do not edit.\nimport pandas as pd\n"),
    ("wide.py", "import pandas as pd\nx = '" + "a" * 2000 + "'\n"),
    ("blob.py", "import pandas as pd\n" + ("= ; ! ? . , " * 20 + "\n") * 20),
    ("tests/test_io.py", "import pandas as pd\ndef test_it():\n    assert pd\n"),
    ("other.py", "import pandas as pd\ns = pd.Series([1])\n"),
]


def test_quality_filters_are_off_by_default(store):
    counts = _filter(store, QUALITY_DOCS)
    assert counts["kept"] == 20 * len(QUALITY_DOCS)
    assert not [k for k in counts if k.startswith("dropped_")]


def test_each_quality_filter_drops_and_counts_its_files(store):
    counts = _filter(
        store,
        QUALITY_DOCS,
        drop_autogenerated=True,
        max_line_length=1000,
        min_alphanumeric_fraction=0.25,
        config_or_test_keep_fraction=0.0,
    )
    assert counts["dropped_autogenerated"] == 20
    assert counts["dropped_long_lines"] == 20
    assert counts["dropped_alphanumeric"] == 20
    assert counts["dropped_config_or_test"] == 20
    assert counts["kept"] == 40


def test_gallery_prose_is_capped_and_the_code_kept(store):
    from tasks.filter.build import cap_comment_runs, line_lengths

    text = "# %%\n# A long\n# narrative\n# here\nimport pandas as pd\n# one\nx = 1\n"
    capped, cut = cap_comment_runs(text, 2)
    assert capped == "# %%\n# A long\nimport pandas as pd\n# one\nx = 1\n" and cut == 2
    counts = _filter(store, [("gallery.py", text)], max_comment_run=2)
    assert counts["comment_lines_cut"] == 40 and counts["kept"] == 20
    assert line_lengths("ab\nabcd\n") == (3.0, 4)
