"""A selection report written out: JSON, a PNG of the curve, and the lines the command prints."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# ----------------------------------------------------------------------------- output


def json_safe(obj: Any) -> Any:
    """NaN / inf become null: JSON has no NaN, and readers of the report should not need a lenient parser."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_selection(report: Mapping[str, Any], folder: str | Path, stem: str = "alpha-selection") -> list[Path]:
    """`stem`.json (the report) and `stem`.png (the curve) in `folder`."""
    import json

    from mox_unlearn.io.atomic import write_text_atomic
    from mox_unlearn.redact import redact

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / f"{stem}.json", json.dumps(redact(json_safe(report)), indent=1) + "\n")
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
    if report.get("variants"):  # select-alpha --variant: one curve per variant, this one chosen
        for v in report["variants"]:
            lines.append(
                f"  variant {v['label']}: α = {v['alpha']:g} ({v['branch']}, KS p {num(v['ks_p'])}, "
                f"statistic {num(v['ks_stat'])}, median gap {num(v['forget_minus_holdout_median'])})"
            )
        lines.append(f"chosen variant: {report['variant_choice']}")
    return lines
