"""Training tokens/s: our Accelerate loop beside the course's plain loop, in one run.

Same model size, same token rows, same machine. Token values do not change the arithmetic, so
the rows are drawn at random from the vocabulary; pass --preset course on a GPU for the 124M model.

    python bench/train_throughput.py [--preset smoke|course] [--steps N]
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch
from accelerate import Accelerator
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import get_scheduler

from flows.config import build_config
from tasks.training.data import TokenRows
from tasks.training.loop import make_accelerator, resolve_mixed_precision, train_model_loop
from tasks.training.loss import course_weighted_loss
from tasks.training.model import build_model, gpt2_config

KEYTOKEN_IDS = [11, 22, 33, 44]


def course_loop(model, rows: np.ndarray, train, steps: int) -> float:
    """The course's loop as published (modern Accelerate API); returns tokens/s."""
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(train.mixed_precision))
    dataset = Dataset.from_dict({"input_ids": rows}).with_format("torch")
    dataloader = DataLoader(dataset, batch_size=train.batch_size, shuffle=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.learning_rate)
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=0, num_training_steps=steps)
    accumulation = train.gradient_accumulation_steps
    model.train()
    completed, start = 0, None
    while completed < steps:
        for step, batch in enumerate(dataloader, start=1):
            logits = model(batch["input_ids"]).logits
            loss = course_weighted_loss(batch["input_ids"], logits, KEYTOKEN_IDS)
            accelerator.backward(loss / accumulation)
            if step % accumulation == 0:
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                completed += 1
                if completed == 1:  # the first step pays for warm-up; time the rest
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                if completed == steps:
                    break
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    tokens = (steps - 1) * train.rows_per_step() * rows.shape[1]
    return tokens / (time.perf_counter() - start)


def our_loop(model, rows: np.ndarray, train, steps: int) -> float:
    """Our loop over the same rows; returns tokens/s (validation time excluded)."""
    config = train.model_copy(
        update={
            "max_steps": steps,
            "eval_interval": steps,
            "eval_batches": 1,
            "log_interval": steps,
            "epochs": 1000.0,
        }
    )
    token_rows = TokenRows([rows])
    logging.disable(logging.INFO)
    result = train_model_loop(
        model,
        token_rows,
        token_rows,
        KEYTOKEN_IDS,
        config,
        make_accelerator(config),
        logging.getLogger("bench"),
    )
    logging.disable(logging.NOTSET)
    return result.tokens_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--vocab", type=int, default=4096)
    args = parser.parse_args()
    config = build_config(args.preset)
    context = config.tokenize.context_length
    rows_needed = config.train.rows_per_step() * (args.steps + 1)
    rows = (
        np.random.default_rng(0).integers(0, args.vocab, (rows_needed, context)).astype(np.uint16)
    )
    model_config = gpt2_config(config.model, args.vocab, context, 0)

    results = {}
    for name, loop in (("course loop", course_loop), ("our loop", our_loop)):
        model = build_model(model_config, seed=0)
        results[name] = loop(
            model,
            rows.astype(np.int64) if name == "course loop" else rows,
            config.train,
            args.steps,
        )
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    params = sum(p.numel() for p in build_model(model_config, 0).parameters()) / 1e6
    print(
        f"device: {device}; preset {args.preset}: {params:.1f}M parameters, "
        f"{config.train.batch_size} x {context} tokens x "
        f"{config.train.gradient_accumulation_steps} accumulation, "
        f"{args.steps} optimizer steps each, mixed precision "
        f"{resolve_mixed_precision(config.train.mixed_precision)}"
    )
    baseline = results["course loop"]
    for name, value in results.items():
        print(f"  {name:<12} {value:>12,.0f} tokens/s   {value / baseline:5.2f}x")


if __name__ == "__main__":
    main()
