"""Training tokens/s: our loop beside the course's loop, in one run, with MFU and peak memory.

Same model shape, same token rows, same machine, same precision. The course's loop is the one
it publishes (modern Accelerate API) on the course's model (``gelu_new`` GELU, full logits);
ours is ``train_model_loop`` as the pipeline runs it. Token values do not change the
arithmetic, so the rows are drawn at random from the vocabulary. Each loop runs in a fresh
process (so each one's peak memory is its own), alternating, ``--repeats`` times; the first
``--warmup`` steps of each (compilation, allocator warm-up) are not timed. With
``--checkpoint-every N``, our loop also saves checkpoints to a local folder, and the share of
its time training waited for them is printed. On a GPU, model FLOPs utilisation is printed
against the card's dense bf16 peak (``--peak-tflops``, 989 for an H100 SXM).

    python bench/train_throughput.py [--preset smoke|course|ds] [--steps N] [--repeats N]
        [--checkpoint-every N] [--set section.field=value ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset
from transformers import get_scheduler

from flows.config import build_config
from flows.presets import PRESETS
from storage.store import Store
from tasks.train.checkpoint import CheckpointStore
from tasks.train.config import ModelConfig, TrainConfig
from tasks.train.data import TokenRows
from tasks.train.hooks import TrainHook
from tasks.train.loop import make_accelerator, resolve_mixed_precision, train_model_loop
from tasks.train.loss import course_weighted_loss
from tasks.train.model import build_model, gpt2_config

KEYTOKEN_IDS = [11, 22, 33, 44]
ROOT = Path(__file__).resolve().parents[1]


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def course_loop(rows: np.ndarray, model_settings, train, vocab: int, steps: int, warmup: int):
    """The course's loop as published, on the course's model; returns timed tokens/s."""
    config = gpt2_config(model_settings, vocab, rows.shape[1], 0)
    config.activation_function = "gelu_new"  # what the course's AutoConfig("gpt2") holds
    model = build_model(config, seed=0)
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(train.mixed_precision))
    dataset = TensorDataset(torch.from_numpy(rows.astype(np.int64)))
    dataloader = DataLoader(dataset, batch_size=train.batch_size, shuffle=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.learning_rate)
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=0, num_training_steps=steps)
    accumulation = train.gradient_accumulation_steps
    model.train()
    completed, start = 0, None
    while completed < steps:
        for step, batch in enumerate(dataloader, start=1):
            (input_ids,) = batch
            logits = model(input_ids).logits
            loss = course_weighted_loss(input_ids, logits, KEYTOKEN_IDS)
            accelerator.backward(loss / accumulation)
            if step % accumulation == 0:
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                completed += 1
                if completed == warmup:
                    _synchronize()
                    start = time.perf_counter()
                if completed == steps:
                    break
    _synchronize()
    tokens = (steps - warmup) * train.rows_per_step() * rows.shape[1]
    return {"tokens_per_second": tokens / (time.perf_counter() - start)}


class _Timer(TrainHook):
    """Times the steps after the warm-up, leaving out validation and checkpoint waits."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.start = self.seconds = 0.0
        self.paused = 0.0
        self.created = time.perf_counter()
        self.warmup_seconds = 0.0
        self.micro_batch_size = 0
        self.compiled = False

    def on_step(self, loop, output) -> None:
        self.micro_batch_size = loop.trainer.micro_batch_size
        self.compiled = loop.trainer.compiled
        if output.step == self.warmup:  # compilation and the micro-batch trials fall here
            _synchronize()
            self.warmup_seconds = time.perf_counter() - self.created
        if output.step in (self.warmup, self.steps):
            _synchronize()
            now, paused = time.perf_counter(), loop.paused_seconds()
            if output.step == self.warmup:
                self.start, self.paused = now, paused
            else:
                self.seconds = now - self.start - (paused - self.paused)


def our_loop(rows, model_settings, train, vocab: int, steps: int, warmup: int, every):
    """Our loop over the same rows; returns timed tokens/s and, with checkpoints, the share
    of the timed steps' time training waited for them."""
    config = train.model_copy(
        update={
            "max_steps": steps,
            "eval_interval": steps,
            "eval_batches": 1,
            "log_interval": steps,
            "epochs": 1000.0,
            "api_eval_cases": 0,
            "checkpoint_interval": every or steps,
        }
    )
    model = build_model(gpt2_config(model_settings, vocab, rows.shape[1], 0), seed=0)
    token_rows = TokenRows([rows])
    log = logging.getLogger("bench")
    timer = _Timer(warmup, steps)
    with tempfile.TemporaryDirectory(prefix="bench-checkpoints-") as folder:
        checkpoints = CheckpointStore(Store(folder), "ckpt", 2, log) if every else None
        result = train_model_loop(
            model,
            token_rows,
            token_rows,
            KEYTOKEN_IDS,
            config,
            make_accelerator(config),
            log,
            checkpoints,
            hooks=[timer],
        )
    tokens = (steps - warmup) * config.rows_per_step() * rows.shape[1]
    train_seconds = result.seconds - result.eval_seconds
    return {
        "tokens_per_second": tokens / timer.seconds,
        "checkpoint_share": result.checkpoint_seconds / train_seconds if every else None,
        "checkpoint_wait": result.checkpoint_seconds / max(result.checkpoints, 1),
        "warmup_seconds": timer.warmup_seconds,
        "micro_batch_size": timer.micro_batch_size,
        "compiled": timer.compiled,
    }


