"""Momentum extrapolation (paper Eq. 10): a running average of the forget models formed during training."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from mox_unlearn.extrapolation import extrapolate_tensor


class MomentumAverage:
    """θ̄ ← η·θ_for^t + (1−η)·θ̄, with θ_for^t = (1+α)θ_ref − αθ_t formed from the current weights.

    Kept on CPU in fp32 (so it costs host memory, not accelerator memory). The first update has no
    history and sets θ̄ = θ_for^t. Has state_dict / load_state_dict so accelerate checkpoints it.
    """

    def __init__(self, eta: float = 0.675, alpha: float = 4.0):
        if not 0 < eta <= 1:
            raise ValueError(f"momentum eta must be in (0, 1], got {eta}")
        self.eta = eta
        self.alpha = alpha
        self.updates = 0
        self.avg: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self, ref: Mapping[str, torch.Tensor], current: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Fold the forget model of `current` (name, tensor pairs, any device) into the average."""
        for name, param in current:
            forget = extrapolate_tensor(ref[name].detach().float().cpu(), param.detach().float().cpu(), self.alpha)
            if self.updates == 0:
                self.avg[name] = forget
            else:
                self.avg[name].mul_(1 - self.eta).add_(forget, alpha=self.eta)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"eta": self.eta, "alpha": self.alpha, "updates": self.updates, "avg": self.avg}

    def load_state_dict(self, state: dict) -> None:
        self.eta, self.alpha, self.updates, self.avg = state["eta"], state["alpha"], state["updates"], state["avg"]
