"""select-alpha's pick against the oracle α, from a finished `mox experiment frontier` (issue 14, item 3).

For every extrapolating method (knob α; each variant row of frontier_variants is a method of its own, the
pooled "+variants" rows are left out), learning rate, setting and seed of OUT/frontier/frontier.json, one
θ_mem gave a curve over the α grid. On that curve this script applies, without evaluating anything again:

  select-alpha   the rule of `mox select-alpha` (select_alpha.select_alpha: the largest α with the worst
                 validation retain drop ≤ tolerance and forget-vs-holdout KS p ≥ p_min, with its fallbacks)
                 on the frontier's validation statistics;
  retrain-free   the frontier's rule (frontier.select_retrain_free) restricted to the same curve;
  oracle         the highest test FQ with MU ≥ mu_ratio × the target's MU (frontier.select_oracle).

and prints, per curve, each pick's α, log10 FQ and MU, and whether select-alpha's pick is within 0.3 in
log10 FQ of the oracle's (the issue's target) at MU ≥ the bar.

    python bench/select_alpha_vs_oracle.py OUT/frontier/frontier.json [--tolerance 0.05] [--p-min 0.05]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from mox_unlearn.alpha_selection import CurvePoint, select_alpha
from mox_unlearn.experiments.frontier_rules import select_oracle, select_retrain_free


def _log10(fq: float | None) -> float | None:
    return None if fq is None else math.log10(max(fq, 1e-300))


def curves(records: list[dict]) -> dict[tuple[str, float, str, int], list[dict]]:
    """Records of each (method, lr, setting, seed) whose knob is α, in α order; the pooled "+variants" rows
    repeat the variant rows' records, so they are not curves of their own."""
    out: dict[tuple[str, float, str, int], list[dict]] = {}
    for r in records:
        if r["knob"] == "alpha" and not r["method"].endswith("+variants"):
            out.setdefault((r["method"], r["lr"], r.get("setting", ""), r["seed"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["value"]) for k, v in sorted(out.items())}


def compare(records: list[dict], target_mu: float, *, mu_ratio: float, tolerance: float, p_min: float) -> list[dict]:
    rows = []
    for (method, lr, setting, seed), curve in curves(records).items():
        points = [
            CurvePoint(
                r["value"],
                {"probability": _nan(r.get("val_probability_drop")), "rouge": _nan(r.get("val_rouge_drop"))},
                _nan(r.get("val_ks_p")),
            )
            for r in curve
        ]
        chosen = select_alpha(points, tolerance, p_min)
        by_alpha = {r["value"]: r for r in curve}
        picks = {
            "select-alpha": by_alpha[chosen.alpha],
            "retrain-free": _by_id(curve, select_retrain_free(curve, tolerance, p_min)["id"]),
            "oracle": _by_id(curve, (oracle := select_oracle(curve, target_mu, mu_ratio))["id"]),
        }
        row = {
            "method": method,
            "lr": lr,
            "setting": setting,
            "seed": seed,
            "branch": chosen.branch,
            "oracle_qualified": oracle["qualified"],
        }
        for name, r in picks.items():
            row[name] = {"alpha": r["value"], "log10_fq": _log10(r["forget_quality"]), "mu": r["model_utility"]}
        chosen_fq, oracle_fq = row["select-alpha"]["log10_fq"], row["oracle"]["log10_fq"]
        gap = None if chosen_fq is None or oracle_fq is None else chosen_fq - oracle_fq  # no retain result: no FQ
        row["gap_log10_fq"] = gap
        row["target_met"] = gap is not None and abs(gap) <= 0.3 and row["select-alpha"]["mu"] >= mu_ratio * target_mu
        rows.append(row)
    return rows


def _nan(x: float | None) -> float:
    return math.nan if x is None else float(x)


def _by_id(curve: list[dict], id_: str | None) -> dict:
    return next(r for r in curve if r["id"] == id_)


def markdown(rows: list[dict], bar: float) -> str:
    head = (
        "| method | lr | seed | select-alpha α (log10 FQ, MU) | retrain-free α | oracle α (log10 FQ, MU) "
        f"| gap log10 FQ | within 0.3 at MU ≥ {bar:.3f} |\n|---|---|---|---|---|---|---|---|"
    )
    num = lambda x, f: "–" if x is None else format(x, f)  # noqa: E731
    cell = lambda p: f"{p['alpha']:g} ({num(p['log10_fq'], '.2f')}, {p['mu']:.3f})"  # noqa: E731
    lines = [
        f"| {r['method']} | {r['lr']:g} | {r['seed']} | {cell(r['select-alpha'])} [{r['branch']}] "
        f"| {cell(r['retrain-free'])} | {cell(r['oracle'])}{'' if r['oracle_qualified'] else ' (none ≥ bar)'} "
        f"| {num(r['gap_log10_fq'], '+.2f')} | {'yes' if r['target_met'] else 'no'} |"
        for r in rows
    ]
    return "\n".join([head, *lines])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("frontier_json", type=Path)
    ap.add_argument("--tolerance", type=float, help="default: the frontier's select_tolerance")
    ap.add_argument("--p-min", type=float, help="default: the frontier's select_p_min")
    args = ap.parse_args()
    data = json.loads(args.frontier_json.read_text())
    cfg = data["config"]
    tol = cfg["select_tolerance"] if args.tolerance is None else args.tolerance
    p_min = cfg["select_p_min"] if args.p_min is None else args.p_min
    rows = compare(data["records"], data["target_mu"], mu_ratio=cfg["frontier_mu_ratio"], tolerance=tol, p_min=p_min)
    print(f"tolerance {tol:g}, p_min {p_min:g}, target MU {data['target_mu']:.4f}\n")
    print(markdown(rows, cfg["frontier_mu_ratio"] * data["target_mu"]))
    met = sum(r["target_met"] for r in rows)
    print(f"\nselect-alpha within 0.3 log10 FQ of the oracle at MU ≥ bar: {met} of {len(rows)} curves")


if __name__ == "__main__":
    main()
