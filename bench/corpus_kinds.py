"""What each kind of document adds to a packages corpus: per archive and kind, the documents
the converters make, their kB and their data-science call sites (the lines the API-accuracy
eval would test: ``plt.scatter(``, ``df.groupby(``, ``.fit(`` ...), before the filter.

The baseline is the ``code`` and ``notebooks`` rows: what the corpus read before the other
kinds existed. Archives are sdists on disk (for example a store's ``archives/`` folder, or
files fetched with the project's index client).

    python bench/corpus_kinds.py ARCHIVE... [--preset ds] [--tests-keep-fraction 0.1]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict
from pathlib import Path

from flows.presets import PRESETS
from tasks.completions import first_api_call
from tasks.corpus.build import CorpusConfig
from tasks.corpus.kinds import MEMBER_SUFFIXES, convert, member_kind
from tasks.corpus.package_index import archive_members
from tasks.corpus.read import decode_source
from tasks.filter.build import DEFAULT_KEYWORDS, contains_any_keyword

KINDS = ["code", "notebooks", "docstrings", "docs", "tests"]


def measure(data: bytes, config: CorpusConfig, keywords: list[str]) -> dict[str, Counter]:
    """Per kind: documents, bytes, call sites, and the documents with a filter keyword."""
    found: dict[str, Counter] = defaultdict(Counter)
    seen: set[bytes] = set()
    stats: Counter = Counter()
    for path, content in archive_members(data, MEMBER_SUFFIXES, config.max_file_bytes):
        inner = path.split("/", 1)[-1]
        kind = member_kind(inner, config)
        if kind is None or content is None:
            continue
        text, _ = decode_source(content)
        if text is None or (text := convert(kind, inner, text, config, seen, stats)) is None:
            continue
        row = found[kind]
        row["documents"] += 1
        row["bytes"] += len(text.encode("utf-8", "surrogatepass"))
        row["call sites"] += sum(first_api_call(line) is not None for line in text.splitlines())
        row["with a keyword"] += contains_any_keyword(text, keywords)
    return found


def main() -> None:
    """Print the table for the archives given."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archives", nargs="+", type=Path)
    parser.add_argument("--preset", default="ds", help="whose corpus and filter settings")
    parser.add_argument("--tests-keep-fraction", type=float, default=None)
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    settings = {**preset.get("corpus", {}), "source": "packages", "packages": ["bench"]}
    settings["kinds"] = KINDS
    if args.tests_keep_fraction is not None:
        settings["tests_keep_fraction"] = args.tests_keep_fraction
    config = CorpusConfig.model_validate(settings)
    keywords = preset.get("filter", {}).get("keywords") or DEFAULT_KEYWORDS
    print(f"tests_keep_fraction {config.tests_keep_fraction}; keywords {keywords}")
    print("| archive | kind | documents | kB | call sites | with a keyword |")
    print("|---|---|---:|---:|---:|---:|")
    totals: dict[str, Counter] = defaultdict(Counter)
    for archive in args.archives:
        started = time.perf_counter()
        found = measure(archive.read_bytes(), config, keywords)
        for kind in KINDS:
            if row := found.get(kind):
                totals[kind].update(row)
                print(
                    f"| {archive.name} | {kind} | {row['documents']:,} | {row['bytes'] // 1000:,}"
                    f" | {row['call sites']:,} | {row['with a keyword']:,} |"
                )
        print(f"<!-- {archive.name}: {time.perf_counter() - started:.1f} s -->")
    for kind in KINDS:
        row = totals[kind]
        print(
            f"| all | {kind} | {row['documents']:,} | {row['bytes'] // 1000:,}"
            f" | {row['call sites']:,} | {row['with a keyword']:,} |"
        )


if __name__ == "__main__":
    main()
