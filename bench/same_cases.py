"""Published models of one store measured on the same API-accuracy cases, beside an untrained
model: for an ablation, where each model's own evaluation would use its own held-out code.

The cases come from the first model's held-out documents (its filter output's validation
split), leaving out any document that is in the training split of any model compared, and are
scored as the evaluate stage scores them (accuracy@1 per library, the course's four prompts).
Each model completes them with its own tokenizer: the cases are text.

    python bench/same_cases.py MODEL_NAME [MODEL_NAME ...] [--store STORE] [--cases 200]
"""

from __future__ import annotations

import argparse
import json
import time

from transformers import AutoTokenizer, GPT2LMHeadModel

from storage.shards import iter_document_batches
from storage.stages import StageRef, input_ref
from storage.store import Store, default_store_url
from tasks.completions import Case, build_cases, percent
from tasks.evaluate.build import EvalConfig, measure_completions
from tasks.filter.dedup import content_hash
from tasks.publish.build import latest_model, published_folder
from tasks.train.model import build_model


def shared_cases(store: Store, filters: list[StageRef], max_cases: int) -> tuple[list[Case], dict]:
    """Cases from the first filter output's held-out documents, none in any training split."""
    training = {
        content_hash(text)
        for documents in filters
        for batch in iter_document_batches(store, documents, "train")
        for text in batch
    }
    held_out = (
        (f"valid#{i}", text)
        for i, text in enumerate(
            t for batch in iter_document_batches(store, filters[0], "valid") for t in batch
        )
    )
    return build_cases(held_out, training, content_hash, max_cases)


def describe(result: dict) -> str:
    """``12.5% (matplotlib 13 of 88, ...); course prompts 0 of 4``."""
    api = result["api"]
    libraries = ", ".join(
        f"{name} {v['passed']} of {v['cases']}" for name, v in api["by_library"].items()
    )
    passed = sum(c["passed"] for c in result["course_prompts"])
    return (
        f"{percent(api['accuracy'])} of {api['cases']} ({libraries}); course prompts "
        f"{passed} of {len(result['course_prompts'])}"
    )


def main() -> None:
    """Print each model's API accuracy on the shared cases, then the untrained model's."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="published model names in the store")
    parser.add_argument("--store", default=default_store_url())
    parser.add_argument("--cases", type=int, default=200)
    args = parser.parse_args()
    store = Store(args.store)
    published = {name: latest_model(store, name) for name in args.models}
    filters = [input_ref(store, ref, "filter") for ref in published.values()]
    cases, counts = shared_cases(store, filters, args.cases)
    print(f"cases: {counts} (from {store.uri(filters[0].prefix)})")
    config = EvalConfig()
    results = {}
    for name, ref in published.items():
        folder = str(published_folder(store, ref))
        model, tokenizer = (
            GPT2LMHeadModel.from_pretrained(folder),
            AutoTokenizer.from_pretrained(folder),
        )
        started = time.perf_counter()
        results[name] = measure_completions(model, tokenizer, cases, config)
        seconds = time.perf_counter() - started
        print(f"{name} ({store.uri(ref.prefix)}, {seconds:.0f} s): {describe(results[name])}")
    first = next(iter(published))
    folder = str(published_folder(store, published[first]))
    untrained = build_model(GPT2LMHeadModel.from_pretrained(folder).config, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    results["untrained"] = measure_completions(untrained, tokenizer, cases, config)
    print(f"untrained ({first}'s shape and tokenizer): {describe(results['untrained'])}")
    print(json.dumps({k: v["api"] for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
