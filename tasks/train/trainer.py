"""One optimizer step: micro-batches, loss scaling, gradient sync, clipping, optimizer, schedule.

The step reads nothing back from the device: its loss figures stay device tensors until a hook
reads them (the progress log does, at its interval), so the host never waits on the GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from transformers import get_scheduler

from tasks.train.config import TrainConfig
from tasks.train.loss import keytoken_weights
from tasks.train.model import KeyTokenLossModel, parameter_groups
from tasks.train.state import rng_state, set_rng_state

# Share of GPU memory a micro-batch trial may peak at, with the optimizer state added: the
# rest is headroom for fragmentation and the allocator's own needs.
GPU_MEMORY_SHARE = 0.9


@dataclass
class StepOutput:
    """What one optimizer step leaves. The tensors stay on the device: reading one makes the
    host wait for the GPU, so hooks read them only when they need to."""

    step: int
    loss: torch.Tensor
    """This process's share of the step's weighted loss."""
    ce: torch.Tensor
    """This process's mean unweighted cross-entropy over the step's rows."""


def use_compile(setting: bool | str, device: torch.device) -> bool:
    """Whether training runs compiled: ``auto`` compiles on CUDA only (on CPU it ran no
    faster; docs/training.md)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with decay on matrices only, as one fused kernel (CUDA and CPU support it)."""
    return torch.optim.AdamW(
        parameter_groups(model, config.weight_decay),
        lr=config.learning_rate,
        betas=config.adam_betas,
        fused=True,
    )


def largest_micro_batch(rows: int, fits: Callable[[int], bool]) -> int:
    """The largest micro-batch, from ``rows`` halving down to 1, that ``fits``."""
    size = rows
    while size > 1 and not fits(size):
        size = (size + 1) // 2
    return size


class DeviceMemory:
    """What sizing micro-batches reads of a device's memory."""

    def total(self) -> int:
        """Bytes the device has."""
        raise NotImplementedError

    def reset_peak(self) -> None:
        """Start measuring a new peak."""

    def peak(self) -> int:
        """Most bytes allocated since ``reset_peak``."""
        raise NotImplementedError

    def release(self) -> None:
        """Hand cached, unused memory back."""


