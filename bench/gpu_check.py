"""One prepared GPU check for a lent machine: throughput and MFU beside the course's loop, the
checkpoint share, compiled against eager losses, and the 124M model trained on our data.

It needs only what the training code needs (torch, transformers, accelerate, tokenizers,
pyarrow, numpy, fsspec, pyyaml, pydantic): no Prefect, pydantic-settings or datasets. Each step
runs in its own process with its log under ``--out``; a step that fails is reported and the
others still run. The table comes last.

    python bench/gpu_check.py --out DIR [--data STORE] [--minutes N]   # on the GPU machine
    python bench/gpu_check.py --out DIR --cpu-tiny [--data STORE]      # the same steps, tiny
    python bench/gpu_check.py --pack STORE --out DIR                   # here: the data to carry

``--data`` is a store holding a committed tokenize output (the newest is used) with its
tokenizer and filter outputs: ``--pack`` copies exactly those from a store that ran the
``ds`` preset's data stages. Without ``--data`` the last step is skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere, without an install

# bf16 stores 8 bits of mantissa: two runs of the same steps agree to about 2^-8 per step,
# and the difference grows over steps; a per-step loss difference past this is a bug.
BF16_LOSS_TOLERANCE = 0.05
STEPS = ("throughput", "compiled_vs_eager", "ds_model")


def _log() -> logging.Logger:
    log = logging.getLogger("gpu_check")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    return log


def throughput(args) -> dict:
    """The training bench on the course's 124M model (tiny: the smoke model): both loops,
    MFU, peak memory, the chosen micro-batch, warm-up (compile) time and checkpoint share."""
    if args.cpu_tiny:
        bench = ["--preset", "smoke", "--steps", "4", "--warmup", "1", "--vocab", "512"]
        bench += ["--checkpoint-every", "2"]
    else:
        bench = ["--preset", "course", "--steps", "40", "--warmup", "10", "--vocab", "50000"]
        bench += ["--checkpoint-every", "10", "--set", "train.mixed_precision=bf16"]
    command = [sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--repeats", "1"]
    done = subprocess.run([*command, *bench], capture_output=True, text=True, cwd=ROOT)
    print(done.stdout, done.stderr, sep="\n")
    if done.returncode != 0:
        raise RuntimeError(f"train_throughput.py exited {done.returncode}")
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return {"lines": [line for line in lines if line.startswith(("course", "our", "check"))]}


def _random_rows(train, vocab: int, context: int, steps: int):
    import numpy as np

    rows = np.random.default_rng(0).integers(
        0, vocab, (train.rows_per_step() * (steps + 1), context)
    )
    return rows.astype(np.uint16)


def step_losses(model_config, train, rows, vocab: int, compiled: bool) -> list[float]:
    """Each optimizer step's loss of our loop on ``rows``, compiled or eager."""
    from tasks.train.data import TokenRows
    from tasks.train.hooks import TrainHook
    from tasks.train.loop import make_accelerator, train_model_loop
    from tasks.train.model import build_model, gpt2_config

    losses: list[float] = []

    class Losses(TrainHook):
        def on_step(self, loop, output) -> None:
            losses.append(float(output.loss.detach().float().cpu()))

    config = train.model_copy(update={"compile": compiled})
    model = build_model(gpt2_config(model_config, vocab, rows.shape[1], 0), seed=0)
    token_rows = TokenRows([rows])
    train_model_loop(
        model,
        token_rows,
        token_rows,
        [11, 22],
        config,
        make_accelerator(config),
        _log(),
        hooks=[Losses()],
    )
    return losses


