"""What `repair_steps=N` buys and costs on demo-fast (issue 17, item 1's opt-in repair).

repair_steps is a training step after Eq. 8: N AdamW steps of KL(p_ref ‖ p_θ) on retain batches (train/repair.py).
This script measures, on the models of `mox demo --fast` (its cache), MOX with demo-fast's unlearning settings
(lr 1e-3, 10 epochs, batch 16, forget10) at each α of --alphas and each N of --steps, over --seeds:
TOFU's FQ (against the demo's retrained model), MU and forget / retain ROUGE-L, and the seconds of the
memorization training against those of the repair (run.json's timings_s and repair).

The grid is fixed here, before any repaired model was evaluated: α 2 and 4 (the issue's demo-fast points:
α 2 keeps most utility, α 4 has lost most of it), N 0 (plain MOX), 5 and 20 (a quarter of, and as many as,
the 20 training steps), unlearning seeds 0, 1, 2.

    python bench/repair_steps.py --out /tmp/repair [--alphas 2 4] [--steps 0 5 20] [--seeds 0 1 2]

Runs and evaluations are cached in OUT (a workspace of `mox experiment`), so an interrupted run continues.
Writes OUT/repair/repair.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mox_unlearn.cli import preset_path
from mox_unlearn.config import load_config
from mox_unlearn.demo.run import default_cache_dir
from mox_unlearn.experiments import ExperimentConfig, Workspace
from mox_unlearn.experiments.frontier_rules import log10_fq, mean_std
from mox_unlearn.io.atomic import write_text_atomic


def _mean_std(values: list[float | None]) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "–"
    return f"{mean:.3f}" + ("" if std is None else f" ± {std:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--alphas", type=float, nargs="+", default=[2.0, 4.0])
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 5, 20])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()

    cfg = load_config(preset_path("demo-fast"), [], {}, cls=ExperimentConfig)
    ws = Workspace(cfg, args.out, default_cache_dir())
    records = []
    for seed in args.seeds:
        for alpha in args.alphas:
            for n in args.steps:
                label = f"mox-a{alpha:g}-repair{n}-s{seed}"
                run, _ = ws.run_method("mox", label=label, alpha=alpha, repair_steps=n, seed=seed)
                info = json.loads((run / "run.json").read_text())
                s = ws.evaluate(run / "model", label)["summary"]
                records.append(
                    {
                        "seed": seed,
                        "alpha": alpha,
                        "repair_steps": n,
                        "forget_quality": s["forget_quality"],
                        "log10_forget_quality": log10_fq(s["forget_quality"]),
                        "model_utility": s["model_utility"],
                        "forget_rouge": s["forget_rouge"],
                        "retain_rouge": s["retain_rouge"],
                        "train_seconds": info["timings_s"].get("train"),
                        "repair_seconds": (info.get("repair") or {}).get("seconds", 0.0),
                        "run": str(run),
                    }
                )
                print(f"{label}: log10 FQ {records[-1]['log10_forget_quality']:.2f}, MU {s['model_utility']:.3f}")
    target = ws.evaluate(ws.target, "original")["summary"]
    lines = [
        f"Target: log10 FQ {log10_fq(target['forget_quality']):.2f}, MU {target['model_utility']:.3f}. "
        f"Mean ± sample std over seeds {args.seeds}.",
        "",
        "| α | repair steps | log10 FQ | MU | forget ROUGE-L | retain ROUGE-L | train s | repair s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for alpha in args.alphas:
        for n in args.steps:
            rs = [r for r in records if r["alpha"] == alpha and r["repair_steps"] == n]
            keys = ("log10_forget_quality", "model_utility", "forget_rouge", "retain_rouge")
            cols = [_mean_std([r[k] for r in rs]) for k in (*keys, "train_seconds", "repair_seconds")]
            lines.append(f"| {alpha:g} | {n} | " + " | ".join(cols) + " |")
    table = "\n".join(lines) + "\n"
    out = args.out / "repair"
    write_text_atomic(out / "repair.json", json.dumps({"records": records, "target": target}, indent=1))
    write_text_atomic(out / "repair.md", table)
    print(table)


if __name__ == "__main__":
    main()
