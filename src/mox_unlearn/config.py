"""Run configuration: one dataclass, a YAML file, then `key=value` overrides (dotted for nested keys).

Precedence: defaults < YAML file < command-line flags < key=value overrides. The resolved config is
written to every run folder so a run can be repeated exactly.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mox_unlearn.data.formatting import PromptFormat
from mox_unlearn.data.records import read_text
from mox_unlearn.errors import MoxError, first_line
from mox_unlearn.variants import Variant

# The retrain-free selection rule's defaults, in one place: `mox select-alpha`, `alpha: auto` and the
# experiments (select-alpha, frontier) all start from these (alpha_selection/, docs/select-alpha.md).
ALPHA_GRID = (0.5, 1.0, 2.0, 4.0, 8.0)  # the paper's five extrapolation strengths
SELECT_TOLERANCE = 0.05  # largest relative drop of retain probability / ROUGE against θ_ref
SELECT_P_MIN = 0.05  # KS p-value (forget vs holdout min-k scores) from which they count as alike


@dataclass(frozen=True)
class SelectionSettings:
    """The retrain-free selection rule's settings (alpha_selection/, docs/select-alpha.md), as one object:
    `mox select-alpha` builds it from its flags, `alpha: auto` from the run's config
    (UnlearnConfig.selection) and the experiments from theirs (ExperimentConfig.selection); it is checked
    in one place (alpha_selection.check_settings) and read by alpha_curve."""

    grid: tuple[float, ...] = ALPHA_GRID
    tolerance: float = SELECT_TOLERANCE  # largest relative drop of retain probability / ROUGE against θ_ref
    p_min: float = SELECT_P_MIN  # KS p-value from which forget and holdout count as alike
    score: str = "min_k"  # the per-item membership score of the KS test: min_k or truth_ratio
    max_items: int | None = 100  # items scored per set (None: all)


def _flag(default: Any, help: str = "") -> Any:
    """A setting that is also a `mox unlearn` flag (--name; a True default gives --no-name), with its help."""
    return field(default=default, metadata={"flag": help})


@dataclass
class UnlearnConfig:
    """Every setting of a run. Fields with a "flag" in their metadata are also `mox unlearn --flags` (help
    text there); every field is a YAML key and a key=value override."""

    # what to unlearn from what
    model: str = _flag("", "HF model folder or hub id (θ_ref)")
    forget: str = _flag("", "forget set spec")  # data spec: .json/.jsonl/.txt or hf:<id>[:<config>][:<split>]
    retain: str | None = _flag(None, "retain set spec")
    out: str = _flag("", "run folder; the unlearned model goes to OUT/model")
    # method
    method: str = _flag("mox", "unlearning method (default mox)")
    objective: str | None = _flag(None, "memorization objective: memorize (Eq. 4) or memorize_po (Eq. 5)")
    loss: dict[str, float] = field(default_factory=dict)  # objective hyper-parameters (lambda_kl, beta, ...)
    alpha: float | Literal["auto"] = _flag(  # Eq. 8; "auto": chosen after training (alpha_selection/)
        4.0, "extrapolation strength α (default 4), or auto: chosen after training (needs holdout=SPEC)"
    )
    targeted: bool = _flag(False, "add the targeted term (Eq. 9)")
    refusals: str | None = _flag(None, "refusal strings for --targeted, one a line")  # None = the packaged list
    momentum: bool = _flag(False, "momentum extrapolation (Eq. 10)")
    momentum_every: int | None = None  # optimizer steps between updates; None = each epoch end
    eta: float = 0.675
    # alpha: auto (alpha_selection/): the largest α of the grid that keeps retain utility and makes forget ~ holdout
    holdout: str | None = None  # data spec like the forget set, never trained on; required with alpha: auto
    alpha_grid: list[float] = field(default_factory=lambda: list(ALPHA_GRID))
    alpha_tolerance: float = SELECT_TOLERANCE  # largest relative drop of retain probability / ROUGE against θ_ref
    alpha_p_min: float = SELECT_P_MIN  # KS p-value (forget vs holdout min-k scores) from which they count as alike
    # which part of Δ = θ_ref − θ_mem moves (variants.py): keep_fraction, drop_rate, seed, only, skip, alpha_by_depth
    extrapolation: Variant = field(default_factory=Variant)
    alpha_variants: list[dict] = field(default_factory=list)  # alpha: auto also tries these (select-alpha --variant)
    repair_steps: int = 0  # after extrapolation: N steps of KL(p_ref || p_θ) on the retain set (train/repair.py)
    # optimisation (paper defaults)
    lr: float = 1e-5
    weight_decay: float = 0.01
    batch_size: int = 32  # effective: per_device_batch_size × processes × accumulation
    per_device_batch_size: int = 8
    epochs: int = 10
    max_steps: int | None = _flag(None)
    warmup_epochs: float = 1.0
    max_grad_norm: float | None = 1.0
    seed: int = _flag(0)
    # method-specific settings
    cache_ref: bool = True  # cache θ_ref's sequence log-probs on fixed data (forget / target answers)
    trainable: str | None = None  # regex of parameter names to train; None = the method's default (all)
    hidden_layer: int | None = None  # RMU layer; None = round(7/32 · number of layers)
    reinforce_epochs: int | None = None  # WHP reinforced model; None = epochs
    reinforce_lr: float | None = None  # None = lr
    reinforce_max_steps: int | None = None
    alternates_prompt: str = "{question} (Answer with a plausible but different answer than: {answer})"
    alternates_max_new_tokens: int = 64
    # data and precision
    max_length: int = 512
    prompt: PromptFormat = field(default_factory=PromptFormat)
    dtype: str = "float32"  # weights while training and in the outputs
    mixed_precision: str = "auto"  # auto = bf16 where the accelerator supports it, else no
    # LoRA memorization and memory (lora.py)
    lora: bool = False  # train a LoRA adapter instead of all weights; θ_for = θ_ref − α·ΔW_lora exactly
    lora_r: int = 16
    lora_alpha: float = 32.0  # peft's scaling numerator (ΔW = lora_alpha / r · B·A); not MOX's α
    lora_dropout: float = 0.0
    lora_targets: str = "all-linear"  # peft target_modules: all-linear, or comma-separated module names
    # attention kernel (transformers' attn_implementation): null = its choice, sdpa where the model has it;
    # eager, sdpa, flash_attention_2 (needs flash_attn and a CUDA GPU), ...
    attn_implementation: str | None = None
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more time
    # outputs
    save_memorized: bool = _flag(True, "do not write OUT/memorized")
    shard_size: str = "2GB"
    checkpoint_every: int | None = None  # optimizer steps; None = each epoch end; 0 = never
    keep_checkpoints: bool = False
    save_epochs: bool = False  # also write the trained weights at every epoch end to OUT/epochs/epoch-K
    log_every: int = 1
    log_with: str = "none"  # experiment trackers (train/tracking.py): none, tensorboard, wandb, mlflow, all
    push_to_hub: str | None = _flag(None, "after the run, upload OUT/model with its card to this Hub repo (private)")
    hub_public: bool = _flag(False, "create the --push-to-hub repository public instead of private")
    # numerical failure and collapse (guards.py); a stop saves a checkpoint that --resume continues from
    on_nonfinite: str = "stop"  # non-finite loss or gradient norm: stop (checkpoint of the step before) or skip
    max_skipped_steps: int = 0  # with on_nonfinite=skip: skip that many steps (no optimizer/scheduler step), then stop
    collapse_probe_every: int = 0  # optimizer steps between collapse probes (Def. 2.2); 0 = off; not under FSDP
    collapse_threshold: float = 0.5  # most-frequent-token rate of the probe's greedy answers that counts as collapse
    collapse_action: str = "warn"  # warn, or stop (with a checkpoint of the step) when the rate reaches the threshold
    collapse_probe_prompts: int = 4  # forget prompts probed: the first N of the forget set
    collapse_probe_tokens: int = 16  # greedy tokens generated per prompt


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _number(value: Any) -> Any:
    """YAML 1.1 reads `1e-5` as a string; read numeric-looking strings as numbers."""
    if isinstance(value, str):
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
    return value


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a YAML value to a field's annotated type; one-line error naming the key. None (YAML's
    null) only where the type admits it (`int | None`, Any); elsewhere it is the type's own error."""
    if value is None and (tp is Any or type(None) in typing.get_args(tp)):
        return None
    base = _unwrap_optional(tp)
    if typing.get_origin(base) in (typing.Union, types.UnionType):
        return _coerce_union(value, typing.get_args(base), key)
    if base is bool:
        if isinstance(value, bool):
            return value
        raise MoxError(f"config {key}: expected true/false, got {value!r}")
    if base in (int, float):
        value = _number(value)
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise MoxError(f"config {key}: expected an integer, got {value!r}")
    if base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _finite(float(value), key)
        raise MoxError(f"config {key}: expected a number, got {value!r}")
    if base is str:
        if value is None or isinstance(value, (dict, list)):
            raise MoxError(f"config {key}: expected a string, got {value!r}")
        return str(value)
    if typing.get_origin(base) is list and not isinstance(value, (list, tuple)):
        raise MoxError(f"config {key}: expected a list, got {value!r}")
    if typing.get_origin(base) is dict:
        if not isinstance(value, dict):
            raise MoxError(f"config {key}: expected a mapping, got {value!r}")
        item_type = typing.get_args(base)[1] if typing.get_args(base) else Any
        if item_type is Any:
            return {k: _finite(v, f"{key}.{k}") for k, v in value.items()}
        return {k: _coerce(v, item_type, f"{key}.{k}") for k, v in value.items()}
    return value


