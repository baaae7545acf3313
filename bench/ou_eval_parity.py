"""TOFU results of mox and of open-unlearning's own evaluator on the same models, number by number.

    python bench/ou_eval_parity.py --ou-runner /work/ou-bench/run_ou_tofu.sh --retain DIR --model DIR \
        --data ../shared/data/tofu [--limit 40] [--prompt open-unlearning-qa] --work DIR [--json FILE]

--ou-runner runs open-unlearning's `src/eval.py` offline as `RUNNER MODEL_DIR OUT_DIR [LIMIT] [-- overrides]`
(forget01 / holdout01, template "Question: …\\nAnswer: " of its phi-1_5 config; see docs/performance.md §8
for the harness). Both tools evaluate --retain first, then --model against it (open-unlearning:
retain_logs_path=<retain>/TOFU_EVAL.json; mox: --retain-result <retain folder>), mox once with --prompt
(default open-unlearning-qa, the same prompt and boundary) and once with its own default prompt. Printed:
the largest relative difference of every per-item and aggregate number of TOFU_EVAL.json, whether every
string (prompt, ground truth, generation) is equal, and forget quality, model utility side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def mox_eval(model: str, out: Path, args, prompt: str, retain: Path | None = None) -> None:
    cmd = ["mox", "eval", "--benchmark", "tofu", "--model", model, "--data", args.data, "--forget-split", "forget01"]
    cmd += ["--limit", str(args.limit), "--prompt", prompt, "--format", "open-unlearning", "--out", str(out)]
    run(cmd + (["--retain-result", str(retain)] if retain else []))


def differences(ours, theirs, path: str, worst: dict, strings: list) -> None:
    """Largest relative difference per top-level metric; paths of strings that differ."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for k in sorted(set(ours) & set(theirs)):
            differences(ours[k], theirs[k], f"{path}.{k}" if path else k, worst, strings)
    elif isinstance(ours, list) and isinstance(theirs, list):
        for a, b in zip(ours, theirs):
            differences(a, b, path, worst, strings)
    elif isinstance(ours, (int, float)) and isinstance(theirs, (int, float)):
        top = path.split(".")[0]
        worst[top] = max(worst.get(top, 0.0), abs(ours - theirs) / max(abs(theirs), 1e-12))
    elif isinstance(ours, str) and isinstance(theirs, str) and ours != theirs:
        strings.append(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ou-runner", required=True)
    ap.add_argument("--retain", required=True, help="the retain model (FQ's reference)")
    ap.add_argument("--model", required=True, help="the model compared with it")
    ap.add_argument("--data", required=True)
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--prompt", default="open-unlearning-qa")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    ou_r, ou_m = w / "ou-retain", w / "ou-model"
    run([args.ou_runner, args.retain, str(ou_r), str(args.limit)])
    run([args.ou_runner, args.model, str(ou_m), str(args.limit), "--", f"retain_logs_path={ou_r / 'TOFU_EVAL.json'}"])
    rows = {}
    for prompt in (args.prompt, "mox"):
        r, m = w / f"mox-{prompt}-retain", w / f"mox-{prompt}-model"
        mox_eval(args.retain, r, args, prompt)
        mox_eval(args.model, m, args, prompt, retain=r)
        rows[prompt] = (r, m)
    report = {}
    for label, (ou_dir, which) in {"retain": (ou_r, 0), "model": (ou_m, 1)}.items():
        theirs = json.loads((ou_dir / "TOFU_EVAL.json").read_text())
        for prompt, dirs in rows.items():
            ours = json.loads((dirs[which] / "TOFU_EVAL.json").read_text())
            worst, strings = {}, []
            differences(ours, theirs, "", worst, strings)
            worst.pop("privleak", None)  # open-unlearning falls back to AUC 0.5 without retain logs; mox reports none
            report[f"{label} / mox --prompt {prompt}"] = {
                "max_rel_diff": max(worst.values()),
                "worst_metric": max(worst, key=worst.get),
                "strings_differ": len(strings),
                "forget_quality": [ours["forget_quality"]["agg_value"], theirs["forget_quality"]["agg_value"]],
                "model_utility": [ours["model_utility"]["agg_value"], theirs["model_utility"]["agg_value"]],
                "forget_Q_A_Prob": [ours["forget_Q_A_Prob"]["agg_value"], theirs["forget_Q_A_Prob"]["agg_value"]],
            }
    for name, r in report.items():
        print(
            f"{name:40s} max rel diff {r['max_rel_diff']:.2e} ({r['worst_metric']}), strings differ {r['strings_differ']:4d}"
            f" | FQ mox {r['forget_quality'][0]} vs ou {r['forget_quality'][1]}"
            f" | MU {r['model_utility'][0]:.6g} vs {r['model_utility'][1]:.6g}"
            f" | forget prob {r['forget_Q_A_Prob'][0]:.6g} vs {r['forget_Q_A_Prob'][1]:.6g}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
