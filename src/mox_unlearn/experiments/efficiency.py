"""efficiency (paper Section 3.2): FLOPs per sample of one MOX memorization step against one NPO step (counted
by torch on a real batch), FLOPs and wall time of extrapolation and of a momentum update, training time per
sample, parameter and optimizer memory, and whether a momentum update on the CPU slows training down.
Everything is measured on the workspace's target model.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mox_unlearn.experiments.measure import (
    FIVE_ALPHAS,
    OVERLAP_MAX_STEPS,
    OVERLAP_MIN_STEPS,
    Step,
    adamw_state_bytes,
    cpu_copy,
    extrapolate_seconds,
    extrapolation_flops_per_element,
    floating_elements,
    machine,
    make_step,
    median_seconds,
    momentum_flops_per_element,
    overlap,
    reference_passes,
    step_flops,
    tensor_bytes,
    train_seconds_per_sample,
    train_steps,
    training_device,
)
from mox_unlearn.experiments.training import finish
from mox_unlearn.experiments.workspace import Workspace
from mox_unlearn.report import figure, save_figure

if TYPE_CHECKING:
    from mox_unlearn.config import UnlearnConfig

# ----------------------------------------------------------------------------- the experiment


def _row(measure: str, mox: Any, npo: Any, unit: str, note: str = "") -> dict:
    return {"measure": measure, "mox": _count(mox, unit), "npo": _count(npo, unit), "unit": unit, "note": note}


def _count(value: Any, unit: str) -> Any:
    """Whole numbers for counts (a fraction of a FLOP or byte per sample carries no information)."""
    if unit in ("FLOPs", "FLOPs/sample", "bytes") and isinstance(value, float) and math.isfinite(value):
        if unit == "FLOPs/sample" or value.is_integer():
            return round(value)
    return value


def _autocast(u: UnlearnConfig, device: torch.device) -> Any:
    """The training loop's mixed precision (accelerate's autocast) as a plain torch autocast."""
    from mox_unlearn.train import mixed_precision

    mode = mixed_precision(u.mixed_precision)
    if mode == "no":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if mode == "bf16" else torch.float16)


@dataclass
class Bench:
    """What every efficiency measurement shares: the three runs, their configs, and the loaded models."""

    runs: dict[str, Path]  # mox, mox-momentum, npo
    configs: dict[str, UnlearnConfig]
    device: torch.device
    policy: Any  # the model being trained (its weights change as the measurements step it)
    ref: Any  # frozen θ_ref
    tokenizer: Any
    where: dict[str, Any]

    @property
    def mox(self) -> UnlearnConfig:
        return self.configs["mox"]


def load_bench(ws: Workspace) -> Bench:
    """Train (or reuse) MOX, MOX with momentum and NPO; load policy and reference as training does."""
    from mox_unlearn.io.loading import load_model, load_tokenizer, torch_dtype

    runs, configs = {}, {}
    for name in ("mox", "mox-momentum", "npo"):
        runs[name], configs[name] = ws.run_method(name)
    u, device = configs["mox"], training_device()
    dtype = torch_dtype(u.dtype)
    policy = load_model(u.model, dtype).to(device).train()
    ref = load_model(u.model, dtype).to(device).eval().requires_grad_(False)
    return Bench(runs, configs, device, policy, ref, load_tokenizer(u.model), machine())


def efficiency(ws: Workspace) -> dict:
    """Section 3.2: MOX's training step against NPO's, extrapolation and momentum cost, memory, overlap."""
    b = load_bench(ws)
    mox = make_step("mox", b.mox, b.policy, b.ref, b.tokenizer, b.device, cache=b.mox.cache_ref)
    npo = make_step("npo", b.configs["npo"], b.policy, b.ref, b.tokenizer, b.device, cache=b.configs["npo"].cache_ref)
    flop_rows, step_flops_per_sample = _step_flop_rows(b, mox, npo)
    momentum, update_s, time_rows = _time_rows(ws, b)
    rows = [
        *flop_rows,
        *_update_flop_rows(b, step_flops_per_sample),
        *time_rows,
        *_memory_rows(b, momentum, mox, npo),
        *_overlap_rows(b, mox, momentum, update_s),
    ]
    n_float = floating_elements(b.mox.model)
    note = (
        f"Measured on {b.where['device']} ({b.where['cpu_count']} CPU cores, {b.where['torch_threads']} torch "
        f"threads, torch {b.where['torch']}); model {b.mox.model} in {b.mox.dtype}, {n_float:,} parameters. A "
        f"sample is one forget example with its paired retain example (micro-batch of {mox.samples}). FLOPs of "
        "training are counted by torch.utils.flop_counter.FlopCounterMode (matrix products and attention), those "
        "of extrapolation and momentum (elementwise only) by a counter of elementwise ops. Times are wall clock."
    )
    return finish(
        ws,
        "efficiency",
        rows,
        "Computational efficiency of MOX against NPO (paper Section 3.2)",
        _plot_efficiency,
        note,
    )


def _step_flop_rows(b: Bench, mox: Step, npo: Step) -> tuple[list[dict], float]:
    """(a) FLOPs of one optimizer step per sample, split into policy and reference passes; and MOX's total."""
    uncached = make_step("npo", b.configs["npo"], b.policy, b.ref, b.tokenizer, b.device, cache=False)
    with torch.no_grad():
        reference_passes(npo)  # the first epoch fills NPO's reference cache; later epochs hit it
    f_mox, f_npo, f_warm = step_flops(mox), step_flops(uncached), step_flops(npo)
    total = lambda f, s: (f["forward"] + f["backward"]) / s.samples  # noqa: E731
    policy = lambda f, s: (f["forward"] + f["backward"] - f["reference"]) / s.samples  # noqa: E731
    rows = [
        _row(
            "step FLOPs per sample",
            total(f_mox, mox),
            total(f_npo, uncached),
            "FLOPs/sample",
            "one optimizer step on the first micro-batch, counted by torch (matmuls + attention): policy "
            "forward+backward on forget and retain, plus the reference forward (MOX: retain logits for the KL; "
            "NPO: forget log-probs)",
        ),
        _row(
            "step FLOPs per sample, reference cache warm",
            total(f_mox, mox),
            total(f_warm, npo),
            "FLOPs/sample",
            "NPO's reference log-probs on the forget answers never change and are cached after epoch 1 "
            "(cache_ref); MOX's reference logits are on random retain batches, not cached",
        ),
        _row("policy forward+backward FLOPs per sample", policy(f_mox, mox), policy(f_npo, uncached), "FLOPs/sample"),
        _row(
            "reference forward FLOPs per sample",
            f_mox["reference"] / mox.samples,
            f_npo["reference"] / uncached.samples,
            "FLOPs/sample",
        ),
    ]
    return rows, total(f_mox, mox)


