"""The analyses that train and evaluate: sweep (Fig. 3), stability (Fig. 4), forget-size (Fig. 5),
trajectory (Fig. 7), collapse (Eq. 7 / Def. 2.2 per epoch) and continual (Fig. 8).

Each function takes a Workspace, returns its rows, and writes OUT/<name>/<name>.{json,csv,md,png}.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mox_unlearn.experiments.workspace import Workspace, config_dict, epoch_snapshots
from mox_unlearn.report import figure, fq_mu_axes, log_value, save_figure, write_table

SPLITS = {"forget": "Forget", "retain": "Retain", "ra": "Real Authors", "wf": "World Facts"}
PARTS = {"rouge": "ROUGE-L", "probability": "Probability", "truth_ratio": "Truth Ratio"}


def metrics_row(result: dict) -> dict:
    """The numbers a row of an analysis shows: FQ, MU, per-split ROUGE / probability / truth ratio,
    and the collapse signals on the forget answers."""
    m, s = result["metrics"], result["summary"]
    row = {"forget_quality": s.get("forget_quality"), "model_utility": s.get("model_utility")}
    for split in SPLITS:
        for part in PARTS:
            row[f"{split}_{part}"] = m.get(f"{split}_{part}", {}).get("value")
    for key in ("forget_collapse", "forget_top_token_rate", "retain_collapse", "retain_top_token_rate"):
        row[key] = m.get(key, {}).get("value")
    return row


def finish(ws: Workspace, name: str, rows: list[dict], title: str, plot, note: str = "") -> dict:
    from mox_unlearn.io.atomic import staged_files

    out = ws.root / name  # made by staged_files, so a failure leaves no empty folder
    with staged_files(out) as stage:  # table and plot together or not at all (a plot that fails, a stop)
        files = write_table(rows, stage, name, title=title, note=note, extra={"config": config_dict(ws.cfg)})
        files.append(plot(rows, stage / f"{name}.png"))
    files = [out / f.name for f in files]
    print(f"{name}: {len(rows)} rows -> {out}", flush=True)
    return {"rows": rows, "files": [str(f) for f in files]}


def reference_rows(ws: Workspace, split: str | None = None) -> list[dict]:
    rows = [{"model": "original", **metrics_row(ws.evaluate(ws.target, "original", split))}]
    if ws.retain:
        rows.append({"model": "retrained", **metrics_row(ws.evaluate(ws.retain, "retrained", split))})
    return rows


# ----------------------------------------------------------------------------- sweep (Fig. 3)


def sweep(ws: Workspace) -> dict:
    """α and η sensitivity from one MOX run: every α extrapolated from the final θ_mem, every η folded
    from the per-epoch θ_mem snapshots (both without training again)."""
    cfg = ws.cfg
    run, u = ws.run_method("mox")
    rows = [{**r, "vary": "reference", "alpha": None, "eta": None} for r in reference_rows(ws)]
    for alpha, model in zip(cfg.alphas, ws.extrapolated(u.model, run / "memorized", cfg.alphas)):
        rows.append(
            {
                "model": f"mox-a{alpha:g}",
                "vary": "alpha",
                "alpha": alpha,
                "eta": None,
                **metrics_row(ws.evaluate(model, f"mox-a{alpha:g}")),
            }
        )
    snaps = [p for _, p in epoch_snapshots(run)]
    for eta in cfg.etas:
        model = ws.momentum_fold(u.model, snaps, cfg.alpha, eta)
        rows.append(
            {
                "model": f"mox-momentum-eta{eta:g}",
                "vary": "eta",
                "alpha": cfg.alpha,
                "eta": eta,
                **metrics_row(ws.evaluate(model, f"mox-momentum-eta{eta:g}")),
            }
        )
    note = (
        f"MOX θ_mem trained once ({u.epochs} epochs, lr {u.lr:g}); α rows extrapolate its final weights, "
        f"η rows fold its {len(snaps)} per-epoch θ_for (α = {cfg.alpha:g}) with Eq. 10."
    )
    return finish(ws, "sweep", rows, "α and η sensitivity (paper Fig. 3)", _plot_sweep, note)


def _plot_sweep(rows: list[dict], path: Path) -> Path:
    fig, axes = figure(2, 5, size=(19, 7))
    refs = {r["model"]: r for r in rows if r["vary"] == "reference"}
    for i, (vary, label) in enumerate((("alpha", "α"), ("eta", "η"))):
        pts = sorted((r[vary], r) for r in rows if r["vary"] == vary)
        if not pts:
            continue
        xs = [x for x, _ in pts]
        ax = axes[i][0]
        ax.plot(xs, [log_value(r["forget_quality"]) for _, r in pts], "o-", label="FQ")
        ax.set_yscale("log")
        ax.set_ylabel("Forget Quality (log)")
        ax2 = ax.twinx()
        ax2.plot(xs, [r["model_utility"] for _, r in pts], "s--", color="tab:red", label="MU")
        ax2.set_ylabel("Model Utility", color="tab:red")
        ax.set_xlabel(label)
        ax.set_title("FQ / MU")
        for j, (split, title) in enumerate(SPLITS.items(), 1):
            ax = axes[i][j]
            for part, name in PARTS.items():
                line = ax.plot(xs, [r[f"{split}_{part}"] for _, r in pts], "o-", label=name)
                if "original" in refs and refs["original"][f"{split}_{part}"] is not None:
                    ax.axhline(refs["original"][f"{split}_{part}"], color=line[0].get_color(), ls=":", lw=0.8)
            ax.set_title(f"{title} (dotted: original)")
            ax.set_xlabel(label)
            ax.set_ylim(-0.02, 1.02)
            if j == 1:
                ax.legend(fontsize=7)
        if vary == "alpha":
            for ax in axes[i]:
                ax.set_xscale("log", base=2)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- stability (Fig. 4)


def stability(ws: Workspace) -> dict:
    """GA (with the retain NLL, i.e. GradDiff) and NPO with forget-term weight γ ∈ weights, against MOX
    with α ∈ weights, all at the same training budget. Plain GA's weight is not swept: AdamW is
    invariant to a constant loss scale, so γ·GA alone would only change gradient clipping."""
    cfg = ws.cfg
    rows = []
    for method, label in (("graddiff", "GA"), ("npo", "NPO")):
        for w in cfg.weights:
            run, _ = ws.run_method(method, label=f"{method}-w{w:g}", loss={"gamma": w})
            rows.append(
                {
                    "method": label,
                    "setting": "weight",
                    "value": w,
                    **metrics_row(ws.evaluate(run / "model", f"{method}-w{w:g}")),
                }
            )
    run, u = ws.run_method("mox")
    for alpha, model in zip(cfg.weights, ws.extrapolated(u.model, run / "memorized", cfg.weights)):
        rows.append(
            {"method": "MOX", "setting": "alpha", "value": alpha, **metrics_row(ws.evaluate(model, f"mox-a{alpha:g}"))}
        )
    return finish(
        ws,
        "stability",
        rows,
        "Stability over the forget weight (GA, NPO) and α (MOX) — paper Fig. 4",
        plot_by_method("value", "forget-term weight γ (GA, NPO) / α (MOX)"),
    )


def plot_by_method(xkey: str, xlabel: str, categorical: bool = False):
    def plot(rows: list[dict], path: Path) -> Path:
        fig, axes = figure(1, 3, size=(14, 4))
        methods = list(dict.fromkeys(r["method"] for r in rows))
        xs_all = list(dict.fromkeys(r[xkey] for r in rows))
        for m in methods:
            pts = [r for r in rows if r["method"] == m]
            xs = [xs_all.index(r[xkey]) for r in pts] if categorical else [r[xkey] for r in pts]
            axes[0][0].plot(xs, [log_value(r["forget_quality"]) for r in pts], "o-", label=m)
            axes[0][1].plot(xs, [r["model_utility"] for r in pts], "o-", label=m)
            axes[0][2].plot(xs, [r["forget_rouge"] for r in pts], "o-", label=m)
        for ax, title in zip(axes[0], ("Forget Quality (↑, log)", "Model Utility (↑)", "Forget ROUGE-L (↓)")):
            ax.set_title(title)
            ax.set_xlabel(xlabel)
            if categorical:
                ax.set_xticks(range(len(xs_all)), [str(x) for x in xs_all])
            ax.grid(alpha=0.3)
        axes[0][0].set_yscale("log")
        axes[0][0].legend(fontsize=8)
        return save_figure(fig, path)

    return plot


# ----------------------------------------------------------------------------- forget size (Fig. 5)


def forget_size(ws: Workspace) -> dict:
    """MOX against GA and NPO on each forget split (1 %, 5 %, 10 %), FQ against the retain model on that split."""
    cfg = ws.cfg
    rows = []
    for split in cfg.forget_splits:
        for name in ["mox", *cfg.compare_methods]:
            run, u = ws.run_method(name, label=f"{name}-{split}", forget_split=split)
            rows.append({"method": name, "split": split, **metrics_row(ws.evaluate(run / "model", f"{name}", split))})
    note = ""
    if ws.demo:
        note = (
            "The demo's retain model never saw any forget10 profile, so it is the gold standard for forget01 and "
            "forget05 too (they are subsets of forget10); it also never saw the rest of forget10, which a "
            "model retrained on retain99 / retain95 would have."
        )
    return finish(
        ws, "forget-size", rows, "Forget-set size (paper Fig. 5)", plot_by_method("split", "forget split", True), note
    )


# ----------------------------------------------------------------------------- trajectory (Fig. 7) and collapse


def _epoch_rows(ws: Workspace, methods: Sequence[str]) -> list[dict]:
    """Every method's unlearned model after each epoch (epoch 0 = the original), evaluated."""
    original = metrics_row(ws.evaluate(ws.target, "original"))
    rows = []
    for name in methods:
        run, u = ws.run_method(name)
        rows.append({"method": name, "epoch": 0, **original})
        for epoch, model in ws.forget_models_by_epoch(run, u):
            rows.append({"method": name, "epoch": epoch, **metrics_row(ws.evaluate(model, f"{name}-epoch{epoch}"))})
    return rows


