"""Training tokens/s: our Accelerate loop beside the course's plain loop, in one run.

Same model size, same token rows, same machine. Token values do not change the arithmetic, so
the rows are drawn at random from the vocabulary; pass --preset course on a GPU for the 124M model.
With --checkpoint-every N, our loop also saves checkpoints to a local folder every N steps and
the share of time they took is printed. On a GPU, model FLOPs utilisation is printed against
the card's dense bf16 peak (--peak-tflops, 989 for an H100 SXM).

    python bench/train_throughput.py [--preset smoke|course] [--steps N] [--checkpoint-every N]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset
from transformers import get_scheduler

from flows.presets import PRESETS
from storage.store import Store
from tasks.training.checkpoint import CheckpointStore
from tasks.training.config import ModelConfig, TrainConfig
from tasks.training.data import TokenRows
from tasks.training.loop import make_accelerator, resolve_mixed_precision, train_model_loop
from tasks.training.loss import course_weighted_loss
from tasks.training.model import build_model, gpt2_config

KEYTOKEN_IDS = [11, 22, 33, 44]


def course_loop(model, rows: np.ndarray, train, steps: int) -> float:
    """The course's loop as published (modern Accelerate API); returns tokens/s."""
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(train.mixed_precision))
    dataset = TensorDataset(torch.from_numpy(rows))
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


def our_loop(model, rows: np.ndarray, train, steps: int, checkpoint_every: int | None = None):
    """Our loop over the same rows; returns tokens/s (validation and checkpoints excluded) and
    the share of the run spent saving checkpoints."""
    config = train.model_copy(
        update={
            "max_steps": steps,
            "eval_interval": steps,
            "eval_batches": 1,
            "log_interval": steps,
            "epochs": 1000.0,
            "checkpoint_interval": checkpoint_every or steps,
        }
    )
    token_rows = TokenRows([rows])
    log = logging.getLogger("bench")
    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory(prefix="bench-checkpoints-") as folder:
        checkpoints = CheckpointStore(Store(folder), "ckpt", 2, log) if checkpoint_every else None
        result = train_model_loop(
            model,
            token_rows,
            token_rows,
            KEYTOKEN_IDS,
            config,
            make_accelerator(config),
            log,
            checkpoints,
        )
    logging.disable(logging.NOTSET)
    share = result.checkpoint_seconds / (result.seconds - result.eval_seconds)
    per_checkpoint = result.checkpoint_seconds / max(result.checkpoints, 1)
    return result.tokens_per_second, share, per_checkpoint


def flops_per_token(params: int, n_layer: int, n_embd: int, context: int) -> float:
    """Training FLOPs per token: 6N for the weights plus the attention scores (PaLM's count)."""
    return 6 * params + 12 * n_layer * n_embd * context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smoke", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    model_settings = ModelConfig(**preset.get("model", {}))
    train = TrainConfig(**preset.get("train", {}))
    context = preset.get("tokenize", {}).get("context_length", 128)
    rows_needed = train.rows_per_step() * (args.steps + 1)
    rows = (
        np.random.default_rng(0).integers(0, args.vocab, (rows_needed, context)).astype(np.uint16)
    )
    model_config = gpt2_config(model_settings, args.vocab, context, 0)

    model = build_model(model_config, seed=0)
    params = sum(p.numel() for p in model.parameters())
    baseline = course_loop(model, rows.astype(np.int64), train, args.steps)
    model = build_model(model_config, seed=0)
    ours, share, per_checkpoint = our_loop(model, rows, train, args.steps, args.checkpoint_every)
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"device: {device}; preset {args.preset}: {params / 1e6:.1f}M parameters, "
        f"{train.batch_size} x {context} tokens x {train.gradient_accumulation_steps} "
        f"accumulation, {args.steps} optimizer steps each, mixed precision "
        f"{resolve_mixed_precision(train.mixed_precision)}"
    )
    for name, value in (("course loop", baseline), ("our loop", ours)):
        line = f"  {name:<12} {value:>12,.0f} tokens/s   {value / baseline:5.2f}x"
        if torch.cuda.is_available():
            flops = value * flops_per_token(
                params, model_settings.n_layer, model_settings.n_embd, context
            )
            line += f"   MFU {flops / (args.peak_tflops * 1e12):6.1%}"
        print(line)
    if args.checkpoint_every:
        step_seconds = train.rows_per_step() * context / ours
        print(
            f"  checkpoints every {args.checkpoint_every} steps: {per_checkpoint:.2f} s each, "
            f"{share:.2%} of our loop's time; at the preset's interval of "
            f"{train.checkpoint_interval} steps ({step_seconds:.3f} s each) that is "
            f"{per_checkpoint / (per_checkpoint + train.checkpoint_interval * step_seconds):.2%}"
        )


if __name__ == "__main__":
    main()
