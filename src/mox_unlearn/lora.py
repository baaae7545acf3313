"""LoRA memorization (beyond the paper): θ_mem = θ_ref + ΔW with ΔW = s·B·A per adapted linear layer.

Eq. 8 then reads θ_for = (1+α)θ_ref − α(θ_ref + ΔW) = θ_ref − α·ΔW, exactly: the forget model is the
reference with the adapter scaled by −α. So training needs no second copy of the weights (the KL
reference is the same model with the adapter switched off, `AdapterOff`) and no third (no full θ_for is
ever formed before saving), and α can still change at load time (`load_forget_model`).

Momentum (Eq. 10) over LoRA stays exact and low-rank: θ̄ = θ_ref + Σ_k c_k·(−α)·ΔW_k with
c_k = η(1−η)^(K−k) (the first update's weight is (1−η)^(K−1)), and Σ_k c_k B_k A_k = [c_1B_1 | … | c_KB_K]·[A_1; …; A_K],
a product of rank K·r. Averaging A and B separately would not give the average of their products.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from mox_unlearn.errors import MoxError, first_line

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # plain weight name -> (B' [out, R], A [R, in]), B'A' = ΔW


def require_peft():
    try:
        import peft
    except ImportError:
        raise MoxError("lora=true needs the `peft` package: pip install peft") from None
    return peft


def wrap(model, r: int, alpha: float, dropout: float, targets: str | list[str]):
    """The model with a fresh LoRA adapter (B = 0, so it starts exactly at θ_ref); only the adapter trains."""
    peft = require_peft()
    if r < 1:
        raise MoxError(f"lora_r must be >= 1, got {r}")
    target = (
        targets if isinstance(targets, list) or targets == "all-linear" else [t.strip() for t in targets.split(",")]
    )
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target, bias="none")
    try:
        return peft.get_peft_model(model, config)
    except ValueError as e:
        raise MoxError(f"LoRA: {first_line(e)}") from None


class AdapterOff:
    """θ_ref as a view of the LoRA model: the same forward with the adapter disabled, in eval mode, no grad."""

    def __init__(self, peft_model):
        self.model = peft_model

    @torch.no_grad()
    def __call__(self, **kwargs: Any):
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter():
                return self.model(**kwargs)
        finally:
            self.model.train(was_training)


def lora_layers(peft_model) -> dict[str, Any]:
    """Plain weight name ("model.layers.0.self_attn.q_proj.weight") -> its LoRA layer."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    return {f"{name}.weight": m for name, m in base.named_modules() if isinstance(m, LoraLayer)}


@torch.no_grad()
def memorized_factors(peft_model) -> Factors:
    """(s·B, A) of every adapted layer, CPU fp32 copies: their product is θ_mem − θ_ref."""
    out: Factors = {}
    for name, layer in lora_layers(peft_model).items():
        key = layer.active_adapters[0]
        s = layer.scaling[key]
        out[name] = (
            layer.lora_B[key].weight.detach().float().cpu() * s,
            layer.lora_A[key].weight.detach().float().cpu().clone(),
        )
    return out


def scaled(factors: Factors, c: float) -> Factors:
    return {k: (b * c, a) for k, (b, a) in factors.items()}


class LowRankMomentum:
    """Momentum (Eq. 10) of the LoRA forget models, kept exactly as weighted low-rank factors (CPU fp32)."""

    def __init__(self, eta: float = 0.675, alpha: float = 4.0):
        if not 0 < eta <= 1:
            raise ValueError(f"momentum eta must be in (0, 1], got {eta}")
        self.eta, self.alpha = eta, alpha
        self.coefs: list[float] = []
        self.history: list[Factors] = []

    @property
    def updates(self) -> int:
        return len(self.coefs)

    def update(self, peft_model) -> None:
        """θ̄ ← η·θ_for^t + (1−η)·θ̄ with θ_for^t = θ_ref − α·ΔW_t (the first update sets θ̄ = θ_for^t)."""
        self.coefs = [c * (1 - self.eta) for c in self.coefs] + ([self.eta] if self.coefs else [1.0])
        self.history.append(memorized_factors(peft_model))

    def forget_factors(self) -> Factors:
        """Factors of θ̄ − θ_ref: B' = −α·[c_1 B_1 | …], A' = [A_1; …]."""
        if not self.history:
            raise MoxError("momentum has no update yet")
        return {
            name: (
                torch.cat([-self.alpha * c * h[name][0] for c, h in zip(self.coefs, self.history)], dim=1),
                torch.cat([h[name][1] for h in self.history], dim=0),
            )
            for name in self.history[0]
        }

    def state_dict(self) -> dict:
        return {"eta": self.eta, "alpha": self.alpha, "coefs": self.coefs, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.eta, self.alpha, self.coefs, self.history = state["eta"], state["alpha"], state["coefs"], state["history"]


@torch.no_grad()
def merged_state_dict(peft_model, factors: Factors) -> dict[str, torch.Tensor]:
    """A plain (non-PEFT) state dict: θ_ref's weights with B'A' added to each adapted weight (fp32 math)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in peft_model.get_base_model().state_dict().items():
        if ".lora_" in key:
            continue
        name = key.replace(".base_layer.", ".")
        if name in factors:
            b, a = factors[name]
            value = (value.float() + (b @ a).to(value.device)).to(value.dtype)
        out[name] = value
    return out


def save_adapter(peft_model, factors: Factors, dest: Path, base: str) -> None:
    """A PEFT adapter folder whose B'A' (scaling 1) are `factors`: θ_ref + adapter = the merged model."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    ranks = {b.shape[1] for b, _ in factors.values()}
    if len(ranks) != 1:
        raise MoxError(f"adapter layers have different ranks {sorted(ranks)}")
    rank = ranks.pop()
    names = sorted({k.rsplit(".", 2)[-2] for k in factors})  # module names: q_proj, v_proj, ...
    LoraConfig(
        r=rank, lora_alpha=rank, target_modules=names, bias="none", base_model_name_or_path=base
    ).save_pretrained(str(dest))
    tensors = {}
    for name, (b, a) in factors.items():
        prefix = "base_model.model." + name[: -len(".weight")]
        tensors[f"{prefix}.lora_A.weight"] = a.contiguous()
        tensors[f"{prefix}.lora_B.weight"] = b.contiguous()
    save_file(tensors, str(dest / "adapter_model.safetensors"))


def load_forget_model(base: str, memorized_adapter: str, alpha: float, *, merge: bool = True):
    """θ_for = θ_ref − α·ΔW from a LoRA memorization run: α is chosen at load time, with no extrapolation pass.

    Args:
        base: θ_ref: the model folder or hub id the adapter was trained on.
        memorized_adapter: the run's OUT/memorized-adapter folder (ΔW = the memorization update).
        alpha: MOX's α (Eq. 8).
        merge: fold the scaled adapter into the weights and return a plain transformers model (default);
            False returns the peft model with the adapter scaled by −α.

    Returns:
        The unlearned model, in float32.
    """
    peft = require_peft()
    from mox_unlearn.io.loading import load_model

    model = peft.PeftModel.from_pretrained(load_model(base, torch.float32), memorized_adapter)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for key in layer.active_adapters:
                layer.lora_B[key].weight.mul_(-alpha)
    return model.merge_and_unload() if merge else model


def trainable_count(params: Iterable[torch.nn.Parameter]) -> int:
    return sum(p.numel() for p in params if p.requires_grad)