def trajectory(ws: Workspace) -> dict:
    """FQ and MU after every epoch of each method (marker size = epoch), from per-epoch weights."""
    rows = _epoch_rows(ws, ws.cfg.trajectory_methods)
    if ws.retain:
        rows.append({"method": "retrained", "epoch": None, **metrics_row(ws.evaluate(ws.retain, "retrained"))})
    return finish(ws, "trajectory", rows, "Unlearning trajectories (paper Fig. 7)", _plot_trajectory)


def _plot_trajectory(rows: list[dict], path: Path) -> Path:
    fig, axes = figure(1, 1, size=(8, 6))
    ax = axes[0][0]
    for m in dict.fromkeys(r["method"] for r in rows if r["method"] != "retrained"):
        pts = [r for r in rows if r["method"] == m]
        mu, fq = [r["model_utility"] for r in pts], [log_value(r["forget_quality"]) for r in pts]
        line = ax.plot(mu, fq, "-", alpha=0.5, label=m)
        ax.scatter(mu, fq, s=[12 + 10 * r["epoch"] for r in pts], color=line[0].get_color())
    for r in rows:
        if r["method"] == "retrained":
            ax.scatter(
                [r["model_utility"]], [log_value(r["forget_quality"])], marker="*", s=200, color="k", label="retrained"
            )
    fq_mu_axes(ax, "Trajectory per epoch (marker size = epoch; epoch 0 = original)", legend=8)
    return save_figure(fig, path)