def _finite(value: Any, key: str) -> Any:
    """NaN and infinities are never meaningful settings (α = NaN trains and then writes a NaN model)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise MoxError(f"config {key}: expected a finite number, got {value!r}")
    return value


def _is_size(value: Any) -> bool:
    from mox_unlearn.io.shards import parse_size

    try:
        parse_size(value)
    except MoxError:
        return False
    return True


# Allowed values of UnlearnConfig settings, checked as they are set, so that nonsense (lr < 0, batch 0,
# eta outside (0, 1]) fails with the key's name before anything is loaded or written.
_LIMITS: dict[str, tuple[Any, str]] = {
    **{k: (lambda v: v > 0, "> 0") for k in ("lr", "reinforce_lr", "max_grad_norm", "lora_alpha")},
    **{
        k: (lambda v: v >= 0, ">= 0")
        for k in ("weight_decay", "warmup_epochs", "seed", "checkpoint_every", "hidden_layer", "alpha_tolerance")
    },
    **{
        k: (lambda v: v >= 1, ">= 1")
        for k in (
            "batch_size",
            "per_device_batch_size",
            "epochs",
            "max_steps",
            "momentum_every",
            "log_every",
            "lora_r",
            "reinforce_epochs",
            "reinforce_max_steps",
            "alternates_max_new_tokens",
        )
    },
    "max_length": (lambda v: v >= 2, ">= 2"),
    "eta": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "lora_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "alpha_p_min": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "dtype": (lambda v: v in ("float32", "bfloat16", "float16"), "one of float32, bfloat16, float16"),
    "mixed_precision": (lambda v: v in ("auto", "no", "bf16", "fp16"), "one of auto, no, bf16, fp16"),
    "on_nonfinite": (lambda v: v in ("stop", "skip"), "one of stop, skip"),
    "log_with": (
        lambda v: v in ("none", "tensorboard", "wandb", "mlflow", "all"),
        "one of none, tensorboard, wandb, mlflow, all",
    ),
    "collapse_action": (lambda v: v in ("warn", "stop"), "one of warn, stop"),
    "collapse_threshold": (lambda v: 0 < v <= 1, "in (0, 1]"),
    **{k: (lambda v: v >= 0, ">= 0") for k in ("max_skipped_steps", "collapse_probe_every", "repair_steps")},
    **{k: (lambda v: v >= 1, ">= 1") for k in ("collapse_probe_prompts", "collapse_probe_tokens")},
    # one size grammar for every writer (io.shards.parse_size): the bytes go to save_pretrained as a number
    "shard_size": (_is_size, "a size such as 2GB, 500MB or 512MiB"),
}


def _check_limit(obj: Any, key: str, value: Any) -> Any:
    """`value` if it is allowed for UnlearnConfig's `key` (None always is: it means the default)."""
    rule = _LIMITS.get(key) if isinstance(obj, UnlearnConfig) else None
    if rule is not None and value is not None and not rule[0](value):
        raise MoxError(f"config {key}: must be {rule[1]}, got {value!r}")
    return value


