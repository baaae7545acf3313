"""Where the time of a TOFU evaluation goes: seconds per part (scoring, generation) and split.

    python bench/eval_parts.py --model DIR [--limit 40] [--batch-size 16] [--forget-split forget01] [--json FILE]

Runs `evaluate_tofu` on a model folder (float32) with every scoring and generation call timed, keyed
by its progress label ("forget: scoring", "retain: generate", ...). With the previous code first on
PYTHONPATH the same script times the old parts ("forget: answers", "forget: perturbed", ...), which is
how docs/performance.md compares before and after. Prints the parts, the total, and the summary
numbers, so that two runs can be checked for equal results.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path

import torch


def main() -> None:
    default_data = os.environ.get("MOX_DATA_DIR", str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=str(Path(default_data) / "tofu"))
    ap.add_argument("--limit", type=int, default=40, help="records per split (0: all)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--forget-split", default="forget01")
    ap.add_argument("--json")
    args = ap.parse_args()

    import mox_unlearn.evaluate.stats as stats_mod
    import mox_unlearn.evaluate.tofu as tofu
    from mox_unlearn.io.loading import load_model, load_tokenizer

    parts: dict[str, float] = defaultdict(float)
    for name in ("answer_stats", "answer_stats_multi", "score_continuations", "generate_answers"):
        real = getattr(tofu, name, None)
        if real is None:
            continue

        def timed(*a, _real=real, _name=name, **k):
            t0 = time.perf_counter()
            try:
                return _real(*a, **k)
            finally:
                parts[k.get("desc") or _name] += time.perf_counter() - t0

        setattr(tofu, name, timed)
    tok = load_tokenizer(args.model)
    model = load_model(args.model, torch.float32).eval()
    t0 = time.perf_counter()
    result = tofu.evaluate_tofu(
        model, tok, data=args.data, forget_split=args.forget_split, batch_size=args.batch_size, limit=args.limit or None
    )
    total = time.perf_counter() - t0
    print(
        f"model {args.model}; {args.limit or 'all'} records per split; batch {args.batch_size}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; code {Path(stats_mod.__file__).parent}"
    )
    print("| part | seconds |\n|---|---:|")
    for k, v in parts.items():
        print(f"| {k} | {v:.1f} |")
    print(f"| **total** | **{total:.1f}** |")
    m = result["metrics"]
    numbers = {k: m[k]["value"] for k in sorted(m) if isinstance(m[k], dict) and isinstance(m[k].get("value"), float)}
    generations = {k: m[k]["generations"] for k in sorted(m) if isinstance(m[k], dict) and "generations" in m[k]}
    for k, v in numbers.items():
        print(f"{k} = {v!r}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "parts_s": parts,
                    "total_s": total,
                    "numbers": numbers,
                    "generations": generations,
                    "per_item": {k: m[k].get("per_item") for k in numbers},
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