def collapse(ws: Workspace) -> dict:
    """Eq. 7 (KL from the data's empirical next-token distribution, on forget and retain answers) and the
    most-frequent-token rate of greedy generations (Def. 2.2), after every epoch of each method."""
    rows = _epoch_rows(ws, ws.cfg.collapse_methods)
    keep = (
        "method",
        "epoch",
        "forget_collapse",
        "retain_collapse",
        "forget_top_token_rate",
        "retain_top_token_rate",
        "model_utility",
        "forget_quality",
    )
    rows = [{k: r[k] for k in keep} for r in rows]
    return finish(ws, "collapse", rows, "Collapse during training (paper Eq. 7 / Def. 2.2)", _plot_collapse)


def _plot_collapse(rows: list[dict], path: Path) -> Path:
    fig, axes = figure(1, 3, size=(14, 4))
    for m in dict.fromkeys(r["method"] for r in rows):
        pts = [r for r in rows if r["method"] == m]
        ep = [r["epoch"] for r in pts]
        axes[0][0].plot(ep, [r["forget_collapse"] for r in pts], "o-", label=m)
        axes[0][1].plot(ep, [r["retain_collapse"] for r in pts], "o-", label=m)
        axes[0][2].plot(ep, [r["retain_top_token_rate"] for r in pts], "o-", label=m)
    titles = (
        "Collapse (Eq. 7) on forget answers, nats",
        "Collapse (Eq. 7) on retain answers, nats",
        "Most-frequent-token rate, retain generations",
    )
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_yscale("symlog")
    axes[0][1].set_yscale("symlog")
    axes[0][0].legend(fontsize=8)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- continual (Fig. 8)


