"""What the efficiency experiment (experiments/efficiency.py) measures with: the machine, medians of
wall time, FLOPs counted by torch, one real training step of the loop's own objective, tensor and
optimizer memory, and whether a background momentum update slows training down. No rows, no output."""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mox_unlearn.errors import MoxError
from mox_unlearn.io.reading import read_tensor_infos

if TYPE_CHECKING:
    from mox_unlearn.config import UnlearnConfig
    from mox_unlearn.forward import Models, StepBatch
    from mox_unlearn.train import Resolved


FIVE_ALPHAS = (0.5, 1.0, 2.0, 4.0, 8.0)  # the paper times five extrapolation strengths from one θ_mem
# background-update test: enough steps to cover ~3 momentum updates, within these bounds
OVERLAP_MIN_STEPS, OVERLAP_MAX_STEPS = 5, 200


def machine() -> dict[str, Any]:
    """What the numbers were measured on (they mean little without it)."""
    cuda = torch.cuda.is_available()
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
    }


def training_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], repeats: int = 3, device: torch.device | None = None) -> float:
    """Median wall time of `repeats` calls (the median shrugs off one slow call, e.g. a first page fault)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if device is not None:
            _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ----------------------------------------------------------------------------- FLOP counting


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of `fn` as torch counts them: matrix products and attention (elementwise ops are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


class ElementwiseFlops:
    """Counts the arithmetic of elementwise add / sub / mul / div ops run inside `with` (1 FLOP per output
    element; 2 for add / sub with a scale `alpha` ≠ 1, a multiply-add). FlopCounterMode ignores these, and
    they are all that extrapolation and the momentum update do."""

    OPS = ("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_")

    def __init__(self) -> None:
        self.flops = 0

    def __enter__(self) -> ElementwiseFlops:
        from torch.utils._python_dispatch import TorchDispatchMode

        owner = self
        packets = {getattr(torch.ops.aten, op) for op in self.OPS}

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                if func.overloadpacket in packets and isinstance(out, torch.Tensor):
                    scaled = func.overloadpacket.__name__.startswith(("add", "sub")) and kwargs.get("alpha", 1) != 1
                    owner.flops += out.numel() * (2 if scaled else 1)
                return out

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)


def _probe(numel: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(numel, generator=g), torch.randn(numel, generator=g)


def extrapolation_flops_per_element(alpha: float, numel: int = 4096) -> float:
    """Per element of one Eq. 8 extrapolation, counted as `extrapolate_tensors` computes it on a probe tensor."""
    from mox_unlearn.extrapolation import extrapolate_tensors

    ref, mem = _probe(numel)
    with ElementwiseFlops() as counter:
        extrapolate_tensors(ref, mem, [alpha])
    return counter.flops / numel


def momentum_flops_per_element(eta: float, alpha: float, numel: int = 4096) -> float:
    """Per element of one steady-state MomentumAverage.update (the first update only stores θ_for)."""
    from mox_unlearn.momentum import MomentumAverage

    ref, cur = _probe(numel)
    avg = MomentumAverage(eta, alpha)
    avg.update({"w": ref}, [("w", cur)])
    with ElementwiseFlops() as counter:
        avg.update({"w": ref}, [("w", cur)])
    return counter.flops / numel


def floating_elements(model_dir: str | Path) -> int:
    """Floating-point weights of a model folder, from the safetensors headers (what extrapolation touches)."""
    return sum(math.prod(i.shape) for i in read_tensor_infos(Path(model_dir)).values() if i.floating)


# ----------------------------------------------------------------------------- one real training step


@dataclass
class Step:
    """One method's objective on the models and the first micro-batch of its first epoch."""

    name: str
    resolved: Resolved
    models: Models
    batch: StepBatch

    @property
    def samples(self) -> int:
        """Forget examples in the batch; each comes with one retain example."""
        return len(self.batch.forget_keys)


def first_batch(u: UnlearnConfig, resolved: Resolved, tokenizer: Any, device: torch.device) -> StepBatch:
    """The first micro-batch the training loop would build for `u` (same data, encoding, pairing, padding)."""
    from mox_unlearn.data import collate, encode_records, epoch_plan
    from mox_unlearn.forward import StepBatch
    from mox_unlearn.train import load_data

    forget_rs, retain_rs = load_data(u, resolved)
    forget = encode_records(tokenizer, forget_rs, u.prompt, u.max_length)
    retain = encode_records(tokenizer, retain_rs, u.prompt, u.max_length) if retain_rs else []
    f_idx, r_idx = epoch_plan(len(forget), len(retain), u.per_device_batch_size, u.seed, 0)[0]
    pad = tokenizer.pad_token_id
    to = lambda b: {k: v.to(device) for k, v in b.items()}  # noqa: E731
    batch = StepBatch(forget=to(collate([forget[i] for i in f_idx], pad)), forget_keys=[("forget", i) for i in f_idx])
    if retain:
        batch.retain = to(collate([retain[i] for i in r_idx], pad))
    return batch