class CudaMemory(DeviceMemory):
    """A GPU's memory, from PyTorch's caching allocator."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def total(self) -> int:
        return torch.cuda.get_device_properties(self.device).total_memory

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        return torch.cuda.max_memory_allocated(self.device)

    def release(self) -> None:
        torch.cuda.empty_cache()


class Trainer:
    """The model, its optimizer and schedule, and the step that trains them on a step's rows."""

    def __init__(
        self,
        model: torch.nn.Module,
        config: TrainConfig,
        accelerator: Accelerator,
        keytoken_ids: list[int],
        total_steps: int,
    ) -> None:
        self.model = model
        self.config = config
        self.accelerator = accelerator
        self.keys = torch.tensor(keytoken_ids, dtype=torch.long, device=accelerator.device)
        optimizer = make_optimizer(model, config)
        self.scheduler = get_scheduler(
            config.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=min(config.warmup_steps, total_steps),
            num_training_steps=total_steps,
        )
        # Accelerate wraps the loss model for multi-GPU (DDP) and moves it; the plain model
        # inside stays what validation, generation and checkpoints use.
        self.loss_model, self.optimizer = accelerator.prepare(KeyTokenLossModel(model), optimizer)
        self.compiled = use_compile(config.compile, accelerator.device)
        self.forward = torch.compile(self.loss_model) if self.compiled else self.loss_model
        self.rows_per_process = config.batch_size * config.gradient_accumulation_steps
        self.micro_batch_size = min(
            self.rows_per_process,
            config.batch_size if config.micro_batch_size == "auto" else config.micro_batch_size,
        )

    def size_micro_batches(
        self,
        context_length: int,
        log: logging.Logger | logging.LoggerAdapter,
        memory: DeviceMemory | None = None,
    ) -> None:
        """For ``micro_batch_size: auto``: the largest micro-batch whose trial forward and
        backward pass, with the optimizer's state added, fits in the device's memory.

        On a GPU ``memory`` is its allocator's; on CPU, with none given, the micro-batch stays
        ``batch_size`` (its memory cannot be measured, and larger ones ran no faster). The
        trials leave no gradients and do not shift the run's random stream; with several
        processes, all take the smallest size any of them found.
        """
        if self.config.micro_batch_size != "auto":
            return
        device = self.accelerator.device
        if memory is None:
            if device.type != "cuda":
                return
            memory = CudaMemory(device)
        # AdamW keeps two fp32 moments per parameter, created at the first step.
        optimizer_bytes = 2 * 4 * sum(p.numel() for p in self.model.parameters())
        saved_rng = rng_state()
        vocab = self.model.get_input_embeddings().num_embeddings
        positions = torch.arange(context_length, device=device) % vocab

        def fits(size: int) -> bool:
            rows = positions.expand(size, -1).contiguous()
            memory.reset_peak()
            try:
                # Uncompiled (a compiled trial per size would leave a dynamic-shape graph; the
                # eager pass peaks no lower) and without gradient all-reduces.
                with self.accelerator.no_sync(self.loss_model), self.accelerator.autocast():
                    loss, _ = self.loss_model(rows, torch.ones(size, device=device))
                    loss.backward()
                peak = memory.peak()
            except torch.OutOfMemoryError:
                peak = None
            finally:
                self.loss_model.zero_grad(set_to_none=True)
                memory.release()
            ok = peak is not None and peak + optimizer_bytes <= GPU_MEMORY_SHARE * memory.total()
            log.info("micro-batch of %d rows: %s", size, "fits" if ok else "does not fit")
            return ok

        size = largest_micro_batch(self.rows_per_process, fits)
        if self.accelerator.num_processes > 1:  # every process runs the same micro-batches
            size = int(self.accelerator.gather(torch.tensor([size], device=device)).min())
        self.micro_batch_size = size
        set_rng_state(saved_rng)

    def train_step(self, step: int, rows: torch.Tensor) -> StepOutput:
        """One optimizer step on this process's rows of the step (batch_size * accumulation).

        Whatever the micro-batch size, the gradient is that of one pass over all the rows:
        each sample's loss is scaled by its weight over the step's total weight (``normalized``,
        summed over all processes) or by 1 / the rows (``course``), so micro-batches add up
        to the whole. Gradients are all-reduced once, after the last micro-batch.
        """
        accelerator, config = self.accelerator, self.config
        weights = keytoken_weights(rows, self.keys, config.keytoken_alpha)
        if config.loss == "normalized":
            total = weights.sum()
            if accelerator.num_processes > 1:
                total = accelerator.reduce(total, reduction="sum")
            scale = weights / total
            # DDP averages gradients over processes; the step's loss is their sum.
            grad_scale = accelerator.num_processes
        else:
            scale = weights / rows.shape[0]
            grad_scale = 1
        loss_sum = torch.zeros((), device=rows.device)
        ce_sum = torch.zeros((), device=rows.device)
        starts = range(0, rows.shape[0], self.micro_batch_size)
        for index, start in enumerate(starts):
            end = start + self.micro_batch_size
            last = index == len(starts) - 1
            sync = nullcontext() if last else accelerator.no_sync(self.loss_model)
            with sync:
                with accelerator.autocast():
                    loss, sample_ce = self.forward(rows[start:end], scale[start:end])
                accelerator.backward(loss * grad_scale)
            loss_sum += loss.detach()
            ce_sum += sample_ce.sum()
        accelerator.clip_grad_norm_(self.loss_model.parameters(), config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not accelerator.optimizer_step_was_skipped:
            self.scheduler.step()
        return StepOutput(step=step, loss=loss_sum, ce=ce_sum / rows.shape[0])

    def state(self) -> dict:
        """The optimisation's state for a checkpoint (on the device; the saver copies it)."""
        scaler = self.accelerator.scaler
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler else None,
        }

    def load_state(self, state: dict) -> None:
        """Restore what ``state`` saved (checked by the caller)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.accelerator.scaler is not None and state.get("scaler") is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
