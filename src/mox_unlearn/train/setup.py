"""A config checked against the method and objective registries, and the data read, before any model
is loaded: every mistake a run can know about up front fails here, in a second."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from mox_unlearn import lora
from mox_unlearn.config import UnlearnConfig
from mox_unlearn.data import RecordSet, load_records
from mox_unlearn.data.records import check_overlap
from mox_unlearn.errors import MoxError
from mox_unlearn.losses import LossSpec, get_loss
from mox_unlearn.methods import Method, get_method
from mox_unlearn.methods.targets import Refusals, TargetSource

RETAIN_TERMS = {"retain", "retain_logits", "ref_retain_logits", "retain_hidden", "ref_retain_hidden"}


@dataclass
class Resolved:
    """What a config trains: the method, its objective and hyper-parameters, the forward passes that
    objective needs with them, and the method's target source (None: no targets)."""

    method: Method
    objective: str
    spec: LossSpec
    hp: dict[str, Any]
    needs: frozenset[str]
    targets: TargetSource | None

    @property
    def target(self) -> str | None:
        """The target source's name (refusal / alternate / retain_answer), None without targets."""
        return self.targets.name if self.targets else None


def resolve(cfg: UnlearnConfig) -> Resolved:
    method = get_method(cfg.method)
    objective = cfg.objective or method.objectives[0]
    if objective not in method.objectives:
        raise MoxError(f"method {method.name!r} takes objectives {', '.join(method.objectives)}, not {objective!r}")
    spec = get_loss(objective)
    unknown_hp = set(cfg.loss) - set(spec.defaults)
    if unknown_hp:
        raise MoxError(
            f"unknown loss settings {sorted(unknown_hp)} for {objective}; valid: {', '.join(spec.defaults) or 'none'}"
        )
    hp = {**spec.defaults, **cfg.loss}
    if cfg.targeted and method.name != "mox":
        raise MoxError(f"--targeted is MOX's targeted variant (Eq. 9); method {method.name!r} does not take it")
    if cfg.momentum and not method.extrapolate:
        raise MoxError(f"--momentum needs an extrapolating method; {method.name!r} is not one")
    if cfg.alpha == "auto":
        from mox_unlearn.alpha_selection import check_auto_config

        check_auto_config(cfg, method)
    elif method.extrapolate and cfg.alpha <= 0:
        raise MoxError(f"alpha must be > 0 for {method.name}, got {cfg.alpha}")
    if cfg.lora:
        lora.require_peft()
        if cfg.trainable or method.trainable:
            raise MoxError(
                f"lora=true trains adapters on {cfg.lora_targets}; {method.name} trains chosen weights "
                f"({cfg.trainable or method.trainable}): use one or the other"
            )
        if cfg.alpha == "auto":
            raise MoxError("alpha=auto with lora=true is not supported; run `mox select-alpha` on OUT/memorized")
    if not cfg.model:
        raise MoxError("no model given (--model)")
    targets = method.targets() if method.targets else (Refusals() if cfg.targeted else None)
    return Resolved(method, objective, spec, hp, effective_needs(spec, hp, targets is not None), targets)


def effective_needs(spec: LossSpec, hp: dict[str, Any], has_target: bool) -> frozenset[str]:
    """Drop forward passes whose term is switched off (no KL when λ_kl = 0, no target without targets)."""
    needs = spec.active_needs(hp)
    return needs - {"target", "ref_target"} if not has_target else needs


def load_data(cfg: UnlearnConfig, r: Resolved) -> tuple[RecordSet, RecordSet | None]:
    """Read and validate the records and the target source's files (before any model is loaded, so
    bad data fails fast)."""
    forget = load_records(cfg.forget, name="forget")
    retain = load_records(cfg.retain, name="retain") if cfg.retain else None
    if retain is None and r.needs & RETAIN_TERMS:
        raise MoxError(f"objective {r.objective!r} needs a retain set (--retain)")
    if r.targets is not None:
        if forget.kind != "qa":
            raise MoxError(
                f"{r.method.name} needs a question/answer forget set (its targets answer the forget questions)"
            )
        r.targets.check(cfg, forget, retain)
        r.targets.read(cfg)
    check_overlap(forget, retain)  # a warning: the same items pulled both ways is almost always a mistake
    if cfg.alpha == "auto":  # the holdout set is read now, so a bad one fails before training
        from mox_unlearn.alpha_selection import load_selection_data

        load_selection_data(forget, cfg.holdout, retain)
    return forget, retain


def mixed_precision(setting: str) -> str:
    """`auto` resolved (bf16 where the GPU has it, else no); other values were checked by the config."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def select_trainable(model, pattern: str | None, hidden_layer: int | None) -> int:
    """Freeze every parameter whose name does not match `pattern` (None: train all); returns the count trained."""
    if pattern is None:
        return sum(p.numel() for p in model.parameters())
    if hidden_layer is not None:
        pattern = pattern.format(layer=hidden_layer, layer_m1=hidden_layer - 1, layer_m2=hidden_layer - 2)
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise MoxError(f"trainable pattern {pattern!r} is not a valid regular expression: {e}") from None
    count = 0
    for name, param in model.named_parameters():
        param.requires_grad_(bool(regex.search(name)))
        count += param.numel() if param.requires_grad else 0
    if count == 0:
        raise MoxError(f"trainable pattern {pattern!r} matches no parameter of the model")
    return count


def default_hidden_layer(model, cfg: UnlearnConfig) -> int:
    """RMU's layer: configured, else the one at 7/32 of the depth (layer 7 of Zephyr-7B's 32 in WMDP)."""
    n = model.config.num_hidden_layers
    layer = cfg.hidden_layer if cfg.hidden_layer is not None else round(7 * n / 32)
    if not 0 <= layer < n:
        raise MoxError(f"hidden_layer {layer} outside the model's {n} layers")
    return layer
