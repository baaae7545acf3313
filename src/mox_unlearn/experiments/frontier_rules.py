"""The pure parts of the frontier (experiments/frontier.py runs the experiment; docs/frontier.md fixes
the protocol): its settings and grids, and the two selection rules and summaries over evaluation records.

  oracle        the highest test FQ with MU ≥ ratio × the target's MU (what tables report);
  retrain_free  among records with validation utility drop ≤ tolerance, the forget set most like the
                validation holdout (KS p, then KS statistic, then median gap); reads only `val_*` fields.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mox_unlearn.alpha_selection.rule import unlike_holdout
from mox_unlearn.config import SELECT_P_MIN, SELECT_TOLERANCE
from mox_unlearn.errors import MoxError

ORACLE, RETRAIN_FREE = "oracle", "retrain_free"
RULES = (ORACLE, RETRAIN_FREE)
VAL = "val_"  # prefix of the fields the retrain-free rule may read
REPORTED = ("forget_quality", "log10_forget_quality", "model_utility", "forget_rouge", "retain_rouge")


# ----------------------------------------------------------------------------- settings and the plan


def _distinct_ints(values: Any, minimum: int, *, allow_empty: bool) -> bool:
    """A list of distinct integers ≥ minimum (booleans are not integers here)."""
    return (
        isinstance(values, list)
        and (allow_empty or bool(values))
        and len(set(map(str, values))) == len(values)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values)
    )


def check_frontier_settings(cfg: Any) -> None:
    """Refuse a frontier setting that cannot run, in one line, before any model is trained."""
    from mox_unlearn.alpha_selection import SCORES, check_grid
    from mox_unlearn.config import UnlearnConfig, apply_mapping
    from mox_unlearn.methods import METHODS, VARIANTS

    methods = cfg.frontier_methods
    unknown = [m for m in methods if m not in METHODS and m not in VARIANTS]
    if not methods or unknown:
        raise MoxError(
            f"frontier_methods: unknown method {(unknown or [None])[0]!r}; valid: {', '.join([*METHODS, *VARIANTS])}"
        )
    if len(set(methods)) != len(methods):
        raise MoxError(f"frontier_methods: duplicate names in {methods}")
    explicit = check_grid(cfg.frontier_lrs, "frontier_lrs", "") if cfg.frontier_lrs else []
    if cfg.frontier_lr_scales or not explicit:  # the scales only matter without explicit learning rates
        check_grid(cfg.frontier_lr_scales, "frontier_lr_scales", "")
    if not _distinct_ints(cfg.frontier_seeds, 0, allow_empty=False):
        raise MoxError(f"frontier_seeds must be a non-empty list of distinct integers >= 0, got {cfg.frontier_seeds!r}")
    if not 0 < cfg.frontier_mu_ratio <= 1:
        raise MoxError(f"frontier_mu_ratio must be in (0, 1], got {cfg.frontier_mu_ratio!r}")
    if cfg.frontier_score not in SCORES:
        raise MoxError(f"frontier_score: unknown score {cfg.frontier_score!r}; valid: {', '.join(SCORES)}")
    if not _distinct_ints(cfg.frontier_epochs, 1, allow_empty=True):
        raise MoxError(
            f"frontier_epochs must be a list of distinct epochs >= 1 (empty: every epoch), got {cfg.frontier_epochs!r}"
        )
    if (
        isinstance(cfg.frontier_max_items, bool)
        or not isinstance(cfg.frontier_max_items, int)
        or cfg.frontier_max_items < 2
    ):
        raise MoxError(f"frontier_max_items must be an integer >= 2, got {cfg.frontier_max_items!r}")
    frontier_variant_list(cfg)  # each builds, or is refused in one line
    for method, grid in cfg.frontier_grids.items():
        if method not in methods:
            raise MoxError(f"frontier_grids: {method!r} is not in frontier_methods ({', '.join(methods)})")
        if not isinstance(grid, Mapping) or not grid:
            raise MoxError(f"frontier_grids.{method}: expected a mapping of config keys to lists of values")
        for key, values in flat_grid(grid).items():
            if key in ("lr", "seed"):
                raise MoxError(f"frontier_grids.{method}.{key}: set it with frontier_lrs / frontier_seeds")
            if not isinstance(values, list) or not values:
                raise MoxError(f"frontier_grids.{method}.{key}: expected a non-empty list of values")
            for v in values:  # an unknown key or a value out of range fails here, not after training
                apply_mapping(UnlearnConfig(), {key: v})


def lr_grid(base_lr: float, scales: Sequence[float], explicit: Sequence[float] = ()) -> list[float]:
    """The learning rates every method gets: `explicit` when given, else base_lr × each scale; ascending.
    Rounded to 6 significant digits so that 1e-3 × 1/3 names (and keys) the same run every time."""
    values = [float(v) for v in explicit] if explicit else [base_lr * float(s) for s in scales]  # YAML 1.1: "5e-5"
    return sorted({float(f"{v:.6g}") for v in values})


def flat_grid(grid: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{loss: {beta: [..]}} -> {"loss.beta": [..]}: a grid given nested (YAML, or `frontier_grids.npo.loss.beta=`
    overrides) or with dotted keys reads the same."""
    flat: dict[str, Any] = {}
    for k, v in grid.items():
        flat.update(flat_grid(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return flat


def grid_settings(grid: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every combination of a method's setting grid ({} = the presets only), keys in sorted order."""
    grid = flat_grid(grid)
    keys = sorted(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def setting_label(lr: float, setting: Mapping[str, Any]) -> str:
    """`lr 0.001` or `lr 0.001, loss.beta=0.1`: how a pick is named in tables."""
    return ", ".join([f"lr {lr:g}", *(f"{k}={v}" for k, v in setting.items())])


# ----------------------------------------------------------------------------- the rules (pure)


def num(x: Any) -> float | None:
    """A finite float, or None (missing, NaN or not a number never wins a comparison)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def select_oracle(records: Sequence[Mapping[str, Any]], target_mu: float, ratio: float = 0.95) -> dict[str, Any]:
    """The record with the highest test FQ among those with MU ≥ ratio × target_mu (ties: higher MU, then
    the first). None qualifies: the highest MU (then FQ), flagged `qualified: false`. This is the choice
    benchmark tables report; it reads the test FQ, which needs the retrained model."""
    bar = ratio * target_mu
    known = [(i, num(r.get("forget_quality")), num(r.get("model_utility"))) for i, r in enumerate(records)]
    known = [(i, fq, mu) for i, fq, mu in known if fq is not None and mu is not None]
    if not known:
        return {
            "rule": ORACLE,
            "id": None,
            "qualified": False,
            "mu_bar": bar,
            "reason": "no record has a test FQ and MU (the workspace has no retain model)",
        }
    qualifying = [k for k in known if k[2] >= bar]
    if qualifying:
        i = max(qualifying, key=lambda k: (k[1], k[2]))[0]
        reason = f"highest FQ with MU >= {ratio:g} x target MU ({bar:.4g})"
    else:
        i = max(known, key=lambda k: (k[2], k[1]))[0]
        reason = f"no setting keeps MU >= {ratio:g} x target MU ({bar:.4g}); the highest MU instead"
    return {"rule": ORACLE, "id": records[i].get("id"), "qualified": bool(qualifying), "mu_bar": bar, "reason": reason}


def select_retrain_free(
    records: Sequence[Mapping[str, Any]], tolerance: float = SELECT_TOLERANCE, p_min: float = SELECT_P_MIN
) -> dict[str, Any]:
    """The record whose forget set looks most like unseen data among those whose validation retain utility
    dropped at most `tolerance` (relative to θ_ref). "Most like unseen data", in order: the highest KS p
    (forget vs holdout), then the smallest KS statistic, then the smallest |median gap| between forget and
    holdout scores, then the smaller utility drop, then the first record. None within the tolerance: the
    smallest drop, flagged `utility_ok: false`; a pick with p < p_min is flagged `forget_indistinguishable: false`.

    Why the statistic and the gap after p (rule v2, docs/frontier.md "Changes"): once forget and holdout
    are completely separated (KS statistic 1), p is the same tiny number for every candidate, and rule v1
    then fell through to the smallest utility drop, i.e. the least changed model. The gap keeps measuring
    how far the forget set still is from unseen data where p and the statistic no longer can.

    Only `val_*` fields are read (each record is cut down to them first), so the test metrics, and the
    retain model they need, cannot influence the choice.
    """
    views = [{k: v for k, v in r.items() if k.startswith(VAL)} for r in records]
    if not views:
        raise MoxError("retrain-free selection needs at least one record")
    drop = [num(v.get("val_utility_drop")) for v in views]
    p = [num(v.get("val_ks_p")) for v in views]
    within = [i for i, d in enumerate(drop) if d is not None and d <= tolerance]

    def key(j: int) -> tuple[float, float, float, float]:  # smaller = more like unseen data, then less drop
        stat, gap = num(views[j].get("val_ks_stat")), num(views[j].get("val_forget_minus_holdout"))
        return (*unlike_holdout(p[j], stat, gap), drop[j])

    if within:
        i = min(within, key=key)
        reason = (
            f"forget most like validation holdout (KS p, then KS statistic, then median gap) with validation "
            f"retain utility within {tolerance:.0%} of θ_ref"
        )
    else:
        i = min(
            range(len(views)), key=lambda j: (math.inf if drop[j] is None else drop[j], 1.0 if p[j] is None else -p[j])
        )
        reason = f"no setting keeps validation retain utility within {tolerance:.0%} of θ_ref; the smallest drop"
    alike = p[i] is not None and p[i] >= p_min
    if within and not alike:
        reason += f" (KS p < {p_min:g}: forget still distinguishable from holdout)"
    return {
        "rule": RETRAIN_FREE,
        "id": records[i].get("id"),
        "utility_ok": bool(within),
        "forget_indistinguishable": alike,
        "tolerance": tolerance,
        "p_min": p_min,
        "reason": reason,
    }


def select_all(
    records: Sequence[Mapping[str, Any]],
    target_mu: float,
    *,
    mu_ratio: float = 0.95,
    tolerance: float = SELECT_TOLERANCE,
    p_min: float = SELECT_P_MIN,
) -> dict[str, dict[str, dict[str, dict]]]:
    """{method: {seed: {oracle: pick, retrain_free: pick}}}: both rules on each method's records of each
    seed (all of its learning rates, settings and knob values), the same way for every method."""
    groups: dict[str, dict[str, list]] = {}
    for r in records:
        groups.setdefault(r["method"], {}).setdefault(str(r["seed"]), []).append(r)
    return {
        m: {
            s: {ORACLE: select_oracle(rs, target_mu, mu_ratio), RETRAIN_FREE: select_retrain_free(rs, tolerance, p_min)}
            for s, rs in by_seed.items()
        }
        for m, by_seed in groups.items()
    }


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n − 1) of the known values; std None below two values."""
    xs = [x for x in (num(v) for v in values) if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def log10_fq(fq: float | None) -> float | None:
    """log10 of FQ, with FQ = 0 (a p-value below float range) read as 1e-300, as the plots draw it."""
    return None if num(fq) is None else math.log10(max(float(fq), 1e-300))


def is_fallback(pick: Mapping[str, Any]) -> bool:
    """A pick made because nothing qualified: the oracle's without a setting above the MU bar, or the
    retrain-free rule's without one within the utility tolerance."""
    return not (pick.get("qualified", True) and pick.get("utility_ok", True))


def summarize(
    records: Sequence[Mapping[str, Any]], selected: Mapping[str, Mapping[str, Mapping[str, dict]]]
) -> list[dict[str, Any]]:
    """One row per method and rule: mean and std over seeds of the picked records' reported metrics,
    how many picks were fallbacks, and which setting each seed picked."""
    by_id = {r["id"]: r for r in records}
    rows = []
    for method, by_seed in selected.items():
        for rule in RULES:
            picks = [(seed, by_seed[seed][rule]) for seed in by_seed]
            chosen = [(seed, by_id[p["id"]]) for seed, p in picks if p["id"] in by_id]
            row: dict[str, Any] = {"method": method, "rule": rule, "seeds": len(chosen)}
            for key in REPORTED:
                row[f"{key}_mean"], row[f"{key}_std"] = mean_std(r.get(key) for _, r in chosen)
            row["fallbacks"] = sum(is_fallback(p) for _, p in picks)
            row["picks"] = {
                seed: f"{r['setting']}, {r['knob']} {r['value']:g}" + (f" [{r['variant']}]" if r.get("variant") else "")
                for seed, r in chosen
            }
            rows.append(row)
    return rows


def pareto_front(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (MU, FQ) points no other point beats on both (higher is better on both), by MU descending."""
    front: list[tuple[float, float]] = []
    for mu, fq in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not front or fq > front[-1][1]:
            front.append((mu, fq))
    return front


def frontier_variant_list(cfg: Any) -> list:
    """The frontier's extrapolation variants (variants.Variant), none of them plain, no two alike."""
    from mox_unlearn.variants import Variant

    if not isinstance(cfg.frontier_variants, list):
        raise MoxError(f"frontier_variants must be a list of variant settings, got {cfg.frontier_variants!r}")
    variants = []
    for i, settings in enumerate(cfg.frontier_variants):
        v = Variant.from_settings(settings, f"frontier_variants[{i}]")
        if v.plain:
            raise MoxError(f"frontier_variants[{i}]: {dict(settings)} is plain MOX, which is always a row")
        for j, other in enumerate(variants):  # same settings, or two settings one row name would merge
            if v.fields() == other.fields():
                raise MoxError(f"frontier_variants[{i}]: {dict(settings)} is a duplicate of [{j}]")
            if v.label() == other.label():
                raise MoxError(
                    f"frontier_variants[{i}]: {dict(settings)}: [{i}] would share the row name mox+{v.label()} "
                    f"with [{j}] (a name keeps a regex's first 16 letters and digits and 6 digits of a number)"
                )
        variants.append(v)
    return variants
