"""What a model completes, not its perplexity: API accuracy on held-out code, and the course's
four prompts.

API accuracy: at lines of held-out (validation) documents that call a data-science API
(``plt.scatter(``, ``df.groupby(``, ``train_test_split(``, ``.fit(`` ...), the prompt is the
code before that line; the model's greedy next code line passes when it calls the same
function. No case comes from a document whose content is also in the training split.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from storage.shards import iter_document_batches
from storage.stages import StageRef
from storage.store import Store
from tasks.filter.dedup import content_hash

# Tokens generated per completion case: enough for one line of code.
API_MAX_NEW_TOKENS = 24

# A call of a data-science API: the receiver (module alias or a conventional variable name)
# and the function, or a bare scikit-learn helper. The library is named by the receiver.
_RECEIVER_LIBRARY = {
    "plt": "matplotlib",
    "ax": "matplotlib",
    "fig": "matplotlib",
    "pd": "pandas",
    "df": "pandas",
    "sns": "seaborn",
    "np": "numpy",
}
_METHOD_CALL = re.compile(r"\b(plt|ax|fig|pd|df|sns|np)\.([A-Za-z_]\w*)\(")
_SKLEARN_CALL = re.compile(
    r"(?:\b(train_test_split|cross_val_score|GridSearchCV|make_pipeline)"
    r"|\.(fit|predict|predict_proba|fit_transform|transform|score))\("
)


@dataclass(frozen=True)
class Case:
    """One completion case: the code before a line, and the call that line makes."""

    prompt: str
    call: str
    library: str
    source: str


def first_api_call(line: str) -> tuple[str, str] | None:
    """The first data-science call in a line of code, as (call, library); None if none.

    ``call`` is what a completion must contain: ``plt.scatter(``, ``.fit(``,
    ``train_test_split(``.
    """
    code = line.split("#", 1)[0]
    found = []
    if match := _METHOD_CALL.search(code):
        receiver, name = match.groups()
        found.append((match.start(), f"{receiver}.{name}(", _RECEIVER_LIBRARY[receiver]))
    if match := _SKLEARN_CALL.search(code):
        name = match.group(1) or match.group(2)
        call = f"{name}(" if match.group(1) else f".{name}("
        found.append((match.start(), call, "scikit-learn"))
    if not found:
        return None
    _, call, library = min(found)
    return call, library


def percent(value: float | None) -> str:
    """An accuracy as a percentage, ``n/a`` when there was nothing to measure."""
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _order(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def build_cases(
    documents: Iterable[tuple[str, str]],
    training_hashes: set[bytes],
    content_hash,
    max_cases: int,
    per_document: int = 3,
    min_prompt_lines: int = 3,
) -> tuple[list[Case], dict[str, int]]:
    """Completion cases from held-out documents ``(id, content)``; and what was counted.

    A document whose ``content_hash`` is among ``training_hashes`` gives no case (counted as
    ``overlap_documents``). Cases are taken in an order hashed from their text, at most
    ``per_document`` per document, ``max_cases`` in all, so the set is stable and spread.
    """
    candidates: list[tuple[str, Case]] = []
    counts = Counter(documents=0, overlap_documents=0)
    for doc_id, content in documents:
        counts["documents"] += 1
        if content_hash(content) in training_hashes:
            counts["overlap_documents"] += 1
            continue
        lines = content.splitlines(keepends=True)
        found = []
        for index, line in enumerate(lines):
            if index < min_prompt_lines or line.lstrip().startswith("#"):
                continue
            api = first_api_call(line)
            if api is not None:
                prompt = "".join(lines[:index])
                found.append((_order(prompt + line), Case(prompt, api[0], api[1], doc_id)))
        found.sort(key=lambda item: item[0])
        candidates += found[:per_document]
    candidates.sort(key=lambda item: item[0])
    cases = [case for _, case in candidates[:max_cases]]
    counts["cases"] = len(cases)
    return cases, dict(counts)


def completion_cases(
    store: Store, documents: StageRef, max_cases: int
) -> tuple[list[Case], dict[str, int]]:
    """API-accuracy cases from the filter stage's validation documents, none from a document
    whose content is also in its training split; and what was counted."""
    training_hashes = {
        content_hash(text)
        for batch in iter_document_batches(store, documents, "train")
        for text in batch
    }
    held_out = (
        (f"valid#{i}", text)
        for i, text in enumerate(
            text for batch in iter_document_batches(store, documents, "valid") for text in batch
        )
    )
    return build_cases(held_out, training_hashes, content_hash, max_cases)


def first_code_line(text: str) -> str:
    """The first line of a completion that holds code (not blank, not only a comment)."""
    for line in text.splitlines():
        if line.strip() and not line.strip().startswith("#"):
            return line
    return ""


def passes(case_call: str, completion: str) -> bool:
    """Whether the completion's next code line calls the case's function."""
    return case_call in first_code_line(completion)


@torch.no_grad()
def greedy_completions(
    model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 16
) -> list[str]:
    """Greedy completions of many prompts, batched with left padding.

    Each prompt keeps only its last tokens that leave ``max_new_tokens`` of room in the
    model's context (GPT-2 has learned positions only up to it).
    """
    context = model.config.n_positions
    keep = context - max_new_tokens
    if keep < 1:
        raise ValueError(f"max_new_tokens {max_new_tokens} leaves no room in a {context} context")
    device = next(model.parameters()).device
    pad = tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    outputs: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            encoded = [
                tokenizer(p, add_special_tokens=False)["input_ids"][-keep:] or [pad]
                for p in prompts[start : start + batch_size]
            ]
            width = max(len(ids) for ids in encoded)
            input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded])
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded])
            generated = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
            outputs += tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return outputs


def api_accuracy(cases: list[Case], completions: list[str]) -> dict:
    """accuracy@1 overall and per library, with the counts behind each figure."""
    by_library: dict[str, list[int]] = {}
    for case, completion in zip(cases, completions, strict=True):
        tally = by_library.setdefault(case.library, [0, 0])
        tally[0] += passes(case.call, completion)
        tally[1] += 1
    passed = sum(t[0] for t in by_library.values())
    return {
        "accuracy": passed / len(cases) if cases else None,
        "passed": passed,
        "cases": len(cases),
        "by_library": {
            name: {"accuracy": p / n, "passed": p, "cases": n}
            for name, (p, n) in sorted(by_library.items())
        },
    }


def measure_api_accuracy(model, tokenizer, cases: list[Case], max_new_tokens: int) -> dict:
    """The model's greedy completions of the cases, scored by ``api_accuracy``."""
    completions = greedy_completions(model, tokenizer, [c.prompt for c in cases], max_new_tokens)
    return api_accuracy(cases, completions)


def api_probe(tokenizer, cases: list[Case], max_new_tokens: int):
    """A function of a model giving its API accuracy on ``cases``: what the training loop
    measures at each periodic validation, for the curve against training tokens."""

    def probe(model) -> dict:
        measured = measure_api_accuracy(model, tokenizer, cases, max_new_tokens)
        return {
            "api_accuracy": measured["accuracy"],
            "api_passed": measured["passed"],
            "api_cases": measured["cases"],
        }

    return probe


# The course's prompts, in the course's context, and what a right completion must hold.
COURSE_CASES = [
    {
        "name": "scatter plot from x, y",
        "prompt": "import numpy as np\nimport matplotlib.pyplot as plt\n\n"
        "x = np.random.randn(100)\ny = np.random.randn(100)\n\n"
        "# create scatter plot with x, y\n",
        "must_contain": [".scatter("],
    },
    {
        "name": "DataFrame from x and y",
        "prompt": "import numpy as np\nimport pandas as pd\n\n"
        "x = np.random.randn(100)\ny = np.random.randn(100)\n\n"
        "# create dataframe from x and y\n",
        "must_contain": ["DataFrame("],
    },
    {
        "name": "mean income per profession",
        "prompt": "import pandas as pd\n\n"
        "# dataframe with profession, income and name\n"
        "df = pd.DataFrame({'profession': x, 'income':y, 'name': z})\n\n"
        "# calculate the mean income per profession\n",
        "must_contain": [".groupby(", "mean"],
    },
    {
        "name": "random forest with 300 estimators",
        "prompt": "# import random forest regressor from scikit-learn\n"
        "from sklearn.ensemble import RandomForestRegressor\n\n"
        "# fit random forest model with 300 estimators on X, y:\n",
        "must_contain": ["RandomForestRegressor(", "300"],
    },
]


def course_case_passes(case: dict, completion: str) -> bool:
    """Whether a completion of a course prompt holds what the course's answer holds, in its
    first two code lines (``rf = RandomForestRegressor(300)`` then ``rf.fit(X, y)``)."""
    code = [
        line
        for line in completion.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    head = "\n".join(code[:2])
    return all(piece in head for piece in case["must_contain"])