def make_step(
    name: str, u: UnlearnConfig, policy: Any, ref: Any, tokenizer: Any, device: torch.device, *, cache: bool
) -> Step:
    """A Step for method config `u`; `cache` turns the reference log-prob cache (RefCache) on or off."""
    from mox_unlearn.forward import Models, RefCache
    from mox_unlearn.train import resolve

    r = resolve(u)
    if r.target is not None:
        raise MoxError(f"efficiency measures untargeted objectives; {name} needs {r.target} targets")
    models = Models(model=policy, ref=ref, cache=RefCache(ref, cache))
    return Step(name, r, models, first_batch(u, r, tokenizer, device))


def step_loss(step: Step) -> torch.Tensor:
    """The forward passes the objective needs (each once, as in the loop) and its loss."""
    from mox_unlearn.forward import build_inputs

    loss, _ = step.resolved.spec.fn(build_inputs(step.resolved.needs, step.models, step.batch), **step.resolved.hp)
    return loss


def reference_passes(step: Step) -> None:
    """Only the reference-model passes of a step (the needs named ref_*)."""
    from mox_unlearn.forward import build_inputs

    needs = frozenset(n for n in step.resolved.needs if n.startswith("ref_"))
    build_inputs(needs, step.models, step.batch)


@contextmanager
def eager_attention(*models: Any) -> Iterator[None]:
    """Count attention too: torch's counter sees eager attention's matmuls but not every fused SDPA kernel
    (the CPU one is missing), and the arithmetic is the same."""
    before = [m.config._attn_implementation for m in models]
    for m in models:
        m.set_attn_implementation("eager")
    try:
        yield
    finally:
        for m, impl in zip(models, before):
            m.set_attn_implementation(impl)


def step_flops(step: Step) -> dict[str, int]:
    """FLOPs of one step: forward (policy + reference + loss), backward, and the reference part alone."""
    holder: dict[str, torch.Tensor] = {}
    step.models.model.zero_grad(set_to_none=True)
    with eager_attention(step.models.model, step.models.ref):
        forward = count_flops(lambda: holder.setdefault("loss", step_loss(step)))
        backward = count_flops(lambda: holder["loss"].backward())
        with torch.no_grad():
            reference = count_flops(lambda: reference_passes(step))
    step.models.model.zero_grad(set_to_none=True)
    return {"forward": forward, "backward": backward, "reference": reference}


# ----------------------------------------------------------------------------- memory


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of distinct storages (tied weights count once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def adamw_state_bytes(step: Step, lr: float, weight_decay: float) -> int:
    """Bytes of AdamW's state after one real optimizer step of `step` (exp_avg, exp_avg_sq, step counters)."""
    policy = step.models.model
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    step_loss(step).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return tensor_bytes(t for state in opt.state.values() for t in state.values() if isinstance(t, torch.Tensor))


# ----------------------------------------------------------------------------- wall time


def train_seconds_per_sample(run: Path) -> tuple[float, float]:
    """(seconds, forget samples) of a finished run's training phase, from its run.json."""
    info = json.loads((Path(run) / "run.json").read_text())
    plan = info["plan"]
    samples = info["data"]["forget"] * plan["total_steps"] / plan["steps_per_epoch"]
    return info["timings_s"]["train"] / samples, samples


def extrapolate_seconds(ref: Path, mem: Path, alphas: Sequence[float], scratch: Path, repeats: int = 3) -> float:
    """Median time of `extrapolate_folders` writing len(alphas) models from one θ_mem (read once)."""
    from mox_unlearn.extrapolation import extrapolate_folders

    count = iter(range(repeats))

    def once() -> None:
        out = scratch / f"extrapolate-{len(alphas)}-{next(count)}"
        extrapolate_folders(ref, mem, alphas, out, progress=False)
        shutil.rmtree(out)

    return median_seconds(once, repeats)


def cpu_copy(params: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """fp32 CPU copies: what a CPU-side momentum update reads while the trained weights keep changing."""
    return {n: p.detach().to("cpu", torch.float32, copy=True) for n, p in params}


def train_steps(step: Step, optimizer: torch.optim.Optimizer, n: int, autocast: Any) -> None:
    """n full optimizer steps of `step`'s objective, on its batch."""
    for _ in range(n):
        with autocast:
            loss = step_loss(step)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def overlap(run_steps: Callable[[], None], update: Callable[[], None], device: torch.device) -> dict[str, float]:
    """Training steps alone, then with momentum updates looping in a background thread, then alone again.

    Returns the alone time (mean of the two), the time with the background thread, and how many background
    updates finished and how long each took meanwhile.
    """

    def timed() -> float:
        t = time.perf_counter()
        run_steps()
        _sync(device)
        return time.perf_counter() - t

    first = timed()
    stop, durations = threading.Event(), []

    def background() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            update()
            durations.append(time.perf_counter() - t)

    thread = threading.Thread(target=background, daemon=True)
    thread.start()
    together = timed()
    stop.set()
    thread.join()
    alone = (first + timed()) / 2
    return {
        "alone": alone,
        "together": together,
        "updates": len(durations),
        "update_s": statistics.median(durations) if durations else math.nan,
    }
