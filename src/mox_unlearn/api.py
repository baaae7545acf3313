"""The Python API: what a script or notebook needs, with the same checks and outputs as the `mox` command.

Re-exported from the package (``from mox_unlearn import unlearn, extrapolate, ...``); docs/api.md walks
through a complete script (unlearn → extrapolate several α → evaluate → pick), which the test suite runs.
Each function here is a thin, typed front to the module that does the work, so the command line and the
API cannot drift apart.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mox_unlearn import _API
from mox_unlearn.config import SelectionSettings, UnlearnConfig  # noqa: F401  (UnlearnConfig: re-exported)
from mox_unlearn.lora import load_forget_model  # noqa: F401  (re-exported, see __all__)
from mox_unlearn.train.run import unlearn  # noqa: F401  (re-exported, see __all__)

if TYPE_CHECKING:
    import torch

    from mox_unlearn.data.formatting import PromptFormat
    from mox_unlearn.variants import Variant

__all__ = list(_API)

PathLike = str | Path


def extrapolate(
    ref: PathLike | torch.nn.Module | Mapping[str, torch.Tensor],
    mem: PathLike | torch.nn.Module | Mapping[str, torch.Tensor],
    alpha: float | Sequence[float],
    out: PathLike | None = None,
    *,
    shard_size: str | int = "2GB",
    overwrite: bool = False,
    allow_negative: bool = False,
    variant: Variant | None = None,
    progress: bool = False,
) -> Any:
    """Eq. 8, θ_for = (1 + α)·θ_ref − α·θ_mem, on model folders, modules or state dicts.

    Args:
        ref: θ_ref: a model folder (safetensors), a `torch.nn.Module`, or a state dict.
        mem: θ_mem, of the same kind and with the same tensor names, shapes and dtypes.
        alpha: one α, or several (one pass over the inputs for all of them).
        out: folders only: where to write (OUT for one α, OUT/alpha-A/ for several); refused if it holds
            anything unless `overwrite`.
        shard_size: folders only: the largest output shard ("2GB", "512MiB", bytes).
        overwrite: folders only: replace a non-empty `out`.
        allow_negative: accept α <= 0 (interpolation; 0 copies θ_ref, −1 gives θ_mem).
        variant: folders only: which part of Δ = θ_ref − θ_mem moves (`mox_unlearn.variants.Variant`).
        progress: folders only: show a progress bar.

    Returns:
        For one α: the folder written, a new module (a copy of `ref` holding θ_for), or a new state dict;
        for several α: a list of those, in the order given. Inputs are never modified.
    """
    import torch

    from mox_unlearn.errors import MoxError
    from mox_unlearn.extrapolation import _check_alphas, extrapolate_folders, extrapolate_state_dict

    many = not isinstance(alpha, (int, float))
    alphas = _check_alphas(list(alpha) if many else [alpha], allow_negative)
    if isinstance(ref, (str, Path)) and isinstance(mem, (str, Path)):
        if out is None:
            raise MoxError("extrapolate: model folders need out=, the folder to write")
        folders = extrapolate_folders(
            Path(ref), Path(mem), alphas, Path(out), shard_size=shard_size, overwrite=overwrite,
            allow_negative=allow_negative, progress=progress, variant=variant,
        )  # fmt: skip
        return folders if many else folders[0]
    if out is not None or variant is not None:
        raise MoxError("extrapolate: out= and variant= apply to model folders; modules and state dicts stay in memory")
    if isinstance(ref, torch.nn.Module) and isinstance(mem, torch.nn.Module):
        ref_sd, mem_sd = ref.state_dict(), mem.state_dict()
        results = []
        for a in alphas:
            model = copy.deepcopy(ref)
            with torch.no_grad():
                model.load_state_dict(extrapolate_state_dict(ref_sd, mem_sd, a))
            results.append(model)
    elif isinstance(ref, Mapping) and isinstance(mem, Mapping):
        results = [extrapolate_state_dict(ref, mem, a) for a in alphas]
    else:
        raise MoxError(
            f"extrapolate: ref and mem must both be model folders, both modules or both state dicts "
            f"(got {type(ref).__name__} and {type(mem).__name__})"
        )
    return results if many else results[0]


def _model_and_tokenizer(model: Any, tokenizer: Any, dtype: str, fmt: PromptFormat | None = None) -> tuple:
    """A model given as a folder or hub id is loaded (on the GPU where there is one) with its tokenizer."""
    from mox_unlearn.errors import MoxError

    if isinstance(model, (str, Path)):
        from mox_unlearn.evaluate.run import load_eval_model

        loaded, tok = load_eval_model(str(model), dtype, fmt)
        return loaded, tokenizer or tok
    if tokenizer is None:
        raise MoxError("a model object needs its tokenizer: pass tokenizer=")
    return model, tokenizer


def evaluate_tofu(
    model: Any,
    tokenizer: Any = None,
    *,
    data: str | None = None,
    forget_split: str = "forget10",
    retain_result: PathLike | None = None,
    fmt: PromptFormat | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 200,
    max_length: int = 512,
    limit: int | None = None,
    dtype: str = "auto",
) -> dict[str, Any]:
    """Every TOFU metric of one model, as `mox eval --benchmark tofu` computes them (docs/metrics.md).

    Args:
        model: a model folder or hub id (loaded with its tokenizer), or a loaded causal LM.
        tokenizer: the tokenizer, when `model` is an object.
        data: a local folder in TOFU's layout (``<split>.jsonl``) or a hub id (default locuslab/TOFU).
        forget_split: forget01, forget05 or forget10.
        retain_result: the retrained model's result file (a `mox eval` JSON or open-unlearning's
            TOFU_EVAL.json), for Forget Quality; without it FQ is None.
        fmt: the prompt format (default: the chat template where the tokenizer has one).
        batch_size: sequences per forward pass.
        max_new_tokens: the length limit of the greedy answers ROUGE is computed on.
        max_length: the longest scored sequence, in tokens.
        limit: only the first N records of every split (quick checks).
        dtype: weights of a model loaded from a folder: auto, float32, bfloat16, float16.

    Returns:
        ``{"summary": {...}, "metrics": {...}, "convention": {...}}``: the summary holds forget_quality,
        model_utility, forget/retain ROUGE and PrivLeak; metrics every statistic with its per-item values.
    """
    from mox_unlearn.evaluate.benchmarks import TOFU_HUB_ID
    from mox_unlearn.evaluate.tofu import evaluate_tofu as run

    model, tokenizer = _model_and_tokenizer(model, tokenizer, dtype, fmt)
    return run(
        model, tokenizer, data=data or TOFU_HUB_ID, forget_split=forget_split,
        retain_result=None if retain_result is None else str(retain_result), fmt=fmt, batch_size=batch_size,
        max_new_tokens=max_new_tokens, max_length=max_length, limit=limit,
    )  # fmt: skip


def evaluate_muse(
    model: Any,
    tokenizer: Any = None,
    *,
    data: str | None = None,
    retain_result: str | float | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    dtype: str = "auto",
    max_length: int | None = None,
) -> dict[str, Any]:
    """Every MUSE-News metric of one model, as `mox eval --benchmark muse` computes them.

    Args:
        model: a model folder or hub id (loaded with its tokenizer), or a loaded causal LM.
        tokenizer: the tokenizer, when `model` is an object.
        data: a local folder in MUSE's layout or a hub id (default muse-bench/MUSE-News).
        retain_result: the retrained model's min-k AUC (a number) or its result file, for PrivLeak;
            without it PrivLeak is None, with the reason in ``metrics["privleak"]["reason"]``.
        batch_size: sequences per forward pass.
        limit: only the first N items of every set.
        dtype: weights of a model loaded from a folder.
        max_length: score the privleak texts up to this many tokens (default: the model's context window, as
            MUSE's own code; open-unlearning's MUSE config uses 2048).

    Returns:
        ``{"summary": {...}, "metrics": {...}}``: VerbMem and KnowMem on forget, KnowMem on retain, PrivLeak.
    """
    from mox_unlearn.evaluate.benchmarks import MUSE_HUB_ID
    from mox_unlearn.evaluate.muse import evaluate_muse as run

    model, tokenizer = _model_and_tokenizer(model, tokenizer, dtype)
    retain = None if retain_result is None else str(retain_result)
    return run(
        model,
        tokenizer,
        data=data or MUSE_HUB_ID,
        retain_result=retain,
        batch_size=batch_size,
        limit=limit,
        max_length=max_length,
    )


def select_alpha(
    ref: PathLike,
    mem: PathLike,
    *,
    forget: PathLike,
    holdout: PathLike,
    retain: PathLike,
    alphas: Sequence[float] | None = None,
    tolerance: float | None = None,
    p_min: float | None = None,
    score: str = "min_k",
    max_items: int | None = 100,
    fmt: PromptFormat | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 200,
    max_length: int = 512,
    dtype: str = "auto",
    work_dir: PathLike | None = None,
    variants: Sequence[Variant | Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Choose α without a retrained model (docs/select-alpha.md), as `mox select-alpha` does.

    Each θ_for(α) is extrapolated into a scratch folder, scored and deleted; the rule takes the largest α
    whose retain utility stays within `tolerance` of θ_ref's and whose forget set looks like the holdout
    set (KS p ≥ `p_min`), with the fallbacks the docs describe.

    Args:
        ref: θ_ref's model folder.
        mem: θ_mem's model folder (a run's OUT/memorized).
        forget: the forget set (a data spec: .json/.jsonl file, or hf:<id>[:<config>][:<split>]).
        holdout: data of the same kind that no model was trained on.
        retain: data whose utility must be kept.
        alphas: the α grid (default 0.5, 1, 2, 4, 8, 16).
        tolerance: the largest relative drop of retain probability / ROUGE (default 0.05).
        p_min: the KS p-value from which forget and holdout count as alike (default 0.05).
        score: the per-item membership score: min_k or truth_ratio.
        max_items: items scored per set (None: all).
        fmt: the prompt format.
        batch_size: sequences per forward pass.
        max_new_tokens: the longest generated answer (retain ROUGE).
        max_length: the longest scored sequence, in tokens.
        dtype: weights while scoring.
        work_dir: where the scratch models go (default: the system temp folder).
        variants: extrapolation variants to try beside plain MOX (`mox_unlearn.variants.Variant`, or its
            settings as a mapping, e.g. {"keep_fraction": 0.2}), as `mox select-alpha --variant`: one α
            curve each from the same θ_mem, and the choice among their picks (docs/select-alpha.md).

    Returns:
        The report `mox select-alpha` writes as JSON: "selection" (the chosen "alpha", its "branch" and
        "reason"), the scored "curve" (one row per α, θ_ref first) and the settings; with `variants`,
        the chosen curve's report with its "variant", every curve under "variants" and "variant_choice".
    """
    from mox_unlearn.alpha_selection.curve import alpha_curve, variant_curves
    from mox_unlearn.alpha_selection.scoring import load_selection_data
    from mox_unlearn.variants import Variant

    defaults = SelectionSettings()
    settings = SelectionSettings(
        grid=tuple(alphas) if alphas is not None else defaults.grid,
        tolerance=defaults.tolerance if tolerance is None else tolerance,
        p_min=defaults.p_min if p_min is None else p_min,
        score=score,
        max_items=max_items,
    )
    chosen = [
        v if isinstance(v, Variant) else Variant.from_settings(v, f"variants[{i}]") for i, v in enumerate(variants)
    ]
    kwargs = dict(
        fmt=fmt, batch_size=batch_size, max_new_tokens=max_new_tokens, max_length=max_length, dtype=dtype,
        work_dir=None if work_dir is None else str(work_dir),
    )  # fmt: skip
    if chosen:
        data = load_selection_data(str(forget), str(holdout), str(retain), score=score, max_items=max_items)
        return variant_curves(str(ref), str(mem), data, settings, chosen, **kwargs)
    return alpha_curve(str(ref), str(mem), str(forget), str(holdout), str(retain), settings, **kwargs)
