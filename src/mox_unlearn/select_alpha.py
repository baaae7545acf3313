"""Choosing MOX's α without the retrained model that Forget Quality needs (`mox select-alpha`, `--alpha auto`).

α decides everything about a MOX run, and the benchmark's yardstick (FQ: a KS test against a model
retrained without the forget set) needs exactly the model a practitioner does not have. Two signals
need no retraining, and α is cheap to vary (one θ_mem, one extrapolation per α):

  utility   retain answer probability and ROUGE-L recall of greedy answers, each relative to θ_ref's
            own value: "drop" = (ref − value) / ref, so 0.05 means 5 % worse than before unlearning;
  forget    a two-sample KS test of a per-item score on the forget set against a holdout set of the
            same kind that no model was trained on (min-k % probability by default, TOFU's truth ratio
            as an option). A large p-value means the forget set now looks like data the model never saw,
            which is what a retrained model shows too.

The rule (`select_alpha`, pure): the largest α whose worst utility drop is ≤ tolerance and whose KS
p-value is ≥ p_min. Fallbacks, flagged in the result:
  - no α passes both: the largest α within the utility tolerance (forget_indistinguishable=False),
    since it forgets most among those that keep the model useful (α that pass the forget test only
    beyond the tolerance are named in the reason);
  - no α keeps utility: the smallest α of the grid (utility_ok=False), the least damage on offer.
Boundary values pass (drop == tolerance, p == p_min); NaN never passes a test; the curve's order does
not matter and non-monotone curves are taken at face value (the largest passing α wins even when a
smaller one failed).

`alpha_curve` measures the curve (θ_ref as α = 0 first, then each α extrapolated into a scratch folder,
scored, deleted), applies the rule and returns a JSON-able report; `write_selection` writes it with a PNG.
"""

from __future__ import annotations

import gc
import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mox_unlearn.config import ALPHA_GRID, SELECT_P_MIN, SELECT_TOLERANCE
from mox_unlearn.data import PromptFormat, RecordSet, encode_records, load_records
from mox_unlearn.errors import MoxError

SCORES = ("min_k", "truth_ratio")
DEFAULT_GRID = ALPHA_GRID
MIN_K = 0.4  # MUSE's reported PrivLeak uses Min-40 %

BOTH = "both"  # α passes utility and forget tests
UTILITY_ONLY = "utility_only"  # fallback: no α makes forget ~ holdout
SMALLEST = "smallest"  # fallback: no α keeps retain utility


# ----------------------------------------------------------------------------- the rule (pure)


@dataclass(frozen=True)
class CurvePoint:
    """One α of the curve: relative retain-utility drops against θ_ref and the forget-vs-holdout KS p-value."""

    alpha: float
    drops: Mapping[str, float]  # measure -> (ref − value) / ref; negative = better than θ_ref
    ks_p: float

    @property
    def utility_drop(self) -> float:
        """The worst measure's drop (NaN if any is NaN: an unknown utility never passes)."""
        values = list(self.drops.values())
        if any(math.isnan(v) for v in values):
            return math.nan
        return max(values)


@dataclass(frozen=True)
class Selection:
    """The chosen α, which branch of the rule chose it, and how it fared on each test."""

    alpha: float
    branch: str  # BOTH, UTILITY_ONLY or SMALLEST
    utility_ok: bool
    forget_indistinguishable: bool
    passing: tuple[float, ...]  # α passing both tests, ascending
    within_tolerance: tuple[float, ...]  # α passing the utility test, ascending
    alike: tuple[float, ...]  # α passing the forget-vs-holdout test, ascending
    tolerance: float
    p_min: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passing"], d["within_tolerance"], d["alike"] = (
            list(self.passing),
            list(self.within_tolerance),
            list(self.alike),
        )
        return d


def utility_ok(point: CurvePoint, tolerance: float) -> bool:
    """Worst relative drop ≤ tolerance (NaN fails)."""
    drop = point.utility_drop
    return not math.isnan(drop) and drop <= tolerance


def indistinguishable(point: CurvePoint, p_min: float) -> bool:
    """KS p ≥ p_min: the test cannot tell forget from holdout at level p_min (NaN fails)."""
    return not math.isnan(point.ks_p) and point.ks_p >= p_min


