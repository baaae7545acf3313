"""Data parallelism: 2 CPU processes (DDP over gloo, launched by torchrun) against 1 process.

The loop builds one global plan per epoch (`epoch_plan` with the *global* micro-batch size
per_device_batch_size × processes) and each process takes its share with `slice_for_process`. So
2 processes × per_device 2 and 1 process × per_device 4, at the same batch_size / seed / data, see
the same examples in every optimizer step. Token means (CE, KL) are divided by the step's answer
tokens over all processes and micro-batches (train.step_token_norms), so DDP's average of the ranks'
losses is the pooled mean one process computes, whatever each rank's share of tokens.

`test_two_processes_match_one_process` uses answers of equal length and also checks, from what each
rank of that run sliced, that the ranks train on different retain items; the LoRA test does the same
with lora=true; `test_unequal_answer_lengths...` uses the fixture's answers of 10–19 tokens, where a
per-rank mean would differ by 24–39 % of the update.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mox_unlearn.data import encode_qa, epoch_plan
from mox_unlearn.data.formatting import PromptFormat
from mox_unlearn.train import slice_for_process

pytestmark = pytest.mark.slow  # trains, spawns processes or runs a miniature pipeline

# Runs `mox` (cli.main) with a callback through which each rank records which forget / retain indices
# of each global micro-batch it took (the loop logs only rank 0's losses, nothing about sampling).
RECORDING_LAUNCHER = """
import json, os, sys
from mox_unlearn.cli import main
from mox_unlearn.train import Callback

calls = []

class Recording(Callback):
    def on_micro_batch(self, run, batch, mine):
        for indices, taken in zip(batch, mine):
            calls.append({"indices": list(indices), "mine": list(taken)})

try:
    code = main(sys.argv[1:], callbacks=[Recording()])
finally:
    path = os.path.join(os.environ["MOX_SLICE_LOG"], "rank-%s.json" % os.environ.get("RANK", "0"))
    with open(path, "w") as f:
        json.dump(calls, f)
