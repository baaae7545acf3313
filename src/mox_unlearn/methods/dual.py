"""PDU's dual variable: the multiplier of its retain constraint NLL(retain) ≤ ε, raised while it is violated.

λ starts at the objective's `alpha_r`; after every optimizer step past the warm-up it becomes
max(0, λ + η · (NLL(retain) − ε)), with η `dual_step_size` and NLL(retain) the step's retain NLL averaged
over micro-batches and processes (so every process keeps the same λ). It is registered with accelerate
for checkpointing, so `--resume` continues with the λ the run had. Source: Entesari et al. 2025,
arXiv:2506.05314, and open-unlearning's PDU trainer (which updates after `dual_warmup_epochs`, once per
micro-batch; here once per optimizer step: docs/methods.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class DualAscent:
    value: float  # λ
    eps: float
    step_size: float
    warmup_steps: int
    updates: int = 0

    @classmethod
    def from_hp(cls, hp: dict[str, float], steps_per_epoch: int) -> DualAscent:
        return cls(
            value=float(hp["alpha_r"]),
            eps=float(hp["retain_loss_eps"]),
            step_size=float(hp["dual_step_size"]),
            warmup_steps=int(round(hp["dual_warmup_epochs"] * steps_per_epoch)),
        )

    def update(self, retain_nll: float, step: int) -> None:
        """After optimizer step `step` (1-based): one ascent step on λ once the warm-up epochs are over (the
        first update follows the first step after them, as open-unlearning's enables updates at epoch end)."""
        if step > self.warmup_steps:
            self.value = max(0.0, self.value + self.step_size * (retain_nll - self.eps))
            self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value, self.updates = float(state["value"]), int(state["updates"])