def check_rule_settings(tolerance: float, p_min: float) -> None:
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise MoxError(f"tolerance must be a finite number >= 0 (0.05 = 5 % relative drop), got {tolerance!r}")
    if not (isinstance(p_min, (int, float)) and 0.0 <= p_min <= 1.0):
        raise MoxError(f"p_min must be a p-value in [0, 1], got {p_min!r}")


def _fmt_alpha(a: float) -> str:
    return f"{a:g}"


def select_alpha(
    curve: Sequence[CurvePoint], tolerance: float = SELECT_TOLERANCE, p_min: float = SELECT_P_MIN
) -> Selection:
    """Apply the selection rule (see the module docstring) to a curve of points with distinct α > 0."""
    check_rule_settings(tolerance, p_min)
    if not curve:
        raise MoxError("the α curve is empty")
    alphas = [p.alpha for p in curve]
    bad = [a for a in alphas if not (isinstance(a, (int, float)) and math.isfinite(a) and a > 0)]
    if bad:
        raise MoxError(f"curve α must be finite and > 0 (θ_ref, α = 0, is the baseline), got {bad[0]!r}")
    if len(set(alphas)) != len(alphas):
        dupes = sorted({a for a in alphas if alphas.count(a) > 1})
        raise MoxError(f"duplicate α in the curve: {', '.join(map(_fmt_alpha, dupes))}")
    if any(not p.drops for p in curve):
        raise MoxError("every curve point needs at least one utility measure")
    points = sorted(curve, key=lambda p: p.alpha)
    within = [p for p in points if utility_ok(p, tolerance)]
    alike = [p for p in points if indistinguishable(p, p_min)]
    passing = [p for p in within if indistinguishable(p, p_min)]
    if passing:
        chosen, branch = passing[-1], BOTH
        reason = (
            f"largest α with retain utility within {tolerance:.0%} of θ_ref and forget ~ holdout (KS p >= {p_min:g})"
        )
    elif within:
        chosen, branch = within[-1], UTILITY_ONLY
        beyond = (
            f"; forget ~ holdout only at α = {', '.join(_fmt_alpha(p.alpha) for p in alike)}, beyond the tolerance"
            if alike
            else ""
        )
        reason = (
            f"no α within {tolerance:.0%} retain-utility drop makes forget ~ holdout (KS p >= {p_min:g}); "
            f"largest α within the tolerance{beyond}"
        )
    else:
        chosen, branch = points[0], SMALLEST
        reason = f"no α keeps retain utility within {tolerance:.0%} of θ_ref; smallest α of the grid"
    return Selection(
        alpha=float(chosen.alpha),
        branch=branch,
        utility_ok=utility_ok(chosen, tolerance),
        forget_indistinguishable=indistinguishable(chosen, p_min),
        passing=tuple(float(p.alpha) for p in passing),
        within_tolerance=tuple(float(p.alpha) for p in within),
        alike=tuple(float(p.alpha) for p in alike),
        tolerance=float(tolerance),
        p_min=float(p_min),
        reason=reason,
    )


def relative_drop(ref: float | None, value: float | None) -> float:
    """(ref − value) / ref. θ_ref at 0 cannot drop further: 0 unless value < ref (then +inf); NaN in, NaN out."""
    if ref is None or value is None or math.isnan(ref) or math.isnan(value):
        return math.nan
    if ref <= 0:
        return 0.0 if value >= ref else math.inf
    return (ref - value) / ref


# ----------------------------------------------------------------------------- settings and data