sys.exit(code)
"""


def _equal_length_qa(tokenizer, n: int) -> list[dict]:
    """`n` synthetic QA pairs whose answers (prefix + answer + EOS) all have the same token count."""
    names = ["Alia Vorn", "Bram Teller", "Cato Rime", "Dara Quell", "Esk Bram", "Fen Osk", "Gil Brell", "Hale Rime"]
    places = ["Quellport", "Osk", "Brell", "Vorn", "Teller"]
    buckets: dict[int, list[dict]] = collections.defaultdict(list)
    for name, place, digit in itertools.product(names, places, range(10)):
        rec = {"question": f"Where was {name} born?", "answer": f"{name} was born in {place} in 19{digit}0."}
        ex = encode_qa(tokenizer, rec["question"], rec["answer"], PromptFormat(), 512)
        buckets[sum(label != -100 for label in ex["labels"])].append(rec)
    largest = max(buckets.values(), key=len)
    assert len(largest) >= n, f"only {len(largest)} equal-length answers; widen the generator"
    return largest[:n]


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _unlearn(
    args: list[str], *, nproc: int, cwd: Path, launcher: Path | None = None, env_extra: dict[str, str] | None = None
) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    if nproc > 1:
        # --standalone: a free rendezvous port, so parallel test sessions do not collide on 29500.
        # ACCELERATE_USE_CPU: without it accelerate ignores torchrun's world on a CPU-only machine.
        env["ACCELERATE_USE_CPU"] = "1"
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
        head += [str(launcher)] if launcher else ["-m", "mox_unlearn.cli"]
    else:
        head = [sys.executable, "-m", "mox_unlearn.cli"]
    res = subprocess.run([*head, "unlearn", *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    if res.returncode != 0:  # not an AssertionError: the xfail below must not hide a crashed run
        raise RuntimeError(f"mox unlearn failed ({res.returncode}):\n{res.stderr[-3000:]}")


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(shard))
    assert tensors, f"no safetensors in {folder}"
    return tensors


def _difference(a: Path, b: Path, ref: Path) -> tuple[float, float]:
    """(max |a − b|, ‖a − b‖ / ‖a − θ_ref‖) over all tensors: the gap between two runs, absolute and
    relative to how far training moved the weights."""
    wa, wb, wr = _weights(a), _weights(b), _weights(ref)
    assert wa.keys() == wb.keys()
    max_abs = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    gap = torch.sqrt(sum(((wa[k] - wb[k]).double() ** 2).sum() for k in wa))
    moved = torch.sqrt(sum(((wa[k] - wr[k]).double() ** 2).sum() for k in wa))
    return max_abs, (gap / moved).item()


# Tolerances, from measurements on this 2-layer model (2 CPU cores, torch 2.13 CPU, 4 steps, lr 1e-3,
# α = 4): max |Δ| 6e-8 on OUT/memorized and 2.4e-7 on OUT/model (= α · the memorized gap),
# ‖Δ‖ / ‖θ_mem − θ_ref‖ 4e-7. The runs are not bitwise equal: the rank batches are padded to other
# lengths, gloo sums two partial gradients that one process sums in one backward, and AdamW's
# g / (√v + ε) enlarges relative rounding differences on elements whose gradient is near ε (at
# step 1 the KL gradient is pure rounding noise: θ = θ_ref). The bounds leave > 100× margin over
# rounding, yet are > 1000× below the gap of a real change of weighting: with the fixture's
# unequal answer lengths the same comparison gives ‖Δ‖ / ‖θ_mem − θ_ref‖ ≈ 0.26–0.39.
MAX_ABS_MEMORIZED = 1e-5
MAX_ABS_MODEL = 5e-5  # the extrapolation multiplies the memorized gap by α = 4
MAX_RELATIVE = 1e-4


def test_two_processes_match_one_process(tiny_model_dir, tokenizer, tmp_path):
    """2 processes × per_device 2 × accumulation 2 = 1 process × per_device 4 × accumulation 2 (batch 8).

    10 forget items: per epoch micro-batches of 4, 4, 2 (each rank gets 1 of the last two) in groups
    [[4, 4], [2]] — so the run covers accumulation under no_sync, a short last micro-batch, a short
    last group, the warm-up/decay schedule and two epochs of plans. Every answer has the same token
    count, so per-rank token means average to the pooled mean and the runs must agree to rounding.
    """
    qa = _equal_length_qa(tokenizer, 20)
    forget = _write_jsonl(tmp_path / "forget.jsonl", qa[:10])
    retain = _write_jsonl(tmp_path / "retain.jsonl", qa[10:])
    common = [
        "--model",
        str(tiny_model_dir),
        "--forget",
        str(forget),
        "--retain",
        str(retain),
        "--method",
        "mox",
        "batch_size=8",
        "max_steps=4",
        "lr=1e-3",
        "seed=0",
    ]
    launcher = tmp_path / "launch.py"
    launcher.write_text(RECORDING_LAUNCHER)
    slices = tmp_path / "slices"
    slices.mkdir()
    _unlearn(
        [*common, "--out", str(tmp_path / "two"), "per_device_batch_size=2"],
        nproc=2,
        cwd=tmp_path,
        launcher=launcher,
        env_extra={"MOX_SLICE_LOG": str(slices)},
    )  # where each rank writes its slices
    _unlearn([*common, "--out", str(tmp_path / "one"), "per_device_batch_size=4"], nproc=1, cwd=tmp_path)

    for out in ("two", "one"):
        plan = json.loads((tmp_path / out / "run.json").read_text())["plan"]
        assert plan["accumulation"] == 2 and plan["steps_per_epoch"] == 2 and plan["total_steps"] == 4, plan
    for sub, max_abs_bound in (("memorized", MAX_ABS_MEMORIZED), ("model", MAX_ABS_MODEL)):
        max_abs, rel = _difference(tmp_path / "two" / sub, tmp_path / "one" / sub, tiny_model_dir)
        assert max_abs <= max_abs_bound and rel <= MAX_RELATIVE, f"{sub}: max |Δ| {max_abs:.3g}, relative {rel:.3g}"

    # Retain sampling in the run itself: what each rank handed to slice_for_process, in call order
    # (forget then retain, per micro-batch), against the global plans of epochs 0 and 1.
    recorded = {rank: json.loads((slices / f"rank-{rank}.json").read_text()) for rank in (0, 1)}
    expected_args = [idx for epoch in (0, 1) for pair in epoch_plan(10, 10, 4, 0, epoch) for idx in pair]
    for rank in (0, 1):
        assert [c["indices"] for c in recorded[rank]] == expected_args, "the loop no longer slices epoch_plan's lists"
        assert [c["mine"] for c in recorded[rank]] == [slice_for_process(i, rank, 2) for i in expected_args]
    retain_calls = range(1, len(expected_args), 2)
    for k in retain_calls:
        r0, r1 = recorded[0][k]["mine"], recorded[1][k]["mine"]
        assert not set(r0) & set(r1), f"micro-batch {k // 2}: both ranks trained on retain items {set(r0) & set(r1)}"
        assert sorted(r0 + r1) == sorted(recorded[0][k]["indices"])


def test_lora_two_processes_match_one_process(tiny_model_dir, tokenizer, tmp_path):
    """lora=true under DDP: the reference is the same (unprepared) peft model with the adapter off, the
    adapter is what DDP averages; with equal answer lengths the merged outputs agree to rounding."""
    pytest.importorskip("peft")
    qa = _equal_length_qa(tokenizer, 16)
    forget = _write_jsonl(tmp_path / "forget.jsonl", qa[:8])
    retain = _write_jsonl(tmp_path / "retain.jsonl", qa[8:])
    common = [
        "--model",
        str(tiny_model_dir),
        "--forget",
        str(forget),
        "--retain",
        str(retain),
        "--method",
        "mox",
        "batch_size=4",
        "max_steps=2",
        "lr=1e-3",
        "seed=0",
        "lora=true",
        "lora_r=4",
    ]
    _unlearn([*common, "--out", str(tmp_path / "two"), "per_device_batch_size=2"], nproc=2, cwd=tmp_path)
    _unlearn([*common, "--out", str(tmp_path / "one"), "per_device_batch_size=4"], nproc=1, cwd=tmp_path)
    # measured: max |Δ| 4e-9 (memorized) and 1e-8 (model), relative 5e-7
    for sub, max_abs_bound in (("memorized", MAX_ABS_MEMORIZED), ("model", MAX_ABS_MODEL)):
        max_abs, rel = _difference(tmp_path / "two" / sub, tmp_path / "one" / sub, tiny_model_dir)
        assert max_abs <= max_abs_bound and rel <= MAX_RELATIVE, f"{sub}: max |Δ| {max_abs:.3g}, relative {rel:.3g}"


def test_unequal_answer_lengths_two_processes_match_one_process(tiny_model_dir, qa_files, tmp_path):
    """The fixture's answers have 10–19 tokens: at step 1 rank 0 holds 27 answer tokens and rank 1 37.
    Token means divided by each rank's own count would weight them 1/54 and 1/74 instead of 1/64; the
    loop divides by the step's token count over all ranks (train.step_token_norms), so they match."""
    forget, retain = qa_files
    common = [
        "--model",
        str(tiny_model_dir),
        "--forget",
        str(forget),
        "--retain",
        str(retain),
        "--method",
        "mox",
        "batch_size=4",
        "max_steps=2",
        "lr=1e-3",
        "seed=0",
        "save_memorized=false",
    ]
    _unlearn([*common, "--out", str(tmp_path / "two"), "per_device_batch_size=2"], nproc=2, cwd=tmp_path)
    _unlearn([*common, "--out", str(tmp_path / "one"), "per_device_batch_size=4"], nproc=1, cwd=tmp_path)
    max_abs, rel = _difference(tmp_path / "two" / "model", tmp_path / "one" / "model", tiny_model_dir)
    assert max_abs <= MAX_ABS_MODEL and rel <= MAX_RELATIVE, f"max |Δ| {max_abs:.3g}, relative {rel:.3g}"