def compiled_vs_eager(args) -> dict:
    """The same steps from the same start, compiled and eager: the per-step loss difference."""
    from flows.config import build_config

    steps = 6 if args.cpu_tiny else 200
    preset, vocab = ("smoke", 512) if args.cpu_tiny else ("course", 50_000)
    config = build_config(
        preset, overrides=["train.mixed_precision=bf16"] if not args.cpu_tiny else []
    )
    train = config.train.model_copy(
        update={
            "max_steps": steps,
            "eval_interval": steps,
            "eval_batches": 1,
            "log_interval": steps,
            "api_eval_cases": 0,
            "epochs": 1000.0,
            "warmup_steps": min(config.train.warmup_steps, steps // 2),
        }
    )
    rows = _random_rows(train, vocab, config.tokenize.context_length, steps)
    eager = step_losses(config.model, train, rows, vocab, compiled=False)
    compiled = step_losses(config.model, train, rows, vocab, compiled=True)
    differences = [abs(a - b) / max(abs(a), 1e-8) for a, b in zip(eager, compiled, strict=True)]
    worst = max(differences)
    print(json.dumps({"eager": eager, "compiled": compiled}))
    return {
        "steps": steps,
        "max_relative_difference": worst,
        "final_losses": [eager[-1], compiled[-1]],
        "within_tolerance": worst <= BF16_LOSS_TOLERANCE,
    }


def newest_tokens(store):
    """The newest committed tokenize output of a store (a join, else one group's), with its
    tokenizer and filter outputs."""
    from storage.stages import MANIFEST_NAME, committed_ref, input_ref, load_manifest

    for folder in ("tokenize", "tokenize/groups"):
        found = [
            load_manifest(store, folder, rel.split("/")[0])
            for rel in store.list_files(folder)
            if rel.count("/") == 1 and rel.endswith(MANIFEST_NAME)
        ]
        if found:
            tokens = committed_ref(max(found, key=lambda m: m.created_at), reused=True)
            return tokens, input_ref(store, tokens, "tokenizer"), input_ref(store, tokens, "filter")
    raise FileNotFoundError(f"{store.url} holds no committed tokenize output")


def ds_model(args) -> dict:
    """The 124M model (tiny: the smoke model) trained for ``--minutes`` on the carried data,
    then its perplexity, API accuracy@1 and the course's prompts (the evaluate stage's code)."""
    from flows.config import build_config
    from storage.stages import run_stage
    from storage.store import Store
    from tasks.evaluate.build import EvalConfig, evaluate_model, evaluate_spec
    from tasks.train.build import train_from_shards, train_spec

    store = Store(args.data)
    tokens, tokenizer, documents = newest_tokens(store)
    rows_per_second = None
    if args.cpu_tiny:
        config = build_config("smoke")
        steps = 3
    else:
        config = build_config("course", overrides=["train.mixed_precision=bf16"])
        # The course loop's measured rate is not known here: take our loop's 124M rate as the
        # bench printed it, else a conservative 200k tokens/s.
        rows_per_second = args.tokens_per_second / config.tokenize.context_length
        steps = max(1, int(args.minutes * 60 * rows_per_second / config.train.rows_per_step()))
    train = config.train.model_copy(
        update={
            "max_steps": steps,
            "warmup_steps": min(config.train.warmup_steps, max(1, steps // 10)),
            "eval_interval": max(1, steps // 4),
            "api_eval_cases": 64 if not args.cpu_tiny else 4,
            "checkpoint_interval": steps,
        }
    )
    log = _log()
    spec = train_spec(tokens, tokenizer, config.model, train)
    build = partial(train_from_shards, store, tokens, tokenizer, config.model, train, log=log)
    started = time.perf_counter()
    training = run_stage(store, spec, lambda writer: build(writer=writer), log)
    train_seconds = time.perf_counter() - started
    evaluation_config = EvalConfig(api_cases=200)
    if args.cpu_tiny:  # the tiny test data's context holds 32 tokens
        evaluation_config = EvalConfig(
            api_cases=8, prompts=["import numpy as np\n"], max_new_tokens=4, api_max_new_tokens=4
        )
    spec = evaluate_spec(training, tokens, tokenizer, documents, evaluation_config)
    evaluated = run_stage(
        store,
        spec,
        partial(
            evaluate_model,
            store,
            training,
            tokens,
            tokenizer,
            documents,
            evaluation_config,
            log=log,
        ),
        log,
    )
    counts = evaluated.counts
    return {
        "steps": steps,
        "tokens": training.counts.get("tokens"),
        "train_seconds": round(train_seconds, 1),
        "perplexity": counts["perplexity"],
        "valid_rows": f"{counts['valid_rows_evaluated']} of {counts['valid_rows']}",
        "api_accuracy": counts["api_accuracy"],
        "api_cases": counts["api_cases"],
        "course_prompts_passed": counts["course_prompts_passed"],
    }


def pack(source: str, out: Path) -> None:
    """Copy the newest tokenize output of ``source``, with its groups, tokenizer and filter
    outputs (and their groups), into the store ``out``: what ``--data`` needs, nothing else."""
    from storage.shards import union_members
    from storage.store import Store

    store = Store(source)
    tokens, tokenizer, documents = newest_tokens(store)
    prefixes = [tokens.prefix, tokenizer.prefix, documents.prefix]
    for ref in (tokens, documents):
        prefixes += [member.ref.prefix for member in union_members(store, ref)]
    for prefix in prefixes:
        shutil.copytree(Path(store.local_file(prefix)), out / prefix, dirs_exist_ok=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"packed {len(prefixes)} outputs, {size / 2**20:.1f} MiB, into {out}")


def run_step(name: str, args) -> dict:
    """One step in a child process, its output in ``--out/{name}.log``; its result or error."""
    command = [sys.executable, __file__, "--step", name, "--out", str(args.out)]
    command += ["--minutes", str(args.minutes), "--tokens-per-second", str(args.tokens_per_second)]
    command += ["--cpu-tiny"] if args.cpu_tiny else []
    command += ["--data", args.data] if args.data else []
    started = time.perf_counter()
    log_path = args.out / f"{name}.log"
    with open(log_path, "w") as log_file:
        done = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT)
    seconds = time.perf_counter() - started
    result_path = args.out / f"{name}.json"
    if done.returncode != 0 or not result_path.is_file():
        tail = log_path.read_text().strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exited {done.returncode}: {tail[0][:200]}", "seconds": seconds}
    return {**json.loads(result_path.read_text()), "seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the logs")
    parser.add_argument("--cpu-tiny", action="store_true", help="the same steps, tiny, on CPU")
    parser.add_argument("--data", help="a store with a committed tokenize output")
    parser.add_argument("--minutes", type=float, default=2.0, help="training time of the last step")
    parser.add_argument(
        "--tokens-per-second",
        type=float,
        default=200_000.0,
        help="our loop's 124M rate, to size the last step's training (the first step prints it)",
    )
    parser.add_argument("--pack", metavar="STORE", help="copy the data --data needs to --out")
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.pack:
        pack(args.pack, args.out)
        return 0
    if args.step:
        result = {"throughput": throughput, "compiled_vs_eager": compiled_vs_eager}.get(
            args.step, ds_model
        )(args)
        (args.out / f"{args.step}.json").write_text(json.dumps(result))
        return 0
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    results = {}
    for name in STEPS:
        if name == "ds_model" and not args.data:
            results[name] = {"skipped": "no --data store given"}
            continue
        results[name] = run_step(name, args)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"device: {device}; torch {torch.__version__}; {'cpu-tiny' if args.cpu_tiny else 'full'}")
    for name, result in results.items():
        print(f"== {name} ({result.get('seconds', 0)} s)")
        for line in result.get("lines", []):
            print(f"   {line}")
        for key, value in result.items():
            if key not in ("lines", "seconds"):
                print(f"   {key}: {value}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