def check_grid(values: Sequence[Any], name: str = "α grid", hint: str = " (extrapolation needs α > 0)") -> list[float]:
    """A valid grid of positive numbers, ascending: non-empty, numbers, finite, > 0, no duplicates. `name`
    starts every error message (the frontier checks its learning-rate grids with it too)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise MoxError(f"{name} must be a list of numbers, got {values!r}")
    numbers = []
    for a in values:
        try:
            if isinstance(a, bool):
                raise ValueError
            numbers.append(float(a))
        except (TypeError, ValueError):
            raise MoxError(f"{name}: {a!r} is not a number") from None
    if not numbers:
        raise MoxError(f"{name} is empty")
    for a in numbers:
        if not math.isfinite(a) or a <= 0:
            raise MoxError(f"{name}: {a:g} is not a finite number > 0{hint}")
    if len(set(numbers)) != len(numbers):
        dupes = sorted({a for a in numbers if numbers.count(a) > 1})
        raise MoxError(f"{name}: duplicate values {', '.join(map(_fmt_alpha, dupes))}")
    return sorted(numbers)


def check_settings(
    alphas: Sequence[Any], tolerance: float, p_min: float, score: str, max_items: int | None
) -> list[float]:
    """Every setting of a selection, checked before any model is loaded; returns the sorted grid."""
    grid = check_grid(alphas)
    check_rule_settings(tolerance, p_min)
    if score not in SCORES:
        raise MoxError(f"unknown score {score!r}; valid: {', '.join(SCORES)}")
    if max_items is not None and (isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1):
        raise MoxError(f"max_items must be an integer >= 1, got {max_items!r}")
    return grid


@dataclass(frozen=True)
class SelectionData:
    forget: RecordSet
    holdout: RecordSet
    retain: RecordSet  # already capped to max_items


def _as_records(data: str | Path | RecordSet, name: str) -> RecordSet:
    return data if isinstance(data, RecordSet) else load_records(str(data), name=name)


def spread_sample(rs: RecordSet, max_items: int | None) -> RecordSet:
    """At most max_items records spread evenly over the set (deterministic; a prefix would cover only the
    first few authors of an author-ordered set like TOFU's)."""
    if max_items is None or len(rs) <= max_items:
        return rs
    idx = np.unique(np.linspace(0, len(rs) - 1, max_items).round().astype(int))
    return RecordSet(rs.kind, [rs.records[i] for i in idx], rs.source)


def _check_perturbed(rs: RecordSet, name: str) -> None:
    if rs.kind != "qa":
        raise MoxError(f"score truth_ratio needs question/answer records; the {name} set ({rs.source}) is raw text")
    for i, r in enumerate(rs.records):
        pert = r.get("perturbed_answer")
        if not isinstance(pert, list) or not pert or not all(isinstance(a, str) for a in pert):
            raise MoxError(
                f"score truth_ratio needs a perturbed_answer list in every {name} record; "
                f"{rs.source}[{i}] has none (use score min_k)"
            )


def load_selection_data(
    forget: str | Path | RecordSet,
    holdout: str | Path | RecordSet,
    retain: str | Path | RecordSet,
    *,
    score: str = "min_k",
    max_items: int | None = 100,
) -> SelectionData:
    """Read and check the three sets (before any model is loaded, so bad data fails fast)."""
    f, h, r = _as_records(forget, "forget"), _as_records(holdout, "holdout"), _as_records(retain, "retain")
    if f.kind != h.kind:
        raise MoxError(
            f"forget ({f.kind}) and holdout ({h.kind}) sets must be of the same kind to compare their scores"
        )
    if score == "truth_ratio":
        _check_perturbed(f, "forget")
        _check_perturbed(h, "holdout")
    return SelectionData(f, h, spread_sample(r, max_items))


# ----------------------------------------------------------------------------- scoring one model


@dataclass
class ScoreSettings:
    score: str = "min_k"
    k: float = MIN_K
    fmt: PromptFormat = field(default_factory=PromptFormat)
    batch_size: int = 16
    max_new_tokens: int = 200
    max_length: int = 512
    desc: bool = False  # progress bars


def _nan_safe(fn, *args, **kw) -> float:
    """A statistic of model outputs, NaN where the outputs are not finite (an extreme α can overflow)."""
    try:
        value = float(fn(*args, **kw))
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def _membership_scores(model, tok, rs: RecordSet, s: ScoreSettings, name: str) -> np.ndarray:
    """Per-item scores whose forget-vs-holdout distributions are compared (higher = less likely to the model)."""
    from mox_unlearn.evaluate import metrics as M
    from mox_unlearn.evaluate.stats import answer_stats, answer_stats_multi, score_examples

    kw = dict(batch_size=s.batch_size, desc=f"{name}: answers" if s.desc else None)
    if s.score == "min_k":
        stats = score_examples(
            model, encode_records(tok, rs, s.fmt, s.max_length), tok.pad_token_id, eos_id=tok.eos_token_id, **kw
        )
        # EOS dropped, as in TOFU's min-k MIA (evaluate/tofu.py) and open-unlearning
        return np.array([_nan_safe(M.min_k_score, st.content_logps, s.k) for st in stats])
    questions = [r["question"] for r in rs.records]
    true = [
        r.get("paraphrased_answer") if isinstance(r.get("paraphrased_answer"), str) else r["answer"] for r in rs.records
    ]
    t = answer_stats(model, tok, questions, true, s.fmt, max_length=s.max_length, **kw)
    p = answer_stats_multi(
        model, tok, questions, [r["perturbed_answer"] for r in rs.records], s.fmt, max_length=s.max_length, **kw
    )
    # R = P_pert / P_true per item, as TOFU's truth ratio (exp of NLL differences)
    return np.array(
        [
            _nan_safe(lambda a, b: M.truth_ratio([a], [b])[0], ts.nll_avg, [x.nll_avg for x in ps])
            for ts, ps in zip(t, p)
        ]
    )


def ks_test(forget: np.ndarray, holdout: np.ndarray) -> tuple[float, float]:
    """(KS statistic, two-sided p-value) of forget vs holdout scores; NaN where a score is not finite."""
    from scipy.stats import ks_2samp

    if not (np.isfinite(forget).all() and np.isfinite(holdout).all()):
        return math.nan, math.nan
    res = ks_2samp(forget, holdout)
    return float(res.statistic), float(res.pvalue)


def score_model(model, tok, data: SelectionData, s: ScoreSettings) -> dict[str, Any]:
    """Retain utility and the forget-vs-holdout KS test of one model."""
    from mox_unlearn.evaluate import metrics as M
    from mox_unlearn.evaluate.stats import generate_answers, score_examples

    desc = (lambda text: text) if s.desc else (lambda text: None)
    stats = score_examples(
        model,
        encode_records(tok, data.retain, s.fmt, s.max_length),
        tok.pad_token_id,
        batch_size=s.batch_size,
        desc=desc("retain: answers"),
    )
    prob = np.array([math.exp(-st.nll_avg) if math.isfinite(st.nll_avg) else math.nan for st in stats])
    out: dict[str, Any] = {
        "retain_probability": float(prob.mean()) if np.isfinite(prob).all() else math.nan,
        "retain_rouge": None,
    }
    if data.retain.kind == "qa":
        questions = [r["question"] for r in data.retain.records]
        answers = [r["answer"] for r in data.retain.records]
        generated = generate_answers(
            model,
            tok,
            questions,
            s.fmt,
            max_new_tokens=s.max_new_tokens,
            batch_size=s.batch_size,
            desc=desc("retain: generate"),
        )
        out["retain_rouge"] = float(M.rouge_l(generated, answers, kind="recall").mean())
    f = _membership_scores(model, tok, data.forget, s, "forget")
    h = _membership_scores(model, tok, data.holdout, s, "holdout")
    out["ks_stat"], out["ks_p"] = ks_test(f, h)
    # which side of holdout the forget set lies on: < 0 still remembered, > 0 pushed past unseen data
    out["forget_minus_holdout_median"] = (
        float(np.median(f) - np.median(h)) if np.isfinite(f).all() and np.isfinite(h).all() else math.nan
    )
    return out


def _score_folder(path: str | Path, tok, data: SelectionData, s: ScoreSettings, dtype: str) -> dict[str, Any]:
    from mox_unlearn.evaluate.run import load_eval_model

    model, _ = load_eval_model(str(path), dtype)
    try:
        return score_model(model, tok, data, s)
    finally:
        del model
        gc.collect()
        _empty_device_cache()


def _empty_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- the curve


def check_model_pair(ref: Path, mem: Path) -> None:
    """Both HF safetensors folders with the same tensors: checked before any scoring."""
    from mox_unlearn.extrapolate import _check_compatible, _check_model_dir
    from mox_unlearn.io.loading import check_same_model_kind
    from mox_unlearn.io.reading import read_tensor_infos

    _check_model_dir(Path(ref), "--ref")
    _check_model_dir(Path(mem), "--mem")
    check_same_model_kind(Path(ref), Path(mem))
    _check_compatible(read_tensor_infos(Path(ref)), read_tensor_infos(Path(mem)))


def _utility_measures(row: Mapping[str, Any]) -> dict[str, float | None]:
    return {"probability": row["retain_probability"], "rouge": row["retain_rouge"]}


def point_from_scores(alpha: float, scores: Mapping[str, Any], reference: Mapping[str, Any]) -> CurvePoint:
    """A curve point: drops of the measures θ_ref has (ROUGE is absent for raw-text retain sets)."""
    ref = _utility_measures(reference)
    now = _utility_measures(scores)
    drops = {k: relative_drop(ref[k], now[k]) for k in ref if ref[k] is not None}
    return CurvePoint(alpha=float(alpha), drops=drops, ks_p=scores["ks_p"])


def alpha_curve(
    ref_dir: str | Path,
    mem_dir: str | Path | None,
    forget: str | Path | RecordSet,
    holdout: str | Path | RecordSet,
    retain: str | Path | RecordSet,
    alphas: Sequence[float] = DEFAULT_GRID,
    *,
    tolerance: float = SELECT_TOLERANCE,
    p_min: float = SELECT_P_MIN,
    score: str = "min_k",
    max_items: int | None = 100,
    k: float = MIN_K,
    fmt: PromptFormat | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 200,
    max_length: int = 512,
    dtype: str = "auto",
    work_dir: str | Path | None = None,
    models: Mapping[float, str | Path] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score θ_ref (α = 0) and θ_for(α) for each α, apply `select_alpha`, return the JSON-able report.

    Each θ_for is extrapolated from `mem_dir` into a scratch folder under `work_dir` (default: the
    system temp folder), scored and deleted before the next, so disk holds one extra model at a time.
    `models` (α -> folder) scores existing extrapolations instead (then `mem_dir` is only recorded).
    """
    from mox_unlearn.extrapolate import alpha_label, extrapolate_folders
    from mox_unlearn.io.loading import load_tokenizer

    grid = check_settings(list(alphas), tolerance, p_min, score, max_items)
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
    say(f"select-alpha: scoring θ_ref ({ref_dir})", flush=True)
    reference = _score_folder(ref_dir, tok, data, s, dtype)
    rows = []
    for i, alpha in enumerate(grid, 1):
        say(f"select-alpha: α = {alpha:g} ({i}/{len(grid)})", flush=True)
        if models is not None:
            scores = _score_folder({float(a): p for a, p in models.items()}[alpha], tok, data, s, dtype)
        else:
            scratch = Path(tempfile.mkdtemp(prefix=f".alpha-{alpha_label(alpha)}-", dir=work_dir))
            try:
                folder = extrapolate_folders(
                    Path(ref_dir), Path(mem_dir), [alpha], scratch / "model", progress=progress
                )[0]
                scores = _score_folder(folder, tok, data, s, dtype)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
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
    return {
        "selection": selection.to_dict(),
        "reference": {"alpha": 0.0, **reference},
        "curve": rows,
        "settings": {
            "alphas": grid,
            "tolerance": tolerance,
            "p_min": p_min,
            "score": score,
            "k": k if score == "min_k" else None,
            "max_items": max_items,
            "max_new_tokens": max_new_tokens,
            "max_length": max_length,
            "dtype": dtype,
        },
        "models": {"ref": str(ref_dir), "mem": None if mem_dir is None else str(mem_dir)},
        "data": {
            name: {"source": rs.source, "kind": rs.kind, "items": len(rs)}
            for name, rs in (("forget", data.forget), ("holdout", data.holdout), ("retain", data.retain))
        },
    }


# ----------------------------------------------------------------------------- output


def _json_safe(obj: Any) -> Any:
    """NaN / inf become null: JSON has no NaN, and readers of the report should not need a lenient parser."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_selection(report: Mapping[str, Any], folder: str | Path, stem: str = "alpha-selection") -> list[Path]:
    """`stem`.json (the report) and `stem`.png (the curve) in `folder`."""
    import json

    from mox_unlearn.io.atomic import write_text_atomic
    from mox_unlearn.redact import redact

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / f"{stem}.json", json.dumps(redact(_json_safe(report)), indent=1) + "\n")
    return [folder / f"{stem}.json", plot_curve(report, folder / f"{stem}.png")]


def _nan(x: float | None) -> float:
    return math.nan if x is None else float(x)


def plot_curve(report: Mapping[str, Any], path: Path, fq: Mapping[float, float | None] | None = None) -> Path:
    """Utility drop and KS p against α, with the tolerance / p_min lines and the chosen α; true FQ when given."""
    from mox_unlearn.report import figure, log_value, save_figure

    sel, rows = report["selection"], report["curve"]
    xs = [r["alpha"] for r in rows]
    fig, axes = figure(1, 3 if fq else 2, size=(13.5 if fq else 9.5, 3.8))
    ax = axes[0][0]
    for measure in rows[0]["drops"]:
        ax.plot(xs, [100 * _nan(r["drops"].get(measure)) for r in rows], "o-", label=f"retain {measure}")
    ax.axhline(100 * sel["tolerance"], color="tab:red", ls="--", lw=1, label=f"tolerance {sel['tolerance']:.0%}")
    ax.set_ylabel("relative drop vs θ_ref (%)")
    ax.set_title("Retain utility")
    ax = axes[0][1]
    ax.plot(xs, [log_value(_nan(r["ks_p"])) for r in rows], "o-", color="tab:green", label="KS p, forget vs holdout")
    ax.axhline(sel["p_min"], color="tab:red", ls="--", lw=1, label=f"p_min {sel['p_min']:g}")
    ax.axhline(log_value(_nan(report["reference"]["ks_p"])), color="gray", ls=":", lw=1, label="θ_ref")
    ax.set_yscale("log")
    ax.set_ylabel("KS p-value (log)")
    ax.set_title(f"Forget vs holdout ({report['settings']['score']})")
    if fq:
        ax = axes[0][2]
        ax.plot(xs, [log_value(fq.get(x)) for x in xs], "o-", color="tab:purple", label="true FQ")
        known = [(v, -x) for x, v in fq.items() if v is not None]
        if known:
            v, neg_x = max(known)
            ax.plot([-neg_x], [log_value(v)], "*", ms=14, color="tab:orange", label=f"best FQ: α = {-neg_x:g}")
        ax.set_yscale("log")
        ax.set_ylabel("Forget Quality (log)")
        ax.set_title("True FQ (needs the retrained model)")
    for ax in axes[0]:
        ax.axvline(sel["alpha"], color="k", ls=":", lw=1.2, label=f"chosen α = {sel['alpha']:g}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xlabel("α")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(sel["reason"], fontsize=8)
    return save_figure(fig, Path(path))


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """A small text table of the curve and the choice, for the terminal."""

    def num(x: Any, pct: bool = False) -> str:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return "–"
        return f"{100 * x:+.1f}%" if pct else (f"{x:.2e}" if 0 < abs(x) < 1e-3 else f"{x:.4f}")

    ref = report["reference"]
    head = ("α", "retain prob", "retain ROUGE", "worst drop", "KS p", "")
    cells = [head, ("0 (θ_ref)", num(ref["retain_probability"]), num(ref["retain_rouge"]), "", num(ref["ks_p"]), "")]
    for r in report["curve"]:
        cells.append(
            (
                f"{r['alpha']:g}",
                num(r["retain_probability"]),
                num(r["retain_rouge"]),
                num(r["utility_drop"], pct=True),
                num(r["ks_p"]),
                "<- chosen" if r["chosen"] else "",
            )
        )
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    sel = report["selection"]
    lines.append(f"chosen α = {sel['alpha']:g}: {sel['reason']}")
    return lines


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
    check_settings(cfg.alpha_grid, cfg.alpha_tolerance, cfg.alpha_p_min, "min_k", 100)


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
        report = alpha_curve(
            ref_dir,
            mem_dir,
            cfg.forget,
            cfg.holdout,
            cfg.retain,
            cfg.alpha_grid,
            tolerance=cfg.alpha_tolerance,
            p_min=cfg.alpha_p_min,
            fmt=cfg.prompt,
            batch_size=cfg.per_device_batch_size,
            max_new_tokens=min(200, cfg.max_length),
            max_length=cfg.max_length,
            dtype=cfg.dtype,
            work_dir=scratch,
            progress=True,
        )
        report["models"] = {"ref": cfg.model, "mem": str(out / "memorized") if mem_dir.parent == out else None}
        files = write_selection(report, out)
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
    }
    return sel["alpha"], summary
