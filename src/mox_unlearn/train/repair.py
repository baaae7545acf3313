"""`repair_steps=N` (issue 17, opt-in): after extrapolation, N optimizer steps of KL(p_ref ‖ p_θ) on the
retain set only, the memorization objective's own retain term, to give back utility that a large α took.

This is training, not a variant of Eq. 8: it costs N forward/backward passes of the policy and N forwards
of θ_ref, and its result is no longer θ_ref + α·Δ. It runs in one process on the unwrapped model, after
the finite check and before OUT/model is written; the losses and the time go to run.json ("repair") and
the model card. The batch order is drawn from the run's seed, so a rerun (or a resume) repeats it.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from mox_unlearn.data.formatting import collate
from mox_unlearn.errors import MoxError
from mox_unlearn.losses.base import answer_logits, kl_ref_to_policy


def check_repair(cfg: Any, processes: int) -> None:
    """Refuse repair_steps where it cannot run as stated, in one line, before training."""
    if not cfg.repair_steps:
        return
    if cfg.lora:
        raise MoxError("repair_steps is not supported with lora=true (the outputs are adapters of θ_mem)")
    if cfg.momentum:
        raise MoxError("repair_steps is not supported with momentum=true")
    if processes > 1:
        raise MoxError("repair_steps runs in one process; launch without accelerate's multi-process backends")
    if not cfg.retain:
        raise MoxError("repair_steps needs a retain set (--retain): it trains KL(p_ref || p_θ) on it")


def repair(model, reference, retain_ex: list[dict], pad_id: int, cfg: Any) -> dict[str, Any]:
    """cfg.repair_steps AdamW steps (lr cfg.lr, no weight decay, gradients clipped at cfg.max_grad_norm) of
    token-mean KL(p_ref ‖ p_θ) over retain answers, in batches of cfg.per_device_batch_size; returns the
    loss of every step (before its update) and the seconds it took."""
    start = time.perf_counter()
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    losses = []
    was_training = model.training
    model.train()
    for _ in range(cfg.repair_steps):
        if len(order) < cfg.per_device_batch_size:
            order += torch.randperm(len(retain_ex), generator=g).tolist()
        idx, order = order[: cfg.per_device_batch_size], order[cfg.per_device_batch_size :]
        batch = {k: v.to(device) for k, v in collate([retain_ex[i] for i in idx], pad_id).items()}
        labels = batch.pop("labels")
        with torch.no_grad():
            ref_logits = answer_logits(reference(**batch).logits, labels)
        loss = kl_ref_to_policy(ref_logits, answer_logits(model(**batch).logits, labels))
        loss.backward()
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
    model.train(was_training)
    return {"steps": cfg.repair_steps, "losses": losses, "seconds": round(time.perf_counter() - start, 3)}
