"""select-alpha: how α chosen without a retrained model (alpha_selection/) compares with the α of the best true FQ.

The selection sees only what a practitioner has (θ_ref, θ_mem, forget / holdout / retain data); the
workspace's retain model, where there is one, then grades every α of the grid with the real Forget
Quality, so the table shows what the retraining-free choice gives up against the oracle choice.
"""

from __future__ import annotations

from pathlib import Path

from mox_unlearn.errors import MoxError
from mox_unlearn.experiments.training import finish, metrics_row
from mox_unlearn.experiments.workspace import Workspace


def select_alpha_experiment(ws: Workspace) -> dict:
    """The selection curve over cfg.alphas from the workspace's MOX θ_mem, and each α's true FQ / MU."""
    from mox_unlearn.alpha_selection import alpha_curve, plot_curve, write_selection
    from mox_unlearn.data import RecordSet, load_records

    cfg = ws.cfg
    run, u = ws.run_method("mox")
    mem = run / "memorized"
    forget = ws.split_spec(cfg.forget_split)
    holdout = ws.split_spec(cfg.forget_split.replace("forget", "holdout"))
    try:
        retain = ws.split_spec("retain_perturbed")
    except MoxError:  # a local folder without TOFU's evaluation split: the training retain set
        retain = u.retain
    limit = getattr(cfg, "eval_limit", None)  # quick checks: the first N items of each set, as the evaluations do

    def first(spec: str, name: str) -> RecordSet:
        rs = load_records(spec, name=name)
        return rs if limit is None else RecordSet(rs.kind, rs.records[:limit], rs.source)

    alphas = sorted(float(a) for a in cfg.alphas)
    models = ws.extrapolated(ws.target, mem, alphas)  # cached, shared with sweep
    report = alpha_curve(
        ws.target,
        mem,
        first(forget, "forget"),
        first(holdout, "holdout"),
        first(retain, "retain"),
        cfg.selection(alphas),
        fmt=u.prompt,
        batch_size=cfg.eval_batch_size,
        max_new_tokens=cfg.eval_max_new_tokens,
        max_length=cfg.max_length,
        models=dict(zip(alphas, models)),
        progress=True,
    )
    truth = {a: metrics_row(ws.evaluate(m, f"mox-a{a:g}")) if ws.retain else {} for a, m in zip(alphas, models)}
    rows = [
        {
            "alpha": r["alpha"],
            "utility_drop": r["utility_drop"],
            **{f"retain_{k}_drop": v for k, v in r["drops"].items()},
            "ks_p": r["ks_p"],
            "chosen": r["chosen"],
            "forget_quality": truth[r["alpha"]].get("forget_quality"),
            "model_utility": truth[r["alpha"]].get("model_utility"),
        }
        for r in report["curve"]
    ]
    out = ws.out("select-alpha")
    files = write_selection(report, out)
    fq = {r["alpha"]: r["forget_quality"] for r in rows}
    mu = {r["alpha"]: r["model_utility"] for r in rows}

    def plot(rows: list[dict], path: Path) -> Path:
        return plot_curve(report, path, fq if ws.retain else None)

    result = finish(
        ws,
        "select-alpha",
        rows,
        "α chosen without a retrained model vs the α of the best true FQ",
        plot,
        comparison_note(report["selection"], fq, mu),
    )
    result["files"] += [str(f) for f in files]
    return result


def best_fq(fq: dict[float, float | None]) -> tuple[float, float] | None:
    """(α, FQ) of the highest true FQ over the grid; ties go to the smaller α (less change to the model)."""
    known = [(v, -a) for a, v in fq.items() if v is not None]
    if not known:
        return None
    v, neg_a = max(known)
    return -neg_a, v


def comparison_note(selection: dict, fq: dict[float, float | None], mu: dict[float, float | None] | None = None) -> str:
    """One paragraph: the chosen α and why, its true FQ next to the grid's best FQ and the α that gave it
    (with each one's Model Utility, since the best-FQ α may have bought its FQ with the model's usefulness)."""
    head = f"Chosen α = {selection['alpha']:g} ({selection['reason']})."
    best = best_fq(fq)
    if best is None:
        return head + " No retrained model in this workspace, so the true FQ of each α is not available."
    mu = mu or {}

    def num(x: float | None) -> str:
        return "unavailable" if x is None else f"{x:.3g}"

    def with_mu(alpha: float) -> str:
        return f" (MU {num(mu[alpha])})" if mu.get(alpha) is not None else ""

    mine = fq.get(selection["alpha"])
    same = " — the same α." if best[0] == selection["alpha"] else "."
    return (
        f"{head} Its true FQ is {num(mine)}{with_mu(selection['alpha'])}; the best FQ over the grid is "
        f"{best[1]:.3g} at α = {best[0]:g}{with_mu(best[0])}{same}"
    )
