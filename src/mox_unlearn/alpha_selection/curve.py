"""The α curve: θ_ref as α = 0, then each α extrapolated into a scratch folder, scored and deleted;
and `mox unlearn --alpha auto`, which runs it on a finished θ_mem."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mox_unlearn.alpha_selection.report import write_selection
from mox_unlearn.alpha_selection.rule import (
    MIN_K,
    CurvePoint,
    choose_variant,
    indistinguishable,
    relative_drop,
    select_alpha,
    utility_ok,
)
from mox_unlearn.alpha_selection.scoring import ScoreSettings, check_settings, load_selection_data, score_folder
from mox_unlearn.config import SelectionSettings, run_selection
from mox_unlearn.data import PromptFormat, RecordSet
from mox_unlearn.errors import MoxError
from mox_unlearn.io.portable import portable

# ----------------------------------------------------------------------------- the curve


def check_model_pair(ref: Path, mem: Path) -> None:
    """Both HF safetensors folders with the same tensors: checked before any scoring."""
    from mox_unlearn.io.loading import check_model_folder, check_same_model_kind
    from mox_unlearn.io.reading import check_same_tensors, read_tensor_infos

    check_model_folder(Path(ref), role="--ref", contents=False, hub=False)
    check_model_folder(Path(mem), role="--mem", contents=False, hub=False)
    check_same_model_kind(Path(ref), Path(mem))
    check_same_tensors(read_tensor_infos(Path(ref)), read_tensor_infos(Path(mem)))


def _utility_measures(row: Mapping[str, Any]) -> dict[str, float | None]:
    return {"probability": row["retain_probability"], "rouge": row["retain_rouge"]}


def point_from_scores(alpha: float, scores: Mapping[str, Any], reference: Mapping[str, Any]) -> CurvePoint:
    """A curve point: drops of the measures θ_ref has (ROUGE is absent for raw-text retain sets)."""
    ref = _utility_measures(reference)
    now = _utility_measures(scores)
    drops = {k: relative_drop(ref[k], now[k]) for k in ref if ref[k] is not None}
    return CurvePoint(alpha=float(alpha), drops=drops, ks_p=scores["ks_p"])


def _score_extrapolated(
    ref_dir, mem_dir, alpha: float, work_dir, score, progress: bool, variant=None
) -> dict[str, Any]:
    """θ_for(α) (with an extrapolation `variant`) extrapolated into a scratch folder under `work_dir`,
    scored with `score(folder)`, deleted."""
    from mox_unlearn.extrapolation import alpha_label, extrapolate_folders

    scratch = Path(tempfile.mkdtemp(prefix=f".alpha-{alpha_label(alpha)}-", dir=work_dir))
    try:
        folder = extrapolate_folders(
            Path(ref_dir), Path(mem_dir), [alpha], scratch / "model", progress=progress, variant=variant
        )[0]
        return score(folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def alpha_curve(
    ref_dir: str | Path,
    mem_dir: str | Path | None,
    forget: str | Path | RecordSet,
    holdout: str | Path | RecordSet,
    retain: str | Path | RecordSet,
    selection: SelectionSettings | None = None,
    *,
    k: float = MIN_K,
    fmt: PromptFormat | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 200,
    max_length: int = 512,
    dtype: str = "auto",
    work_dir: str | Path | None = None,
    models: Mapping[float, str | Path] | None = None,
    progress: bool = False,
    variant: Any = None,
    reference: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score θ_ref (α = 0) and θ_for(α) for each α, apply `select_alpha`, return the JSON-able report.
    `variant`: extrapolate with it (variants.py); `reference`: θ_ref's scores when already measured.

    Each θ_for is extrapolated from `mem_dir` into a scratch folder under `work_dir` (default: the
    system temp folder), scored and deleted before the next, so disk holds one extra model at a time.
    `models` (α -> folder) scores existing extrapolations instead (then `mem_dir` is only recorded).
    """
    from mox_unlearn.io.loading import check_fits, load_tokenizer

    selection = selection or SelectionSettings()
    grid = check_settings(selection)
    tolerance, p_min, score, max_items = selection.tolerance, selection.p_min, selection.score, selection.max_items
    data = load_selection_data(forget, holdout, retain, score=score, max_items=max_items)
    if models is None:
        if mem_dir is None:
            raise MoxError("alpha_curve needs mem_dir (θ_mem) or ready models")
        check_model_pair(Path(ref_dir), Path(mem_dir))
    elif set(map(float, models)) != set(grid):
        raise MoxError("models must give one folder for every α of the grid")
    s = ScoreSettings(
        score=score,
        k=k,
        fmt=fmt or PromptFormat(),
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        max_length=max_length,
        desc=progress,
    )
    say = print if progress else (lambda *a, **kw: None)
    tok = load_tokenizer(str(ref_dir))
    check_fits(str(ref_dir), tok)
    if reference is None:
        say(f"select-alpha: scoring θ_ref ({ref_dir})", flush=True)
        reference = score_folder(ref_dir, tok, data, s, dtype)
    label = f" [{variant.label()}]" if variant is not None and not variant.plain else ""
    ready = None if models is None else {float(a): p for a, p in models.items()}
    rows = []
    for i, alpha in enumerate(grid, 1):
        say(f"select-alpha: α = {alpha:g}{label} ({i}/{len(grid)})", flush=True)
        if ready is not None:
            scores = score_folder(ready[alpha], tok, data, s, dtype)
        else:
            scores = _score_extrapolated(
                ref_dir, mem_dir, alpha, work_dir, lambda f: score_folder(f, tok, data, s, dtype), progress, variant
            )
        rows.append({"alpha": alpha, **scores})
    points = [point_from_scores(r["alpha"], r, reference) for r in rows]
    selection = select_alpha(points, tolerance, p_min)
    for r, p in zip(rows, points):
        r.update(
            drops=dict(p.drops),
            utility_drop=p.utility_drop,
            utility_ok=utility_ok(p, tolerance),
            indistinguishable=indistinguishable(p, p_min),
            chosen=p.alpha == selection.alpha,
        )
    report = _report(selection, reference, rows, grid, data, ref_dir, mem_dir, s, tolerance, p_min, max_items, dtype)
    report["variant"] = {} if variant is None else variant.fields()
    return report


