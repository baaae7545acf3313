"""Step arithmetic of a run, and how one global micro-batch is split over processes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mox_unlearn.config import UnlearnConfig
from mox_unlearn.errors import MoxError
from mox_unlearn.forward import StepBatch, answer_tokens


@dataclass
class Progress:
    """Optimizer steps done (skipped ones included); checkpointed with the run so --resume knows where
    to continue and how many of its max_skipped_steps a run has used."""

    step: int = 0
    skipped: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.skipped = int(state["step"]), int(state.get("skipped", 0))


@dataclass
class Plan:
    """Step arithmetic of a run, derived from the data size and the batch settings."""

    micro_batch: int  # per process
    accumulation: int
    micro_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    epochs: int
    warmup_steps: int

    def epoch_ends(self, step: int) -> bool:
        """Whether optimizer step `step` (1-based) is the last of an epoch, or of the run."""
        return step % self.steps_per_epoch == 0 or step == self.total_steps


def make_plan(cfg: UnlearnConfig, n_forget: int, num_processes: int) -> Plan:
    global_micro = cfg.per_device_batch_size * num_processes
    if cfg.batch_size % global_micro:
        raise MoxError(
            f"batch_size {cfg.batch_size} is not a multiple of per_device_batch_size × processes = {global_micro}"
        )
    accumulation = cfg.batch_size // global_micro
    micro_per_epoch = math.ceil(n_forget / global_micro)
    steps_per_epoch = math.ceil(micro_per_epoch / accumulation)
    if cfg.max_steps is not None:  # limits (>= 1) were checked with the config (config.check_config)
        total = cfg.max_steps
        epochs = math.ceil(total / steps_per_epoch)
    else:
        total, epochs = cfg.epochs * steps_per_epoch, cfg.epochs
    warmup = min(total, round(cfg.warmup_epochs * steps_per_epoch))
    return Plan(cfg.per_device_batch_size, accumulation, micro_per_epoch, steps_per_epoch, total, epochs, warmup)


def slice_for_process(indices: list[int], rank: int, world: int) -> list[int]:
    """This process's share of a global micro-batch; a process left empty by a short last batch
    reuses the first item, so every process runs the same number of backward passes (DDP needs it)."""
    mine = indices[rank::world]
    return mine or indices[:1]


def step_token_norms(batches: list[StepBatch], accelerator) -> dict[str, float]:
    """Answer tokens of the whole step (every micro-batch of every process) per kind, divided by
    processes × micro-batches: with it as the divisor of token means, the average that gradient
    accumulation and DDP take over per-batch losses equals the mean over all the step's tokens, so the
    result does not depend on how the batch is split (tests/test_multiprocess.py). One tiny all-reduce."""
    kinds = ("forget", "retain", "target")
    counts = torch.tensor(
        [sum(answer_tokens(getattr(b, kind)) for b in batches) for kind in kinds],
        dtype=torch.float64,
        device=accelerator.device,
    )
    if accelerator.num_processes > 1:
        counts = accelerator.reduce(counts, reduction="sum")
    parts = accelerator.num_processes * len(batches)
    return {kind: max(float(c), 1.0) / parts for kind, c in zip(kinds, counts.tolist())}