def _update_flop_rows(b: Bench, step_flops_per_sample: float) -> list[dict]:
    """(b) FLOPs of extrapolation and of a momentum update, per parameter and for the whole model."""
    n_float = floating_elements(b.mox.model)
    per_param = extrapolation_flops_per_element(b.mox.alpha)
    mom = b.configs["mox-momentum"]
    return [
        _row(
            "extrapolation FLOPs per parameter",
            per_param,
            None,
            "FLOPs",
            "counted over the elementwise ops of extrapolate_tensors on a probe tensor: (1+α)·θ_ref, α·θ_mem, "
            "and their difference",
        ),
        _row(
            "extrapolation FLOPs, whole model, one α",
            per_param * n_float,
            None,
            "FLOPs",
            f"per-parameter count × {n_float:,} floating-point parameters; independent of the data size",
        ),
        _row("extrapolation FLOPs / step FLOPs per sample", per_param * n_float / step_flops_per_sample, None, "×"),
        _row(
            "momentum update FLOPs per parameter",
            momentum_flops_per_element(mom.eta, mom.alpha),
            None,
            "FLOPs",
            "steady-state update: the extrapolation, then θ̄·(1−η) + η·θ_for",
        ),
    ]


def _time_rows(ws: Workspace, b: Bench) -> tuple[Any, float, list[dict]]:
    """(c) training time per sample, extrapolation to disk, one momentum update; returns the momentum average too."""
    from mox_unlearn.momentum import MomentumAverage

    (s_mox, n_mox), (s_npo, n_npo) = (train_seconds_per_sample(b.runs[m]) for m in ("mox", "npo"))
    s_mom, _ = train_seconds_per_sample(b.runs["mox-momentum"])
    ref_dir, mem = Path(b.mox.model), b.runs["mox"] / "memorized"
    scratch = Path(tempfile.mkdtemp(prefix=".scratch-", dir=ws.out("efficiency")))
    try:
        one = extrapolate_seconds(ref_dir, mem, [b.mox.alpha], scratch)
        five = extrapolate_seconds(ref_dir, mem, FIVE_ALPHAS, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    mom = b.configs["mox-momentum"]
    momentum = MomentumAverage(mom.eta, mom.alpha)
    ref_params = dict(b.ref.named_parameters())
    momentum.update(ref_params, b.policy.named_parameters())  # the first update only stores θ_for
    update_s = median_seconds(lambda: momentum.update(ref_params, b.policy.named_parameters()))
    copy_s = median_seconds(lambda: cpu_copy(b.policy.named_parameters()), device=b.device)
    rows = [
        _row(
            "training time per sample",
            s_mox,
            s_npo,
            "s/sample",
            f"run.json timings_s.train / forget samples seen ({n_mox:g} MOX, {n_npo:g} NPO); includes the "
            "per-epoch saves of save_epochs",
        ),
        _row(
            "training time per sample, MOX with momentum",
            s_mom,
            None,
            "s/sample",
            "the same run with a momentum update at every epoch end",
        ),
        _row(
            "extrapolate 1 α (read, compute, write)",
            one,
            None,
            "s",
            "extrapolate_folders from one θ_mem to disk, median of 3",
        ),
        _row(
            f"extrapolate {len(FIVE_ALPHAS)} α in one pass",
            five,
            None,
            "s",
            f"α = {', '.join(f'{a:g}' for a in FIVE_ALPHAS)}; the inputs are read once; median of 3",
        ),
        _row(
            "momentum update (MomentumAverage.update)",
            update_s,
            None,
            "s",
            "from the training-device weights, as the loop calls it; median of 3",
        ),
        _row("copy θ to CPU fp32", copy_s, None, "s", "what a background update needs first; median of 3"),
    ]
    return momentum, update_s, rows


def _memory_rows(b: Bench, momentum: Any, mox: Step, npo: Step) -> list[dict]:
    """(d) bytes of the parameters each method holds while training, and of AdamW's state after one step."""
    theta = tensor_bytes(b.ref.parameters())
    held = tensor_bytes(b.policy.parameters()) + theta
    avg = tensor_bytes(momentum.avg.values())
    u_npo = b.configs["npo"]
    return [
        _row("θ (parameters of the target model)", theta, theta, "bytes", f"dtype {b.mox.dtype}"),
        _row(
            "parameters held in training",
            held + avg,
            held,
            "bytes",
            "MOX with momentum: policy + frozen reference + momentum average (CPU, fp32); NPO: policy + "
            "reference. MOX without momentum holds policy + reference, like NPO",
        ),
        _row("parameters held in training, in θ", (held + avg) / theta, held / theta, "×"),
        _row(
            "parameters on the training device",
            held,
            held,
            "bytes",
            "the momentum average lives on the CPU, so the training device holds what NPO's does",
        ),
        _row(
            "AdamW state after one step",
            adamw_state_bytes(mox, b.mox.lr, b.mox.weight_decay),
            adamw_state_bytes(npo, u_npo.lr, u_npo.weight_decay),
            "bytes",
        ),
    ]


def _overlap_rows(b: Bench, mox: Step, momentum: Any, update_s: float) -> list[dict]:
    """The claim that extrapolation can run on the CPU while the accelerator trains: steps alone vs steps with
    momentum updates (into `momentum`, from CPU copies of θ_ref and θ) looping in a background thread.

    Host memory meanwhile: the average and the two copies, 3×θ in fp32.
    """
    optimizer = torch.optim.AdamW(b.policy.parameters(), lr=b.mox.lr, weight_decay=b.mox.weight_decay)
    autocast = _autocast(b.mox, b.device)
    train_steps(mox, optimizer, 1, autocast)  # warm-up
    step_s = median_seconds(lambda: train_steps(mox, optimizer, 1, autocast), device=b.device)
    n_steps = max(OVERLAP_MIN_STEPS, min(OVERLAP_MAX_STEPS, math.ceil(3 * update_s / max(step_s, 1e-9))))
    ref_cpu, snapshot = cpu_copy(b.ref.named_parameters()), cpu_copy(b.policy.named_parameters())
    ov = overlap(
        lambda: train_steps(mox, optimizer, n_steps, autocast),
        lambda: momentum.update(ref_cpu, snapshot.items()),
        b.device,
    )
    shared = (
        "the updates and the training share the CPU"
        if b.device.type == "cpu"
        else f"training runs on {b.where['device']}, the updates on the CPU"
    )
    return [
        _row("MOX training steps alone", ov["alone"], None, "s", f"{n_steps} steps; mean of a run before and after"),
        _row(
            "MOX training steps, momentum updates in a background thread",
            ov["together"],
            None,
            "s",
            f"the same {n_steps} steps; {ov['updates']} background updates finished, median {ov['update_s']:.3g} s "
            "each; the thread updates back to back, a harsher load than the loop's one update per epoch",
        ),
        _row(
            "slowdown of training from background updates", 100 * (ov["together"] / ov["alone"] - 1), None, "%", shared
        ),
    ]


def _plot_efficiency(rows: list[dict], path: Path) -> Path:
    """Horizontal log bars, MOX blue and NPO orange: FLOPs (per sample, per extrapolation) and wall times."""
    from matplotlib.patches import Patch

    fig, axes = figure(1, 2, size=(15, 5.5))
    colors = {"mox": "tab:blue", "npo": "tab:orange"}
    panels = (
        (
            axes[0][0],
            "FLOPs (log)",
            "FLOPs: one training step per sample vs one extrapolation",
            lambda r: r["unit"] == "FLOPs/sample" or r["measure"].startswith("extrapolation FLOPs, whole"),
        ),
        (axes[0][1], "seconds (log)", "Wall time", lambda r: r["unit"] in ("s/sample", "s")),
    )
    for ax, xlabel, title, keep in panels:
        bars = [
            (f"{r['measure']} [{r['unit']}]", r[m], colors[m])
            for r in rows
            if keep(r)
            for m in colors
            if isinstance(r[m], (int, float)) and r[m] > 0
        ]
        ax.barh(range(len(bars)), [v for _, v, _ in bars], color=[c for _, _, c in bars])
        for i, (_, v, _) in enumerate(bars):
            ax.annotate(f"{v:.3g}", (v, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        ax.set_yticks(range(len(bars)), [label for label, _, _ in bars], fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        if bars:  # room for the smallest bar and for the value labels
            ax.set_xlim(min(v for _, v, _ in bars) / 3, max(v for _, v, _ in bars) * 8)
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3, which="both")
        ax.legend(handles=[Patch(color=c, label=m.upper()) for m, c in colors.items()], fontsize=8, loc="best")
    return save_figure(fig, path)