def variant_curves(ref_dir, mem_dir, data, selection: SelectionSettings, variants, **kwargs) -> dict[str, Any]:
    """`alpha_curve` for plain MOX and each of `variants` (θ_ref scored once), and the choice among their
    picks (rule.choose_variant): the report of the chosen curve, with every curve under "variants" and the
    chosen variant's settings under "variant"."""
    from mox_unlearn.variants import Variant

    reports = []
    for variant in [Variant(), *variants]:
        reference = reports[0]["reference"] if reports else None
        if reference is not None:
            reference = {k: v for k, v in reference.items() if k != "alpha"}
        reports.append(
            alpha_curve(
                ref_dir,
                mem_dir,
                data.forget,
                data.holdout,
                data.retain,
                selection,
                variant=variant,
                reference=reference,
                **kwargs,
            )
        )
    at_pick = [next(row for row in r["curve"] if row["chosen"]) for r in reports]
    picks = [
        (r["selection"]["branch"], row["ks_p"], row["ks_stat"], row["forget_minus_holdout_median"])
        for r, row in zip(reports, at_pick)
    ]
    labels = [Variant(**r["variant"]).label() or "plain" for r in reports]
    best = choose_variant(picks)
    chosen = dict(reports[best])
    chosen["variants"] = [
        {
            "variant": r["variant"],
            "label": label,
            "alpha": r["selection"]["alpha"],
            "branch": branch,
            "ks_p": p,
            "ks_stat": stat,
            "forget_minus_holdout_median": gap,
            "curve": r["curve"],
        }
        for r, label, (branch, p, stat, gap) in zip(reports, labels, picks)
    ]
    chosen["variant_choice"] = (
        f"{labels[best]} of {len(picks)} variants: the pick that passed more tests, then forget most like holdout "
        "(KS p, then KS statistic, then |median gap|)"
    )
    return chosen


def _report(selection, reference, rows, grid, data, ref_dir, mem_dir, s, tolerance, p_min, max_items, dtype) -> dict:
    """alpha_curve's JSON-able report."""
    return {
        "selection": selection.to_dict(),
        "reference": {"alpha": 0.0, **reference},
        "curve": rows,
        "settings": {
            "alphas": grid,
            "tolerance": tolerance,
            "p_min": p_min,
            "score": s.score,
            "k": s.k if s.score == "min_k" else None,
            "max_items": max_items,
            "max_new_tokens": s.max_new_tokens,
            "max_length": s.max_length,
            "dtype": dtype,
        },
        "models": {"ref": str(ref_dir), "mem": None if mem_dir is None else str(mem_dir)},
        "data": {
            name: {"source": rs.source, "kind": rs.kind, "items": len(rs)}
            for name, rs in (("forget", data.forget), ("holdout", data.holdout), ("retain", data.retain))
        },
    }