def continual(ws: Workspace) -> dict:
    """Unlearn forget01, then forget05, then forget10 in sequence (continual_epochs each), each stage
    starting from the previous stage's unlearned model; evaluate after every stage on its own split."""
    cfg = ws.cfg
    rows = []
    for name in cfg.continual_methods:
        model = ws.target
        for stage, split in enumerate(cfg.forget_splits, 1):
            run, _ = ws.run_method(
                name,
                label=f"continual-{name}-{stage}",
                model=str(model),
                forget_split=split,
                epochs=cfg.continual_epochs,
                save_epochs=False,
                save_memorized=False,
            )
            model = run / "model"
            rows.append(
                {
                    "method": name,
                    "stage": stage,
                    "split": split,
                    **metrics_row(ws.evaluate(model, f"continual-{name}-{stage}", split)),
                }
            )
    note = (
        f"Each stage trains {cfg.continual_epochs} epochs with the shared settings, from the previous stage's "
        "model (for MOX that model is also the next stage's reference θ_ref)."
    )
    return finish(
        ws,
        "continual",
        rows,
        "Continual unlearning (paper Fig. 8)",
        plot_by_method("split", "stage (forget split)", True),
        note,
    )


# ----------------------------------------------------------------------------- Table 1 on any workspace


def table(ws: Workspace) -> dict:
    """The paper's Table 1 on the workspace's models: original, retrained, MOX at every α (one θ_mem) and
    every method in `methods`, each with the shared settings; the demo's table, for any model."""
    import time

    from mox_unlearn.methods import get_method
    from mox_unlearn.report import row_from_eval, text_table, write_report

    cfg = ws.cfg
    start = time.perf_counter()
    rows = [row_from_eval(ws.evaluate(ws.target, "original"), "original", "original")]
    if ws.retain:
        rows.append(row_from_eval(ws.evaluate(ws.retain, "retrained"), "retrained", "retrained"))
    seconds: dict[str, float] = {}
    for name in cfg.methods:
        t0 = time.perf_counter()
        run, u = ws.run_method(name)
        if name == "mox":
            for a, model in zip(cfg.alphas, ws.extrapolated(u.model, run / "memorized", cfg.alphas)):
                rows.append(row_from_eval(ws.evaluate(model, f"mox-a{a:g}"), f"mox-a{a:g}", "mox", a))
        else:
            alpha = u.alpha if get_method(u.method).extrapolate else None
            rows.append(row_from_eval(ws.evaluate(run / "model", name), name, name.split("-")[0], alpha))
        seconds[name] = round(time.perf_counter() - t0, 1)
    out = ws.out("table")
    extra = {
        "config": config_dict(cfg),
        "target": ws.target,
        "retain": ws.retain,
        "data": ws.data,
        "method_seconds": seconds,
        "seconds": round(time.perf_counter() - start, 1),
    }
    files = write_report(rows, out, title=f"TOFU metrics on {cfg.forget_split}", extra=extra)
    print("\n" + text_table(rows), flush=True)
    return {"rows": rows, "files": [str(f) for f in files]}