_TYPE_WORDS = {float: "a number", int: "an integer", bool: "true/false", str: "a string"}


def _coerce_union(value: Any, options: tuple, key: str) -> Any:
    """A value of one of several types, e.g. α: a number or "auto". Literal words match exactly; the other
    options are tried in order with their usual coercion; the error names every option."""
    words = [w for opt in options if typing.get_origin(opt) is typing.Literal for w in typing.get_args(opt)]
    if isinstance(value, str) and value in words:
        return value
    _finite(_number(value), key)  # NaN is a float, but never a setting
    types_ = [opt for opt in options if typing.get_origin(opt) is not typing.Literal and opt is not type(None)]
    for opt in types_:
        try:
            return _coerce(value, opt, key)
        except MoxError:
            pass
    expected = " or ".join(
        [_TYPE_WORDS.get(t, getattr(t, "__name__", str(t))) for t in types_] + [repr(w) for w in words]
    )
    raise MoxError(f"config {key}: expected {expected}, got {value!r}")


def _set(obj: Any, dotted: str, value: Any) -> None:
    """Set `a.b.c` on nested dataclasses / dicts; unknown keys list the valid ones."""
    head, _, rest = dotted.partition(".")
    if isinstance(obj, dict):
        if rest:
            _set(obj.setdefault(head, {}), rest, value)
        else:
            obj[head] = _finite(_number(_typed(value, None)), dotted)
        return
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if head not in fields:
        raise MoxError(f"unknown config key {dotted!r}; valid keys: {', '.join(fields)}")
    hints = typing.get_type_hints(type(obj))
    current = getattr(obj, head)
    if rest:
        if not (dataclasses.is_dataclass(current) or isinstance(current, dict)):
            raise MoxError(f"config key {head!r} has no sub-keys (got {dotted!r})")
        _set(current, rest, value)
        if dataclasses.is_dataclass(current):
            _recheck(obj, head, dotted)
    elif dataclasses.is_dataclass(current):
        value = _typed(value, None)
        if not isinstance(value, dict):
            raise MoxError(f"config {head}: expected a mapping, got {value!r}")
        for k, v in value.items():
            _set(current, str(k), v)  # YAML may key a mapping by a number ({0: ...})
        _recheck(obj, head, dotted)
    else:
        value = _typed(value, hints[head])
        setattr(obj, head, _check_limit(obj, head, _coerce(value, hints[head], dotted)))


