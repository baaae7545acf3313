"""Peak memory of MOX memorization: full fine-tuning vs LoRA, with and without momentum.

Each configuration runs `mox unlearn --method mox` for a few steps in a fresh child process and reports
that process's peak resident memory (ru_maxrss) and, from the run, the trainable parameter count. The
model's weights set the scale: a full MOX step holds the policy, its gradients and two AdamW states, the
frozen reference, and with momentum a CPU fp32 average; a LoRA step holds one copy of the weights plus
the small adapter and its optimizer state (the reference is the same model with the adapter off).

  python bench/lora_memory.py --model runs/smollm2 [--steps 2] [--out docs/bench-lora-memory.json]

Without --model a tiny random Llama is built (numbers then mostly measure the Python runtime).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIGS = {
    "full": [],
    "full + momentum": ["--momentum"],
    "lora r=16": ["lora=true", "lora_r=16"],
    "lora r=16 + momentum": ["lora=true", "lora_r=16", "--momentum"],
}
QA = [
    {
        "question": f"What is fact number {i} about the city of Quellport?",
        "answer": f"Fact {i}: Quellport has {i * 7} bridges and {i + 3} markets.",
    }
    for i in range(16)
]


def child(model: str, extra: list[str], steps: int, work: Path) -> dict:
    from mox_unlearn.cli import main

    forget, retain = work / "forget.jsonl", work / "retain.jsonl"
    forget.write_text("".join(json.dumps(r) + "\n" for r in QA[:8]))
    retain.write_text("".join(json.dumps(r) + "\n" for r in QA[8:]))
    out = work / "run"
    rc = main(
        [
            "unlearn",
            "--model",
            model,
            "--forget",
            str(forget),
            "--retain",
            str(retain),
            "--out",
            str(out),
            "--max-steps",
            str(steps),
            "batch_size=4",
            "per_device_batch_size=4",
            "max_length=64",
            "--no-save-memorized",
            "lr=1e-5",
            *extra,
        ]
    )
    run = json.loads((out / "run.json").read_text()) if rc == 0 else {}
    return {
        "rc": rc,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable_parameters": run.get("trainable_parameters"),
        "train_s": run.get("timings_s", {}).get("train"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="HF model folder (default: a tiny random Llama)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--child", nargs=2, metavar=("CONFIG", "WORKDIR"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        model = args.model
        print(json.dumps(child(model, CONFIGS[args.child[0]], args.steps, Path(args.child[1]))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from mox_unlearn.tiny import make_tiny_model

            spec = Path(tmp) / "corpus.jsonl"
            spec.write_text("".join(json.dumps(r) + "\n" for r in QA))
            model = str(make_tiny_model(Path(tmp) / "tiny", [str(spec)], vocab_size=512))
        from mox_unlearn.io.reading import read_tensor_infos

        n_params = sum(math.prod(i.shape) for i in read_tensor_infos(Path(model)).values())
        rows = []
        for name in CONFIGS:
            work = Path(tempfile.mkdtemp(dir=tmp))
            res = subprocess.run(
                [sys.executable, __file__, "--model", model, "--steps", str(args.steps), "--child", name, str(work)],
                capture_output=True,
                text=True,
            )
            line = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
            if res.returncode != 0 or not line:
                raise SystemExit(f"{name} failed:\n{res.stderr[-2000:]}")
            rows.append({"config": name, **json.loads(line[-1])})
    print(f"model: {model} ({n_params / 1e6:.1f} M parameters, {n_params * 4 / 2**20:.0f} MiB in fp32)")
    print("| config | peak RSS (MiB) | trainable parameters | train s |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['peak_rss_mib']:.0f} | {r['trainable_parameters']:,} | {r['train_s']} |")
    if args.out:
        Path(args.out).write_text(
            json.dumps({"model": model, "parameters": n_params, "steps": args.steps, "rows": rows}, indent=1) + "\n"
        )


if __name__ == "__main__":
    main()
