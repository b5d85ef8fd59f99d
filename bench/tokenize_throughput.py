"""Tokenization throughput: our tokenize stage beside raw ``tokenizers`` batch encoding.

Both encode the same Python files (from this interpreter's site-packages) with the same
byte-level BPE tokenizer. The baseline is the library's ``encode_batch``, which also computes
character offsets (as a transformers call does); ours calls ``encode_batch_fast``, which does
not, and also chunks into rows and writes Arrow shards to a local store.

    python bench/tokenize_throughput.py [--megabytes 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter

from storage.shards import TokenShardWriter, token_dtype
from storage.stages import StageWriter
from storage.store import Store
from tasks.corpus.build import default_roots, list_python_files
from tasks.corpus.read import decode_source
from tasks.tokenize.build import Packer, TokenizeConfig, tokenize_batches
from tasks.tokenizer.build import token_id_bound, train_bpe_tokenizer


def read_texts(megabytes: float) -> list[str]:
    """Python files from site-packages, up to the given size."""
    listing, _ = list_python_files(default_roots())
    texts, total = [], 0
    for root, path in zip(listing["root"].to_pylist(), listing["path"].to_pylist(), strict=True):
        with open(f"{root}/{path}", "rb") as f:
            text, _ = decode_source(f.read())
        if text:
            texts.append(text)
            total += len(text)
        if total >= megabytes * 1e6:
            break
    return texts


def batches(texts: list[str], size: int):
    for i in range(0, len(texts), size):
        yield texts[i : i + size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=20.0)
    parser.add_argument("--vocab", type=int, default=8192)
    args = parser.parse_args()
    texts = read_texts(args.megabytes)
    megabytes = sum(len(t) for t in texts) / 1e6
    tokenizer = train_bpe_tokenizer(batches(texts[:2000], 500), args.vocab, 2)
    config = TokenizeConfig()

    # The raw library calls: with character offsets (what a transformers call computes) as
    # the baseline, and without (what the tokenize stage calls).
    results = {}
    backend = tokenizer.backend_tokenizer
    for name in ("encode_batch", "encode_batch_fast"):
        start = time.perf_counter()
        tokens = sum(
            len(e.ids)
            for b in batches(texts, config.batch_size)
            for e in getattr(backend, name)(b, add_special_tokens=False)
        )
        results[f"raw tokenizers {name}"] = (time.perf_counter() - start, tokens)
    dtype = token_dtype(token_id_bound(tokenizer))
    for mode in ("course", "packed"):
        with tempfile.TemporaryDirectory() as folder:
            writer = StageWriter(Store(folder), "tokenize", "0" * 20)
            shards = TokenShardWriter(writer, "train", 128, dtype, config.rows_per_shard)
            packer = Packer(128, tokenizer.eos_token_id)
            counts: Counter = Counter()
            start = time.perf_counter()
            tokenize_batches(
                batches(texts, config.batch_size), tokenizer, mode, packer, shards, counts
            )
            shards.flush()
            results[f"ours, {mode} mode + shards"] = (time.perf_counter() - start, counts["tokens"])

    print(f"{len(texts)} files, {megabytes:.1f} MB of Python, vocab {len(tokenizer)}")
    baseline = results["raw tokenizers encode_batch"][0]
    for name, (seconds, tokens) in results.items():
        print(
            f"  {name:<34} {megabytes / seconds:7.2f} MB/s {tokens / seconds:>12,.0f} tokens/s"
            f"   {baseline / seconds:5.2f}x"
        )


if __name__ == "__main__":
    main()
