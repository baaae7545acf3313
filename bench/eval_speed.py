"""Throughput of the TOFU evaluation (forget10 + retain + Real Authors + World Facts), batched vs one item at a time.

    python bench/eval_speed.py [--limit 40] [--batch-size 16] [--data ../shared/data/tofu] [--json FILE]

The model is a small random Llama (hidden 256, 4 layers) with a tokenizer trained on TOFU's own text,
so prompts have realistic token counts; a random model never emits EOS, so every generation runs the
full 200 new tokens (the worst case for generation time). Items = evaluated records over the four
splits (each record costs 1-3 teacher-forced answers, 5 perturbed answers and one generation).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from mox_unlearn.data import load_records
from mox_unlearn.evaluate.tofu import evaluate_tofu
from mox_unlearn.tiny import build_tiny_llama, build_tokenizer

SPLITS = ("forget10_perturbed", "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed")


def main() -> None:
    default_data = os.environ.get("MOX_DATA_DIR", str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(default_data) / "tofu"))
    ap.add_argument("--limit", type=int, default=40, help="records per split; 0 = every record (the full evaluation)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.manual_seed(0)
    texts = [f"{r['question']} {r['answer']}" for r in load_records(str(Path(args.data) / "full.jsonl")).records]
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tokenizer(texts, vocab_size=4096)
        path = build_tiny_llama(
            tmp, tok, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, max_position_embeddings=1024
        )
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path).eval()
        rows = []
        for bs in (args.batch_size, 1):
            start = time.perf_counter()
            result = evaluate_tofu(
                model, tok, data=args.data, forget_split="forget10", batch_size=bs, limit=args.limit or None
            )
            seconds = time.perf_counter() - start
            items = sum(
                min(len(load_records(str(Path(args.data) / f"{split}.jsonl")).records), args.limit or 10**9)
                for split in SPLITS
            )
            rows.append(
                {
                    "batch_size": bs,
                    "items": items,
                    "seconds": round(seconds, 2),
                    "items_per_s": round(items / seconds, 3),
                    "model_utility": result["summary"]["model_utility"],
                    "forget_truth_ratio": result["metrics"]["forget_truth_ratio"]["value"],
                    "retain_probability": result["metrics"]["retain_probability"]["value"],
                    "ra_probability": result["metrics"]["ra_probability"]["value"],
                }
            )
    keys = ("model_utility", "forget_truth_ratio", "retain_probability", "ra_probability")
    print(f"{'batch size':>10}  {'items':>5}  {'seconds':>8}  {'items/s':>8}  " + "  ".join(keys))
    for r in rows:
        print(
            f"{r['batch_size']:>10}  {r['items']:>5}  {r['seconds']:>8}  {r['items_per_s']:>8}  "
            + "  ".join(f"{r[k]:.6g}" for k in keys)
        )
    same = all(abs(rows[0][k] - rows[1][k]) <= 1e-4 * max(1.0, abs(rows[1][k])) for k in keys)
    print(f"speed-up of batching: {rows[1]['seconds'] / rows[0]['seconds']:.2f}x (same numbers within 1e-4: {same})")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "torch_threads": torch.get_num_threads()}, indent=1))


if __name__ == "__main__":
    main()
