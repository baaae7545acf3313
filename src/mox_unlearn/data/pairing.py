"""Which forget and retain examples go together in each micro-batch of an epoch.

Plans are pure functions of (seed, epoch): a resumed run rebuilds the plan of the epoch it was
in and skips to micro-step k, and two processes that build the same plan agree without talking.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from ..errors import MoxError

if TYPE_CHECKING:  # torch is imported where it is used: configs and data are read without it
    import torch


def _generator(seed: int, epoch: int, stream: str) -> torch.Generator:
    """A torch generator for (seed, epoch, stream); hashing keeps nearby seeds/epochs unrelated."""
    import torch

    digest = hashlib.sha256(f"{seed}:{epoch}:{stream}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def epoch_plan(
    n_forget: int, n_retain: int, batch_size: int, seed: int, epoch: int, *, drop_last: bool = False
) -> list[tuple[list[int], list[int]]]:
    """Micro-batches of one epoch: ``[(forget indices, retain indices), ...]``.

    The forget set is visited once, in a random order, in batches of `batch_size` (the last one
    smaller unless `drop_last`, which may leave no batch at all when n_forget < batch_size).
    Each batch is paired with as many retain indices, drawn without replacement inside the
    batch when the retain set is large enough and with replacement otherwise; with no retain
    set the retain lists are empty.
    """
    if batch_size < 1:
        raise MoxError(f"batch_size must be at least 1, got {batch_size}")
    if n_forget < 0 or n_retain < 0:
        raise MoxError(f"set sizes must be non-negative, got n_forget={n_forget}, n_retain={n_retain}")
    import torch

    gen = _generator(seed, epoch, "pairs")
    order = torch.randperm(n_forget, generator=gen).tolist()
    plan = []
    for start in range(0, n_forget, batch_size):
        forget = order[start : start + batch_size]
        if drop_last and len(forget) < batch_size:
            break
        plan.append((forget, _retain_batch(n_retain, len(forget), gen)))
    return plan


def _retain_batch(n_retain: int, size: int, gen: torch.Generator) -> list[int]:
    """`size` retain indices: distinct when the retain set allows it."""
    import torch

    if n_retain == 0:
        return []
    if n_retain >= size:
        return torch.randperm(n_retain, generator=gen)[:size].tolist()
    return torch.randint(n_retain, (size,), generator=gen).tolist()


def refusal_choices(n: int, n_refusals: int, seed: int, epoch: int) -> list[int]:
    """For each forget item i (0..n-1), the index of the refusal string it is paired with this epoch.

    A separate random stream from `epoch_plan`, so changing the refusal list leaves the batch
    order unchanged.
    """
    if n_refusals < 1:
        raise MoxError("the refusal list is empty")
    if n < 0:
        raise MoxError(f"n must be non-negative, got {n}")
    import torch

    return torch.randint(n_refusals, (n,), generator=_generator(seed, epoch, "refusals")).tolist()