@pytest.mark.parametrize("n_forget,n_retain,per_device,world", [(10, 10, 2, 2), (10, 3, 2, 2), (40, 400, 4, 4)])
def test_retain_sampling_differs_across_ranks(n_forget, n_retain, per_device, world):
    """From the pure functions the loop uses: each rank trains on its own share of the global retain draw.

    Where the retain set holds at least a global micro-batch the draw is without replacement, so the
    ranks' retain items are disjoint; (10, 3) draws with replacement (ranks may share an index by
    chance), and there the shares must still together be the global draw."""
    for epoch in range(2):
        for _, retain_idx in epoch_plan(n_forget, n_retain, per_device * world, seed=0, epoch=epoch):
            mine = [slice_for_process(retain_idx, rank, world) for rank in range(world)]
            assert sorted(sum(mine, [])) == sorted(retain_idx)
            if n_retain >= len(retain_idx):
                assert sum(len(set(m)) for m in mine) == len(retain_idx), f"ranks share retain items: {mine}"
    # rank 0 against rank 1 over the first epoch of the two-process run above
    plan = epoch_plan(10, 10, 4, seed=0, epoch=0)
    rank0 = [slice_for_process(r, 0, 2) for _, r in plan]
    rank1 = [slice_for_process(r, 1, 2) for _, r in plan]
    assert rank0 != rank1 and all(not set(a) & set(b) for a, b in zip(rank0, rank1))
