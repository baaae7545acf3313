"""Where the time of one training step goes: MOX memorization and NPO against plain fine-tuning.

    python bench/step_profile.py [--model DIR] [--steps 10] [--rounds 3] [--batch 8] [--kinds ...] [--json FILE]

The step is the training loop's own (src/mox_unlearn/train/): `collate` → `build_inputs` (the
objective's forward passes, policy and reference) → the objective → backward → gradient clipping →
AdamW step. Each part is timed separately (perf_counter; CPU, so no device synchronisation is needed;
on a GPU set CUDA_LAUNCH_BLOCKING=1 or read the parts as launch times). The reference model is
wrapped so its forward passes are timed on their own; "policy forward" is `build_inputs` minus them.

The baseline the issue asks for is plain fine-tuning on the same batch — the trained model's
forward with labels (transformers' own loss) on the forget and the retain micro-batch, one backward,
clipping, AdamW — plus one reference forward on the retain micro-batch, which is exactly the extra
work MOX's KL term needs. MOX (objective `memorize`: forget CE + KL(p_ref‖p_θ) on retain answers) is
then compared with that baseline; NPO (reference log-probs of the forget answers, cached after the
first epoch, plus retain NLL) is reported beside it.

Data: TOFU forget10 and retain90 from ../shared/data/tofu (or MOX_DATA_DIR); model: --model, or a
random Llama (hidden 256, 4 layers, MLP 1024) with a --vocab-token tokenizer trained on TOFU's text.
Steps cycle through fixed pairs of micro-batches, identical for every method. Methods run
round-robin, --rounds times, after one warm-up step each; the table reports the per-step median and
minimum over all timed steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mox_unlearn.data import collate, encode_records, load_records
from mox_unlearn.data.formatting import PromptFormat
from mox_unlearn.forward import Models, RefCache, StepBatch, answer_tokens, build_inputs
from mox_unlearn.io.loading import load_model, load_tokenizer
from mox_unlearn.losses import get_loss
from mox_unlearn.tiny import build_tiny_llama, build_tokenizer

PARTS = ("collate", "policy forward", "reference forward", "objective", "backward", "clip", "optimizer")


class TimedRef(torch.nn.Module):
    """The frozen reference, with the wall time of its forward passes added to `clock`."""

    def __init__(self, ref, clock: dict[str, float]):
        super().__init__()
        self.ref, self.clock = ref, clock

    def forward(self, *args, **kwargs):
        t = time.perf_counter()
        out = self.ref(*args, **kwargs)
        self.clock["reference forward"] += time.perf_counter() - t
        return out


def step(
    kind: str,
    model,
    ref,
    cache,
    optimizer,
    forget: list[dict],
    retain: list[dict],
    keys: list,
    pad_id: int,
    clock: dict[str, float],
) -> int:
    """One optimizer step of `kind` on one forget and one retain micro-batch; returns tokens processed."""
    t = time.perf_counter()
    fb, rb = collate(forget, pad_id), collate(retain, pad_id)
    t1 = time.perf_counter()
    clock["collate"] += t1 - t
    if kind in ("finetune", "finetune+ref"):
        loss = model(**fb).loss + model(**rb).loss
        t2 = time.perf_counter()
        clock["policy forward"] += t2 - t1
        if kind == "finetune+ref":
            with torch.no_grad():
                ref(input_ids=rb["input_ids"], attention_mask=rb["attention_mask"])
        t3 = time.perf_counter()
    else:
        objective = {"mox": "memorize", "npo": "npo", "graddiff": "graddiff"}[kind]
        spec = get_loss(objective)
        needs = spec.needs - {"target"}
        batch = StepBatch(
            forget=fb,
            forget_keys=keys,
            retain=rb,
            norms={"forget": max(answer_tokens(fb), 1), "retain": max(answer_tokens(rb), 1)},
        )
        ref_before = clock["reference forward"]
        inputs = build_inputs(needs, Models(model=model, ref=ref, cache=cache), batch)
        t2 = time.perf_counter()
        clock["policy forward"] += (t2 - t1) - (clock["reference forward"] - ref_before)
        hp = dict(spec.defaults)
        hp.pop("gamma_t", None)
        loss, _ = spec.fn(inputs, **hp)
        t3 = time.perf_counter()
        clock["objective"] += t3 - t2
    loss.backward()
    t4 = time.perf_counter()
    clock["backward"] += t4 - t3
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    t5 = time.perf_counter()
    clock["clip"] += t5 - t4
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    clock["optimizer"] += time.perf_counter() - t5
    return int(fb["attention_mask"].sum() + rb["attention_mask"].sum())


def main() -> int:
    default_data = os.environ.get("MOX_DATA_DIR", str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--data", default=str(Path(default_data) / "tofu"))
    ap.add_argument("--steps", type=int, default=10, help="timed steps per method and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=4096, help="tokenizer size of the random model (no --model)")
    ap.add_argument(
        "--kinds",
        default="finetune+ref,mox,npo",
        help="comma-separated steps to time: finetune, finetune+ref, mox, npo, graddiff",
    )
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model_dir = args.model
        else:
            texts = [
                f"{r['question']} {r['answer']}" for r in load_records(str(Path(args.data) / "full.jsonl")).records
            ]
            model_dir = str(
                build_tiny_llama(
                    Path(tmp) / "model",
                    build_tokenizer(texts, vocab_size=args.vocab),
                    hidden_size=256,
                    num_layers=4,
                    num_heads=4,
                    intermediate_size=1024,
                    max_position_embeddings=512,
                )
            )
        tok = load_tokenizer(model_dir)
        fmt = PromptFormat()
        forget = encode_records(tok, load_records(str(Path(args.data) / "forget10.jsonl")), fmt, args.max_length)
        retain = encode_records(tok, load_records(str(Path(args.data) / "retain90.jsonl")), fmt, args.max_length)
        n_pairs = args.steps
        pairs = [
            (list(range(i * args.batch, (i + 1) * args.batch)), list(range(i * args.batch, (i + 1) * args.batch)))
            for i in range(n_pairs)
        ]
        kinds = args.kinds.split(",")
        ref = load_model(model_dir, torch.float32).eval().requires_grad_(False)
        models = {k: load_model(model_dir, torch.float32).train() for k in kinds}
        optims = {k: torch.optim.AdamW(models[k].parameters(), lr=1e-5, weight_decay=0.01) for k in kinds}
        clocks = {k: dict.fromkeys(PARTS, 0.0) for k in kinds}
        timed_ref = {k: TimedRef(ref, clocks[k]) for k in kinds}
        caches = {k: RefCache(timed_ref[k]) for k in kinds}
        per_step: dict[str, list[float]] = {k: [] for k in kinds}
        tokens: dict[str, int] = dict.fromkeys(kinds, 0)
        for k in kinds:  # warm-up step, not timed
            f, r = pairs[0]
            step(
                k,
                models[k],
                timed_ref[k],
                caches[k],
                optims[k],
                [forget[i] for i in f],
                [retain[i] for i in r],
                [("forget", i) for i in f],
                tok.pad_token_id,
                dict.fromkeys(PARTS, 0.0),
            )
        for rnd in range(args.rounds):
            for k in kinds:
                for f, r in pairs:
                    t = time.perf_counter()
                    tokens[k] += step(
                        k,
                        models[k],
                        timed_ref[k],
                        caches[k],
                        optims[k],
                        [forget[i] for i in f],
                        [retain[i] for i in r],
                        [("forget", i) for i in f],
                        tok.pad_token_id,
                        clocks[k],
                    )
                    per_step[k].append(time.perf_counter() - t)
                print(
                    f"round {rnd + 1}/{args.rounds} {k}: median step {statistics.median(per_step[k][-n_pairs:]):.4f} s",
                    flush=True,
                )
    n = len(per_step[kinds[0]])
    rows = []
    for k in kinds:
        total = sum(per_step[k])
        rows.append(
            {
                "kind": k,
                "median_step_s": statistics.median(per_step[k]),
                "min_step_s": min(per_step[k]),
                "tokens_per_s": tokens[k] / total,
                "parts_s_per_step": {p: clocks[k][p] / n for p in PARTS},
            }
        )
    print(
        f"\nmodel {args.model or f'random Llama (hidden 256, 4 layers, vocab {len(tok)})'}; batch {args.batch} forget + "
        f"{args.batch} retain; {n} timed steps per method; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print("| step | median s | min s | tokens/s | " + " | ".join(PARTS) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(PARTS))
    for r in rows:
        print(
            f"| {r['kind']} | {r['median_step_s']:.4f} | {r['min_step_s']:.4f} | {r['tokens_per_s']:.0f} | "
            + " | ".join(f"{r['parts_s_per_step'][p]:.4f}" for p in PARTS)
            + " |"
        )
    by_kind = {r["kind"]: r for r in rows}
    if "finetune+ref" not in by_kind or "mox" not in by_kind:
        return 0
    base, mox = by_kind["finetune+ref"], by_kind["mox"]
    ratio = mox["median_step_s"] / base["median_step_s"]
    print(
        f"\nMOX step / (fine-tuning step + one reference forward): {ratio:.3f} (median), "
        f"{mox['min_step_s'] / base['min_step_s']:.3f} (min); target <= 1.15"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "rows": rows,
                    "ratio_median": ratio,
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "argv": sys.argv,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
