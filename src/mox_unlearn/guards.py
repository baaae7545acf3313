"""What stops a training run safely: a stop request (Ctrl-C / SIGTERM), a non-finite loss or gradient,
a model that collapses (paper Def. 2.2). the training run (train/run.py) asks these at step boundaries and checkpoints the
last good state before it stops, so `mox unlearn --resume` continues from there.

Every decision here is taken the same way on every process (one tiny all-reduce), because under DDP a
process that stops, skips or checkpoints alone leaves the others waiting in a collective forever.
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM handled at a step boundary: a checkpoint was saved; the message says how to resume.

    A KeyboardInterrupt, so the command line exits with 130 as for any interruption."""


# ----------------------------------------------------------------------------- stop requests


class StopRequest:
    """Turns SIGINT / SIGTERM during training into a request acted on at the end of the current step.

    A KeyboardInterrupt raised wherever the signal lands (inside backward, the optimizer step, a
    checkpoint write) would leave weights, optimizer and step counter out of step with each other; a
    request lets the step finish and be checkpointed. A second signal at least `force_after` seconds
    after the first interrupts at once (the launcher's copy of the same Ctrl-C, which torchrun forwards
    to its workers moments later, does not). Outside the main thread signals cannot be caught: no-op.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, force_after: float = 2.0):
        self.signum: int | None = None
        self.force_after = force_after
        self._at = 0.0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum, self._at = signum, time.monotonic()
        elif time.monotonic() - self._at >= self.force_after:
            raise KeyboardInterrupt

    @property
    def requested(self) -> bool:
        return self.signum is not None


# ----------------------------------------------------------------------------- step health


@dataclass
class StepHealth:
    """What the end of a step's backward passes found, agreed by every process."""

    bad_loss: float | None  # the first non-finite loss value seen on any process, else None
    grad_norm: float  # total gradient norm before clipping (identical on every process)
    stop_requested: bool

    @property
    def problem(self) -> str | None:
        if self.bad_loss is not None:
            return f"loss is {self.bad_loss}"
        if not math.isfinite(self.grad_norm):
            return f"gradient norm is {self.grad_norm}"
        return None


def agree(
    accelerator, local_bad_loss: float | None, grad_norm, stop: StopRequest, check_grad: bool = True
) -> StepHealth:
    """One all-reduce (sum) of [non-finite loss seen, stop requested] so every process takes the same
    branch; the gradient norm comes from clip_grad_norm_, which already reduces over processes.
    `check_grad=False` (fp16): the gradient scaler skips overflowing steps itself."""
    flags = torch.tensor([local_bad_loss is not None, stop.requested], dtype=torch.float32, device=accelerator.device)
    if accelerator.num_processes > 1:
        flags = accelerator.reduce(flags, reduction="sum")
    bad_any, stop_any = (bool(v) for v in flags.tolist())
    bad = local_bad_loss if local_bad_loss is not None else (math.nan if bad_any else None)
    norm = float(grad_norm) if grad_norm is not None and check_grad else 0.0
    return StepHealth(bad, norm, stop_any)


# ----------------------------------------------------------------------------- RNG state


def rng_state() -> dict:
    """Every generator accelerate checkpoints, so a checkpoint written after a failed step can hold the
    state from before it (then resuming it equals a run in which that step never failed)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- collapse probe (Def. 2.2)


def probe_prompts(examples: list[dict], n: int) -> list[list[int]]:
    """The first `n` forget examples cut to their prompt: the unlabelled prefix of a QA example, or
    the first half (at most 16 tokens) of a raw-text chunk, whose every token is labelled."""
    prompts = []
    for ex in examples[:n]:
        labels = ex["labels"]
        start = next((i for i, lab in enumerate(labels) if lab != -100), len(labels))
        if start == 0:
            start = max(1, min(16, len(ex["input_ids"]) // 2))
        prompts.append(list(ex["input_ids"][:start]))
    return prompts


@torch.no_grad()
def collapse_rate(
    model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int, rank: int = 0, world: int = 1
) -> float:
    """Most-frequent-token rate of greedy continuations (Def. 2.2), computed as `mox eval` does
    (evaluate.stats.generated_top_token_rate).

    Each process generates for its share of the prompts on the unwrapped model (no collective inside,
    so processes may stop generating at different lengths); the texts are then gathered, so every
    process computes the same rate and takes the same decision. Not for FSDP, whose forward passes
    are collectives (refused in train/run.py). Leaves the model in eval mode; the caller switches back."""
    from mox_unlearn.evaluate.stats import generate_greedy, generated_top_token_rate

    mine = prompts[rank::world]
    texts = generate_greedy(model, tokenizer, mine, max_new_tokens=max_new_tokens, batch_size=len(mine)) if mine else []
    if world > 1:
        from accelerate.utils import gather_object

        texts = gather_object(texts)
    return generated_top_token_rate(tokenizer, texts)