# ----------------------------------------------------------------------------- `mox unlearn --alpha auto`


def check_auto_config(cfg, method) -> None:
    """`alpha: auto` refusals, before anything is loaded or trained."""
    if not method.extrapolate:
        raise MoxError(f"alpha=auto picks the extrapolation strength; method {method.name!r} does not extrapolate")
    if cfg.momentum:
        raise MoxError(
            "alpha=auto does not combine with momentum (its average folds θ_for during training, "
            "before α could be chosen); give a number for --alpha"
        )
    if not cfg.holdout:
        raise MoxError("alpha=auto needs a holdout set like the forget set that the model never saw (holdout=SPEC)")
    if not cfg.retain:
        raise MoxError("alpha=auto needs a retain set (--retain) to measure utility")
    check_settings(run_selection(cfg))
    auto_variants(cfg)


def select_for_run(cfg, out: Path, model, ref, tokenizer, save_model) -> tuple[float, dict[str, Any]]:
    """Choose α for a finished training run: write OUT/alpha-selection.{json,png}, return (α, summary).

    Uses OUT/memorized as θ_mem when it was written, and cfg.model as θ_ref when it is a local folder of
    the same tensors; otherwise saves the in-memory model into a scratch folder (removed afterwards).
    `save_model(model, tokenizer, dest)` writes an HF folder.
    """
    out = Path(out)
    scratch = out / ".alpha-selection-scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        mem_dir = out / "memorized"
        if not (mem_dir / "config.json").is_file():
            mem_dir = scratch / "memorized"
            save_model(model, tokenizer, mem_dir)
        ref_dir = Path(cfg.model)
        try:
            check_model_pair(ref_dir, mem_dir)  # a hub id, .bin weights or another dtype cannot be extrapolated
        except MoxError:
            ref_dir = scratch / "reference"
            save_model(ref, tokenizer, ref_dir)
        settings = dict(
            fmt=cfg.prompt,
            batch_size=cfg.per_device_batch_size,
            max_new_tokens=min(200, cfg.max_length),
            max_length=cfg.max_length,
            dtype=cfg.dtype,
            work_dir=scratch,
            progress=True,
        )
        variants, selection = auto_variants(cfg), run_selection(cfg)
        if variants:
            data = load_selection_data(
                cfg.forget, cfg.holdout, cfg.retain, score=selection.score, max_items=selection.max_items
            )
            report = variant_curves(ref_dir, mem_dir, data, selection, variants, **settings)
        else:
            report = alpha_curve(
                ref_dir, mem_dir, cfg.forget, cfg.holdout, cfg.retain, selection, variant=cfg.extrapolation, **settings
            )
        report["models"] = {"ref": cfg.model, "mem": str(out / "memorized") if mem_dir.parent == out else None}
        files = write_selection(portable(report, out), out)  # local paths relative to the run folder
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    sel = report["selection"]
    summary = {
        "alpha": sel["alpha"],
        "branch": sel["branch"],
        "utility_ok": sel["utility_ok"],
        "forget_indistinguishable": sel["forget_indistinguishable"],
        "reason": sel["reason"],
        "grid": report["settings"]["alphas"],
        "report": str(files[0]),
        "variant": report.get("variant") or {},
    }
    return sel["alpha"], summary


def auto_variants(cfg) -> list:
    """`alpha_variants` as Variants (alpha: auto then chooses among plain MOX and these); refused in one line
    when they cannot apply: without alpha=auto, or beside a non-plain `extrapolation`."""
    from mox_unlearn.variants import Variant

    if not cfg.alpha_variants:
        return []
    if cfg.alpha != "auto":
        raise MoxError("alpha_variants are tried by alpha=auto; with a fixed α set extrapolation.* instead")
    if not cfg.extrapolation.plain:
        raise MoxError("give either extrapolation.* or alpha_variants (alpha=auto tries plain MOX and each of them)")
    return [Variant.from_settings(v, f"alpha_variants[{i}]") for i, v in enumerate(cfg.alpha_variants)]
