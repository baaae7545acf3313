"""The rule of `mox select-alpha` (pure): the largest α that keeps utility and makes the forget set
look unseen, with flagged fallbacks (see the package docstring)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from mox_unlearn.config import ALPHA_GRID, SELECT_P_MIN, SELECT_TOLERANCE
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


def fmt_alpha(a: float) -> str:
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
        raise MoxError(f"duplicate α in the curve: {', '.join(map(fmt_alpha, dupes))}")
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
            f"; forget ~ holdout only at α = {', '.join(fmt_alpha(p.alpha) for p in alike)}, beyond the tolerance"
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


def unlike_holdout(ks_p: float | None, ks_stat: float | None, gap: float | None) -> tuple[float, float, float]:
    """How far a forget set still is from unseen data, as a sort key (smaller = more like the holdout): the
    higher KS p (forget vs holdout), then the smaller KS statistic, then the smaller |median gap| between
    forget and holdout scores. The last two still discriminate once p is saturated (forget and holdout
    completely apart). Missing or NaN ranks last. The one order of select-alpha's variant choice and of the
    frontier's retrain-free rule (v2, docs/frontier.md)."""

    def missing(x: float | None) -> bool:
        return x is None or math.isnan(x)

    return (
        1.0 if missing(ks_p) else -ks_p,
        math.inf if missing(ks_stat) else ks_stat,
        math.inf if missing(gap) else abs(gap),
    )


def choose_variant(picks: Sequence[tuple[str, float, float, float]]) -> int:
    """Which variant's pick to take, given each variant's (branch of select_alpha's Selection, and at its
    chosen α the forget-vs-holdout KS p, KS statistic and median gap), plain first: the branch that passed
    more (both tests, then utility only, then neither); within it the forget set most like the holdout
    (`unlike_holdout`). Ties keep the earlier variant, so plain MOX wins unless a variant does strictly
    better. Returns the index into `picks`."""
    if not picks:
        raise MoxError("no variant curves to choose from")
    rank = {BOTH: 2, UTILITY_ONLY: 1, SMALLEST: 0}
    # min keeps the first of equal keys
    return min(range(len(picks)), key=lambda i: (-rank[picks[i][0]], *unlike_holdout(*picks[i][1:])))