def _recheck(obj: Any, head: str, key: str) -> None:
    """A nested settings object (the prompt format) rebuilt, so its own checks run on the new values."""
    try:
        setattr(obj, head, dataclasses.replace(getattr(obj, head)))
    except MoxError as e:
        raise MoxError(f"config {key}: {e}") from None


def apply_mapping(cfg: Any, mapping: dict[str, Any], prefix: str = "") -> None:
    for key, value in mapping.items():
        _set(cfg, f"{prefix}{key}", value)


class _Text(str):
    """The text of a `key=value` override, typed by the setting it lands on (`_typed`)."""


def _typed(value: Any, hint: Any) -> Any:
    """An override's text as its setting wants it: verbatim for a string setting (a prompt with a colon
    or braces, a regex with brackets; `null` still means None where None is allowed), read as YAML for
    every other one (so 1e-5, true, null, [1, 2] have their types). Other values pass unchanged."""
    if not isinstance(value, _Text):
        return value
    raw = str(value)
    if hint is not None and _unwrap_optional(hint) is str:
        return None if raw.strip() in ("null", "~") and _unwrap_optional(hint) is not hint else raw
    try:
        parsed = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        parsed = raw
    return _number(parsed)


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` split at the first `=`; the value stays text until `_set` knows its setting's type."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise MoxError(f"override {text!r} is not of the form key=value")
    return key.strip(), _Text(raw)


def run_selection(cfg: UnlearnConfig) -> SelectionSettings:
    """`alpha: auto`'s selection settings, from the run's alpha_grid / alpha_tolerance / alpha_p_min."""
    return SelectionSettings(tuple(cfg.alpha_grid), cfg.alpha_tolerance, cfg.alpha_p_min)


def flag_fields(cls: type = UnlearnConfig) -> list[dataclasses.Field]:
    """The settings that have a command-line flag (field metadata "flag": its help), in field order."""
    return [f for f in dataclasses.fields(cls) if "flag" in f.metadata]


def load_config(
    path: str | Path | None, overrides: list[str] = (), flags: dict[str, Any] | None = None, cls: type = UnlearnConfig
) -> Any:
    """Defaults, then the YAML file, then flags given on the command line, then key=value overrides."""
    cfg = cls()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise MoxError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(read_text(p, "config")) or {}
        except yaml.YAMLError as e:
            raise MoxError(f"{p}: invalid YAML: {first_line(e)}") from None
        if not isinstance(data, dict):
            raise MoxError(f"{p}: a config file must be a mapping of keys to values")
        apply_mapping(cfg, _from_run_folder(data, p))
    apply_mapping(cfg, {k: v for k, v in (flags or {}).items() if v is not None})
    apply_overrides(cfg, overrides)
    return cfg


def _from_run_folder(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """A run folder's own config.yaml names its inputs relative to that folder (io/portable.py): read as a
    config for a new run, they are resolved against it, so it works from any directory. Other files as they are."""
    from mox_unlearn.io.portable import marks_relative_paths, resolve_config

    if path.name != "config.yaml" or not marks_relative_paths(path.parent):
        return data
    return resolve_config(data, path.parent)


def apply_overrides(cfg: Any, overrides: list[str]) -> None:
    """Set each `key=value` (dotted keys reach into mappings, e.g. loss.beta=0.2)."""
    for text in overrides:
        _set(cfg, *parse_override(text))


def check_config(cfg: UnlearnConfig) -> UnlearnConfig:
    """Every setting checked as `_set` checks it (type, finiteness, allowed range), whatever built the
    config: YAML, key=value, or code (`UnlearnConfig(lr=-1)` passed to `unlearn`). Values are normalised
    as YAML input would be (an integer lr becomes a float). Returns `cfg`; a bad setting is a one-line
    error naming its key."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, hint = getattr(cfg, f.name), hints[f.name]
        if dataclasses.is_dataclass(hint):  # nested settings (the prompt format, extrapolation)
            if isinstance(value, Mapping):  # given as YAML gives it: set key by key on the defaults
                setattr(cfg, f.name, hint())
                _set(cfg, f.name, dict(value))
            elif not isinstance(value, hint):
                raise MoxError(f"config {f.name}: expected a mapping of its settings, got {value!r}")
            _recheck(cfg, f.name, f.name)
            continue
        setattr(cfg, f.name, _check_limit(cfg, f.name, _coerce(value, hint, f.name)))
    return cfg


def to_dict(cfg: UnlearnConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
