"""The completion eval: cases from held-out code, none from training documents; scoring."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tasks.completions import (
    COURSE_CASES,
    api_accuracy,
    build_cases,
    course_case_passes,
    first_api_call,
    first_code_line,
    greedy_completions,
    passes,
)
from tasks.filter.dedup import content_hash


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("plt.scatter(x, y)\n", ("plt.scatter(", "matplotlib")),
        ("    means = df.groupby('a').mean()\n", ("df.groupby(", "pandas")),
        ("X_tr, X_te = train_test_split(X, y)\n", ("train_test_split(", "scikit-learn")),
        ("model.fit(X, y)\n", (".fit(", "scikit-learn")),
        ("sns.histplot(data=df)\n", ("sns.histplot(", "seaborn")),
        ("a = np.zeros(3)  # plt.plot(a)\n", ("np.zeros(", "numpy")),
        ("x = 1  # plt.plot(x)\n", None),
        ("print('hello')\n", None),
    ],
)
def test_the_first_api_call_of_a_line(line, expected):
    assert first_api_call(line) == expected


HELD_OUT = (
    "import pandas as pd\nimport matplotlib.pyplot as plt\n\n"
    "df = pd.read_csv('a.csv')\n# plot it\nplt.plot(df.x)\n"
)
TRAINING = "import numpy as np\nx = 1\ny = 2\nz = np.ones(3)\n"


def test_cases_come_only_from_held_out_documents_never_from_training_ones():
    training_hashes = {content_hash(TRAINING)}
    documents = [("valid#0", HELD_OUT), ("valid#1", TRAINING + "\n")]  # a copy, whitespace apart
    cases, counts = build_cases(documents, training_hashes, content_hash, max_cases=10)
    assert counts == {"documents": 2, "overlap_documents": 1, "cases": 2}
    assert [(c.call, c.library) for c in sorted(cases, key=lambda c: len(c.prompt))] == [
        ("pd.read_csv(", "pandas"),
        ("plt.plot(", "matplotlib"),
    ]
    plot = max(cases, key=lambda c: len(c.prompt))
    assert plot.prompt == HELD_OUT[: HELD_OUT.index("plt.plot(df.x)")]  # the code before it
    assert all(not TRAINING.startswith(c.prompt) for c in cases)


def test_cases_are_capped_and_stable():
    documents = [(f"d{i}", HELD_OUT.replace("a.csv", f"{i}.csv")) for i in range(20)]
    first, _ = build_cases(documents, set(), content_hash, max_cases=7, per_document=1)
    again, _ = build_cases(reversed(documents), set(), content_hash, max_cases=7, per_document=1)
    assert len(first) == 7 and first == again
    assert len({c.source for c in first}) == 7


def test_scoring_reads_the_next_code_line_only():
    assert (
        first_code_line("\n# a comment\n    plt.scatter(x, y)\nplt.show()")
        == "    plt.scatter(x, y)"
    )
    assert passes("plt.scatter(", "plt.scatter(x, y)\n")
    assert not passes("plt.scatter(", "plt.plot(x)\nplt.scatter(x, y)")
    cases = sorted(build_cases([("d", HELD_OUT)], set(), content_hash, 10)[0], key=len_prompt)
    report = api_accuracy(cases, ["df = pd.read_csv('b.csv')\n", "\nx = 1\nplt.plot(x)"])
    assert (report["passed"], report["cases"], report["accuracy"]) == (1, 2, 0.5)
    assert report["by_library"] == {
        "matplotlib": {"accuracy": 0.0, "passed": 0, "cases": 1},
        "pandas": {"accuracy": 1.0, "passed": 1, "cases": 1},
    }


def len_prompt(case):
    return len(case.prompt)


def test_the_course_prompts_pass_on_the_course_answers():
    answers = [
        "plt.scatter(x, y, color='red', marker='x')\n",
        "df = pd.DataFrame({'x': x, 'y': y})\n",
        "profession_income = df.groupby(['profession']).mean()['income']\n",
        "rf = RandomForestRegressor(n_estimators=300, random_state=random_state, max_depth=3)\n"
        "rf.fit(X, y)\n",
    ]
    for case, answer in zip(COURSE_CASES, answers, strict=True):
        assert course_case_passes(case, answer), case["name"]
        assert not course_case_passes(case, "\n\n# nothing\nprint(1)\n"), case["name"]


def test_batched_greedy_completions_equal_one_at_a_time(tokenizer):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=16, n_layer=1, n_head=2)
    model = GPT2LMHeadModel(config)
    prompts = ["import pandas as pd\n", "x = 1\nplt.scatter(x, y)\nimport numpy as np\ny = 2\n"]
    together = greedy_completions(model, tokenizer, prompts, max_new_tokens=6, batch_size=2)
    alone = [greedy_completions(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert together == alone  # left padding changes nothing
    long = greedy_completions(model, tokenizer, ["x = 1\n" * 100], max_new_tokens=6)
    assert len(long) == 1  # a prompt longer than the context keeps only its tail
