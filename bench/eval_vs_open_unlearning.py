"""TOFU evaluation, mox against open-unlearning's own evaluator: whole processes, side by side.

    python bench/eval_vs_open_unlearning.py --ou-runner /work/ou-bench/run_ou_tofu.sh --model DIR
                                            [--limit 40] [--repeats 2] [--json FILE]

open-unlearning is not a dependency: --ou-runner is a script that runs its `src/eval.py` (experiment
eval/tofu/default, forget01/holdout01, template "Question: …\\nAnswer: ", batch size 16, max_new_tokens
200) offline on MODEL_DIR with the local TOFU data, as `RUNNER MODEL_DIR OUT_DIR [LIMIT]`. The setup used
for docs/performance.md is described there. mox runs `mox eval --benchmark tofu --forget-split forget01
--batch-size 16` on the same model and data. Both evaluate forget01, retain_perturbed, Real Authors, World
Facts (and holdout01 for the MIA), first --limit records of each. Each run is a fresh process, timed
whole (imports, model loading, evaluation, writing results); the two alternate, --repeats times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"{cmd[0]} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return seconds


def main() -> int:
    default_data = os.environ.get("MOX_DATA_DIR", str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ou-runner", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=str(Path(default_data) / "tofu"))
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    times: dict[str, list[float]] = {"mox eval": [], "open-unlearning eval.py": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            out = Path(tmp) / f"mox-{rep}.json"
            mox = [
                sys.executable,
                "-m",
                "mox_unlearn.cli",
                "eval",
                "--benchmark",
                "tofu",
                "--model",
                args.model,
                "--data",
                args.data,
                "--forget-split",
                "forget01",
                "--batch-size",
                "16",
                "--out",
                str(out),
            ]
            if args.limit:
                mox += ["--limit", str(args.limit)]
            times["mox eval"].append(run(mox))
            ou_out = Path(tmp) / f"ou-{rep}"
            ou = [args.ou_runner, args.model, str(ou_out)] + ([str(args.limit)] if args.limit else [])
            times["open-unlearning eval.py"].append(run(ou))
            print(
                f"repeat {rep + 1}: mox {times['mox eval'][-1]:.1f} s, "
                f"open-unlearning {times['open-unlearning eval.py'][-1]:.1f} s",
                flush=True,
            )
            if rep == args.repeats - 1:
                ours = json.loads(out.read_text())["summary"]
                theirs = json.loads((ou_out / "TOFU_SUMMARY.json").read_text())
            shutil.rmtree(ou_out, ignore_errors=True)
    print(f"\nmodel {args.model}; {args.limit or 'all'} records per split\n")
    print("| evaluator | min s | median s | all runs s |\n|---|---:|---:|---|")
    for k, v in times.items():
        print(f"| {k} | {min(v):.1f} | {statistics.median(v):.1f} | {', '.join(f'{x:.1f}' for x in v)} |")
    ratio = min(times["open-unlearning eval.py"]) / min(times["mox eval"])
    print(f"\nopen-unlearning / mox (min): {ratio:.2f}x (target >= 3)")
    print(f"mox summary: {json.dumps(ours)}\nopen-unlearning summary: {json.dumps(theirs)}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"times_s": times, "ratio_min": ratio, "mox": ours, "open_unlearning": theirs, "argv": sys.argv},
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
