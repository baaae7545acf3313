"""Memory of a MOX run per configuration, computed from the model architectures (and, optionally, measured).

    python bench/memory_table.py                         # the computed tables, as Markdown
    python bench/memory_table.py --measure /work/smollm2 # + peak RSS of `mox unlearn` (mox, npo) on this CPU

Computed: parameter counts from the architecture numbers (hidden size, MLP size, layers, attention /
key-value heads, vocabulary, tied embeddings), then bytes per parameter for each piece of state the
training loop (src/mox_unlearn/train/) holds: the trained weights, the frozen reference θ_ref (a
second full copy; under FSDP2 sharded like the trained weights, src/mox_unlearn/sharding.py),
gradients, AdamW's m and v in fp32, and, with --momentum, the CPU fp32 running average (under FSDP2
each process keeps the average of its own shards only). Activations, the CUDA context,
allocator fragmentation and communication buffers are excluded (see the activation estimate table).

Measured (--measure MODEL): each method runs `mox unlearn` for --steps optimizer steps (per-device
batch 2, max_length 64, save_memorized=false) in its own child process, one after the other, and the
child reports its own peak resident set size (ru_maxrss); a baseline child imports the same modules
and loads nothing, to show what the Python runtime costs.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30


@dataclass(frozen=True)
class Arch:
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    published: float  # parameter count as published, for the check

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def linears(self) -> list[tuple[int, int]]:
        """(in, out) of every linear layer of one decoder layer: q, k, v, o, gate, up, down."""
        h, kv, i = self.hidden, self.kv_heads * self.head_dim, self.intermediate
        q = self.heads * self.head_dim
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    def params(self) -> int:
        per_layer = sum(a * b for a, b in self.linears()) + 2 * self.hidden  # + the two RMSNorm weights
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * per_layer + self.hidden  # + the final norm

    def lora_params(self, r: int) -> int:
        """LoRA on every linear layer of the decoder layers (peft's all-linear: not the output head):
        A [r, in] and B [out, r] per layer."""
        return self.layers * sum(r * (a + b) for a, b in self.linears())


ARCHS = [
    Arch("SmolLM2-135M", 576, 1536, 30, 9, 3, 49152, True, 134.5e6),
    Arch("Llama-3.2-1B", 2048, 8192, 16, 32, 8, 128256, True, 1.24e9),
    Arch("Llama-2-7B", 4096, 11008, 32, 32, 32, 32000, False, 6.74e9),
]
LORA_R = 16


@dataclass(frozen=True)
class Config:
    """Bytes per GPU as functions of P (model parameters), L (LoRA parameters)."""

    name: str
    weights: str  # how the formula reads, for the table
    fn: object  # (P, L) -> dict of component -> bytes


def _full(weights: float, ref: float, grads: float, optim: float, extra: float = 0.0, momentum: float = 4):
    return lambda p, lo: {
        "trained weights": weights * p,
        "θ_ref": ref * p,
        "gradients": grads * p,
        "AdamW state": optim * p,
        "extra": extra * p,
        "host: momentum": momentum * p,
    }


def _lora(base: float):
    # the reference is the same weights with the adapter off (lora.AdapterOff): no second copy; peft keeps
    # the adapter in fp32 (autocast_adapter_dtype) even over bf16 base weights
    return lambda p, lo: {
        "trained weights": base * p + 4 * lo,
        "θ_ref": 0.0,
        "gradients": 4 * lo,
        "AdamW state": 8 * lo,
        "extra": 0.0,
        "host: momentum": 4 * lo,
    }


CONFIGS = [
    Config("1 GPU, fp32", "4 + 4 ref + 4 grad + 8 AdamW", _full(4, 4, 4, 8)),
    Config("1 GPU, bf16-mixed", "as fp32 + 2 (autocast bf16 weight copies)", _full(4, 4, 4, 8, extra=2)),
    Config("DDP, fp32, per GPU", "1 GPU + 4 (DDP gradient buckets)", _full(4, 4, 4, 8, extra=4)),
    Config("DDP, bf16-mixed, per GPU", "1 GPU bf16-mixed + 4 (buckets)", _full(4, 4, 4, 8, extra=6)),
    Config(
        "FSDP2 FULL_SHARD bf16-mixed, N=2", "(4 + 4 ref + 4 + 8)/N", _full(4 / 2, 4 / 2, 4 / 2, 8 / 2, momentum=4 / 2)
    ),
    Config(
        "FSDP2 FULL_SHARD bf16-mixed, N=8", "(4 + 4 ref + 4 + 8)/N", _full(4 / 8, 4 / 8, 4 / 8, 8 / 8, momentum=4 / 8)
    ),
    Config(f"LoRA r={LORA_R}, 1 GPU, base fp32", "4 base (= θ_ref) + 16 per LoRA param", _lora(4)),
    Config(f"LoRA r={LORA_R}, 1 GPU, base bf16 (dtype=bfloat16)", "2 base + 16 per LoRA param", _lora(2)),
]


def gib(x: float) -> str:
    return f"{x / GIB:.2f}" if x < 10 * GIB else f"{x / GIB:.1f}"


def architecture_table() -> list[str]:
    rows = [
        "| model | hidden | MLP | layers | heads / kv | vocab | tied | parameters (computed) | published | "
        f"LoRA r={LORA_R} params | LoRA share |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in ARCHS:
        p, lo = a.params(), a.lora_params(LORA_R)
        rows.append(
            f"| {a.name} | {a.hidden} | {a.intermediate} | {a.layers} | {a.heads} / {a.kv_heads} | {a.vocab} | "
            f"{'yes' if a.tied else 'no'} | {p / 1e6:,.1f} M | {a.published / 1e6:,.0f} M | {lo / 1e6:.2f} M | "
            f"{100 * lo / p:.2f} % |"
        )
    return rows


def summary_table() -> list[str]:
    head = "| configuration | bytes per parameter | " + " | ".join(f"{a.name} per GPU (GiB)" for a in ARCHS) + " |"
    rows = [head, "|" + "---|" * (2 + len(ARCHS))]
    for c in CONFIGS:
        cells = []
        for a in ARCHS:
            parts = c.fn(a.params(), a.lora_params(LORA_R))
            cells.append(gib(sum(v for k, v in parts.items() if not k.startswith("host"))))
        rows.append(f"| {c.name} | {c.weights} | " + " | ".join(cells) + " |")
    return rows


def breakdown_table(a: Arch) -> list[str]:
    keys = ["trained weights", "θ_ref", "gradients", "AdamW state", "extra"]
    rows = [
        f"| {a.name}: configuration | "
        + " | ".join(keys)
        + " | total per GPU | host RAM: momentum (per update for LoRA) |",
        "|" + "---|" * (len(keys) + 3),
    ]
    for c in CONFIGS:
        parts = c.fn(a.params(), a.lora_params(LORA_R))
        total = sum(parts[k] for k in keys)
        rows.append(
            f"| {c.name} | "
            + " | ".join(gib(parts[k]) for k in keys)
            + f" | **{gib(total)}** | {gib(parts['host: momentum'])} |"
        )
    return rows


def activation_table(batch: int = 8, length: int = 512) -> list[str]:
    """Order-of-magnitude activation memory of one trained forward pass, for scale only."""
    tokens = batch * length
    rows = [
        f"| model (per_device_batch_size {batch} × max_length {length}) | one fp32 logits tensor B·T·V | "
        "stored per trained pass, bf16 (≈ 2·B·T·(6h + 2h_kv + 4·MLP) per layer) | with gradient checkpointing (2·B·T·h per layer) |",
        "|---|---|---|---|",
    ]
    for a in ARCHS:
        logits = 4 * tokens * a.vocab
        per_layer = 2 * tokens * (6 * a.hidden + 2 * a.kv_heads * a.head_dim + 4 * a.intermediate)
        ckpt = 2 * tokens * a.hidden * a.layers + per_layer
        rows.append(f"| {a.name} | {gib(logits)} | {gib(per_layer * a.layers)} | {gib(ckpt)} |")
    return rows


# ----------------------------------------------------------------------------- measurement


QA = [
    {
        "question": f"What is fact number {i} about the city of Quellport?",
        "answer": f"Fact {i}: Quellport has {i * 7} bridges and {i + 3} markets.",
    }
    for i in range(16)
]


def child(model: str, method: str | None, steps: int, work: Path) -> dict:
    """Runs in a fresh process: `mox unlearn` (or, with method None, only the imports); its own peak RSS."""
    import transformers  # noqa: F401

    from mox_unlearn.cli import main  # noqa: F401  (the baseline pays for the same imports)
    from mox_unlearn.train import Callback

    run, peak_training = {}, {}

    class Record(Callback):
        def on_step_end(self, run) -> None:  # after each step: the peak so far covers loading and training
            peak_training["bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            peak_training["current"] = _current_rss()

    if method is not None:
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
                "--method",
                method,
                "--max-steps",
                str(steps),
                "batch_size=2",
                "per_device_batch_size=2",
                "max_length=64",
                "save_memorized=false",
            ],
            callbacks=[Record()],
        )
        if rc != 0:
            raise SystemExit(rc)
        run = json.loads((out / "run.json").read_text())
    return {
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_rss_training_bytes": peak_training.get("bytes"),
        "rss_after_last_step_bytes": peak_training.get("current"),
        "trainable_parameters": run.get("trainable_parameters"),
        "timings_s": run.get("timings_s"),
    }


def _current_rss() -> int | None:
    """Resident set size now (Linux /proc), not the peak: what stays allocated between steps."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


def measure(model: str, steps: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("baseline", "mox", "npo"):  # one after the other, never concurrently
            work = Path(tempfile.mkdtemp(dir=tmp))
            res = subprocess.run(
                [sys.executable, __file__, "--child", method, str(work), "--measure", model, "--steps", str(steps)],
                capture_output=True,
                text=True,
            )
            line = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
            if res.returncode != 0 or not line:
                raise SystemExit(f"{method} failed:\n{res.stderr[-3000:]}")
            rows.append({"method": method, **json.loads(line[-1])})
    return rows


def measured_table(model: str, rows: list[dict]) -> list[str]:
    import math

    from mox_unlearn.io.reading import read_tensor_infos

    p = sum(math.prod(i.shape) for i in read_tensor_infos(Path(model)).values())
    base = next(r for r in rows if r["method"] == "baseline")["peak_rss_bytes"]
    out = [
        f'Model {model}: {p / 1e6:.1f} M parameters in its safetensors; computed "1 GPU, fp32" state = 20 bytes × P = '
        f"{gib(20 * p)} GiB.",
        "",
        "| method | RSS after the last step, minus the baseline (GiB) | peak RSS to the last step (GiB) | "
        "the same minus the baseline | peak RSS of the whole run, incl. extrapolation and saving (GiB) | "
        "computed state (GiB) | train s | total s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rss = r["peak_rss_bytes"]
        if r["method"] == "baseline":
            out.append(f"| imports only (baseline) | – | – | – | {gib(rss)} | – | – | – |")
            continue
        t = r.get("timings_s") or {}
        trained = r["peak_rss_training_bytes"]
        steady = r.get("rss_after_last_step_bytes")
        steady = gib(steady - base) if steady else "–"
        out.append(
            f"| {r['method']} | {steady} | {gib(trained)} | {gib(trained - base)} | {gib(rss)} | {gib(20 * p)} | "
            f"{t.get('train')} | {t.get('total')} |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--measure", metavar="MODEL", help="also measure peak RSS of mox and npo on this HF folder (CPU)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--json", help="write the measurement as JSON here")
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "WORKDIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        method = None if args.child[0] == "baseline" else args.child[0]
        print(json.dumps(child(args.measure, method, args.steps, Path(args.child[1]))))
        return
    lines = [
        "### Parameters (computed from the architecture)",
        "",
        *architecture_table(),
        "",
        "### Memory per GPU, activations excluded (GiB = 2³⁰ bytes)",
        "",
        *summary_table(),
        "",
    ]
    for a in ARCHS:
        lines += [*breakdown_table(a), ""]
    lines += ["### Activations, for scale (estimate)", "", *activation_table(), ""]
    if args.measure:
        rows = measure(args.measure, args.steps)
        lines += ["### Measured on this machine (CPU, one process, fp32)", "", *measured_table(args.measure, rows), ""]
        if args.json:
            Path(args.json).write_text(
                json.dumps({"model": args.measure, "steps": args.steps, "rows": rows}, indent=1) + "\n"
            )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