def settings(args) -> tuple[ModelConfig, TrainConfig, int]:
    """The preset's model and training settings with the --set overrides, and its context."""
    config = build_config(args.preset, overrides=args.set)
    return config.model, config.train, config.tokenize.context_length


def run_one(args) -> dict:
    """One loop in this process: its figures and peak memory, as JSON."""
    model, train, context = settings(args)
    rows_needed = train.rows_per_step() * (args.steps + 1)
    rows = np.random.default_rng(0).integers(0, args.vocab, (rows_needed, context))
    rows = rows.astype(np.uint16)
    if args.loop == "course":
        figures = course_loop(rows, model, train, args.vocab, args.steps, args.warmup)
    else:
        figures = our_loop(
            rows, model, train, args.vocab, args.steps, args.warmup, args.checkpoint_every
        )
    if torch.cuda.is_available():
        figures["peak_memory"] = torch.cuda.max_memory_allocated() / 2**30
        figures["memory_kind"] = "GPU memory allocated"
    else:
        figures["peak_memory"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        figures["memory_kind"] = "process RSS"
    return figures


def flops_per_token(params: int, n_layer: int, n_embd: int, context: int) -> float:
    """Training FLOPs per token: 6N for the weights plus the attention scores (PaLM's count)."""
    return 6 * params + 12 * n_layer * n_embd * context


def _child(args, loop: str) -> dict:
    command = [sys.executable, __file__, "--loop", loop, *sys.argv[1:]]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the {loop} loop failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smoke", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--set", action="append", default=[], help="section.field=value")
    parser.add_argument("--loop", choices=["course", "ours"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 1 <= args.warmup < args.steps:
        parser.error("--warmup must be at least 1 and below --steps")
    if args.loop:
        print(json.dumps(run_one(args)))
        return

    model_settings, train, context = settings(args)
    model = build_model(gpt2_config(model_settings, args.vocab, context, 0), seed=0)
    params = sum(p.numel() for p in model.parameters())
    runs = {"course": [], "ours": []}
    for _ in range(args.repeats):
        for loop in runs:
            runs[loop].append(_child(args, loop))
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"device: {device}; preset {args.preset}: {params / 1e6:.1f}M parameters, "
        f"{train.batch_size} x {context} tokens x {train.gradient_accumulation_steps} "
        f"accumulation, {args.steps} optimizer steps each ({args.warmup} untimed), "
        f"mixed precision {resolve_mixed_precision(train.mixed_precision)}; "
        f"{args.repeats} alternating run(s) of each loop, medians"
    )
    baseline = statistics.median(r["tokens_per_second"] for r in runs["course"])
    for name, loop in (("course loop", "course"), ("our loop", "ours")):
        rates = [r["tokens_per_second"] for r in runs[loop]]
        value = statistics.median(rates)
        memory = max(r["peak_memory"] for r in runs[loop])
        line = (
            f"  {name:<12} {value:>12,.0f} tokens/s   {value / baseline:5.2f}x   "
            f"(runs: {', '.join(f'{rate:,.0f}' for rate in rates)})   "
            f"peak {runs[loop][0]['memory_kind']} {memory:.2f} GiB"
        )
        if torch.cuda.is_available():
            flops = value * flops_per_token(
                params, model_settings.n_layer, model_settings.n_embd, context
            )
            line += f"   MFU {flops / (args.peak_tflops * 1e12):6.1%}"
        if loop == "ours":
            first = runs[loop][0]
            line += (
                f"   micro-batch {first['micro_batch_size']}, first {args.warmup} step(s) "
                f"{statistics.median(r['warmup_seconds'] for r in runs[loop]):.1f} s "
                f"({'compiled' if first['compiled'] else 'eager'})"
            )
        print(line)
    if args.checkpoint_every:
        share = statistics.median(r["checkpoint_share"] for r in runs["ours"])
        wait = statistics.median(r["checkpoint_wait"] for r in runs["ours"])
        ours = statistics.median(r["tokens_per_second"] for r in runs["ours"])
        step_seconds = train.rows_per_step() * context / ours
        interval = train.checkpoint_interval
        print(
            f"  checkpoints every {args.checkpoint_every} steps: training waited {wait:.3f} s "
            f"each, {share:.2%} of our loop's time; at the preset's interval of {interval} "
            f"steps ({step_seconds:.3f} s each) that is "
            f"{wait / (wait + interval * step_seconds):.2%}"
        )


if __name__ == "__main__":
    main()
