"""MOX extrapolation (Eq. 8): theta_for = (1 + alpha) * theta_ref - alpha * theta_mem.

Equivalently theta_ref + alpha * (theta_ref - theta_mem): step away from the model that memorised
the forget set. Folders are processed tensor by tensor straight from memory-mapped safetensors, a chunk at
a time on every core, and each chunk's result goes straight to its place in each output file (io/shards.py):
several alphas share one read of the inputs, and memory holds a few chunks per core whatever the model size.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from fractions import Fraction
from pathlib import Path

import torch

from mox_unlearn.errors import MoxError
from mox_unlearn.io.atomic import atomic_output_dir, check_output_dir
from mox_unlearn.io.cards import write_model_card
from mox_unlearn.io.folders import copy_aux_files
from mox_unlearn.io.loading import check_model_folder
from mox_unlearn.io.reading import TensorInfo, check_same_tensors, read_tensor_infos
from mox_unlearn.io.shards import ShardedFolder, parse_size, plan_shards
from mox_unlearn.variants import Variant, count_layers

METHOD = "MOX extrapolation (Eq. 8)"
FORMULA = "theta_for = (1 + alpha) * theta_ref - alpha * theta_mem"
# Elements per fp32 work chunk and CPU thread: 64K * 4 B = 256 KiB, so the chunk's four fp32 buffers stay
# in cache while every alpha is computed from the same converted chunk, large enough that per-op overhead
# (Python, thread wake-ups) stays small (measured fastest of 16K..1M, docs/performance.md). On accelerators
# one chunk is 16M elements.
CHUNK_ELEMS = 1 << 16
DEVICE_CHUNK_ELEMS = 1 << 24

__all__ = [
    "extrapolate_tensor",
    "extrapolate_tensors",
    "extrapolate_variant",
    "extrapolate_state_dict",
    "extrapolate_folders",
    "alpha_label",
    "all_finite",
]


# ----------------------------------------------------------------------------- tensor math


def extrapolate_tensor(ref: torch.Tensor, mem: torch.Tensor, alpha: float) -> torch.Tensor:
    """`(1+alpha)*ref - alpha*mem` computed in fp32 and cast back to `ref.dtype`.

    fp32 math keeps bf16/fp16 models from losing the small difference ref - mem to rounding.
    Integer and bool tensors (buffers, masks) are not weights to move: `ref` is returned as is.
    """
    return extrapolate_tensors(ref, mem, [alpha])[0]


def extrapolate_tensors(
    ref: torch.Tensor,
    mem: torch.Tensor,
    alphas: Sequence[float],
    out: Sequence[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """One extrapolated tensor per alpha, converting each chunk of ref/mem to fp32 only once.

    Each element gets exactly `fl(fl((1+a)*r) - fl(a*m))` in fp32 (fp64 stays fp64), then one cast,
    so results equal the plain whole-tensor expression bit for bit. Inputs are never modified.
    `out` (floating tensors only): contiguous tensors like `ref` to write into; they are returned.
    """
    if ref.shape != mem.shape:
        raise ValueError(f"shape mismatch: ref {tuple(ref.shape)} vs mem {tuple(mem.shape)}")
    if ref.dtype != mem.dtype:
        raise ValueError(f"dtype mismatch: ref {ref.dtype} vs mem {mem.dtype}")
    if not ref.is_floating_point():
        return [ref for _ in alphas]
    compute = torch.promote_types(ref.dtype, torch.float32)
    if out is None:
        outs = [torch.empty(ref.shape, dtype=ref.dtype, device=ref.device) for _ in alphas]
    else:
        outs = list(out)
        if len(outs) != len(alphas) or any(
            o.shape != ref.shape or o.dtype != ref.dtype or o.device != ref.device or not o.is_contiguous()
            for o in outs
        ):
            raise ValueError("out must hold one contiguous tensor per alpha, like ref in shape, dtype and device")
    r_flat, m_flat = ref.reshape(-1), mem.reshape(-1)  # [n]
    o_flats = [o.view(-1) for o in outs]  # [n] each, sharing storage with outs
    n = r_flat.numel()
    step = CHUNK_ELEMS * torch.get_num_threads() if ref.device.type == "cpu" else DEVICE_CHUNK_ELEMS
    # [step] scratch buffers, allocated once: fresh allocations per chunk cost page faults
    bufs = [torch.empty(min(n, step), dtype=compute, device=ref.device) for _ in range(4)]
    factors = eq8_factors(alphas, compute, ref.device)
    for start in range(0, n, step):
        stop = min(start + step, n)
        eq8_chunk(r_flat[start:stop], m_flat[start:stop], factors, [o[start:stop] for o in o_flats], bufs)
    return outs


def eq8_chunk(
    r: torch.Tensor,
    m: torch.Tensor,
    factors: Sequence[tuple[torch.Tensor, torch.Tensor]],
    outs: Sequence[torch.Tensor],
    bufs: Sequence[torch.Tensor],
) -> None:
    """Eq. 8 on one flat chunk for every alpha: `outs[i] = fl(fl((1+a)*r) - fl(a*m))` in the compute dtype of
    `bufs` (four scratch buffers at least as long as the chunk), rounded once into each out's dtype.

    `factors` are `eq8_factors(alphas, ...)`: 0-dim tensors save wrapping two Python scalars per op (a third
    of a small op's time on CPU), and the products are the same, the scalar being rounded to the compute
    dtype either way. Three passes per alpha: the subtraction stores straight into the output, so the cast
    back to bf16/fp16 is fused into it; r and m are converted to the compute dtype once for all alphas."""
    k = r.numel()
    r_buf, m_buf, a_buf, b_buf = (buf[:k] for buf in bufs)
    if r.dtype != r_buf.dtype:
        r = r_buf.copy_(r)
    if m.dtype != m_buf.dtype or m.device != r.device:
        m = m_buf.copy_(m)
    for (up, alpha), o in zip(factors, outs):
        torch.mul(r, up, out=a_buf)
        torch.mul(m, alpha, out=b_buf)
        torch.sub(a_buf, b_buf, out=o)  # computed in fp32, the one rounding on the store


def eq8_factors(alphas: Sequence[float], dtype: torch.dtype, device: torch.device | str = "cpu") -> list:
    """(1 + α, α) for each alpha as 0-dim tensors of the compute dtype, for eq8_chunk."""
    return [
        (torch.tensor(1.0 + a, dtype=dtype, device=device), torch.tensor(float(a), dtype=dtype, device=device))
        for a in alphas
    ]


def extrapolate_variant(
    ref: torch.Tensor,
    mem: torch.Tensor,
    alphas: Sequence[float],
    variant: Variant,
    name: str,
    layers: int | Mapping[str, int],
) -> list[torch.Tensor]:
    """Eq. 8 with a variant (variants.py) for the tensor `name`, one new tensor per alpha:
    θ_ref + α·s·(M ⊙ Δ)/(1 − p), computed in fp32 and cast back once.

    A tensor the variant does not edit is θ_ref bitwise; one it edits without trimming or dropping goes
    through `extrapolate_tensors` with α·s, so the plain variant is plain extrapolation bit for bit. With
    keep_fraction P, at most ⌈P·n⌉ entries differ from θ_ref (`largest`: exactly that many kept, ties by position)."""
    if not ref.is_floating_point() or not variant.edits(name):
        return [ref for _ in alphas]
    s = variant.scale(name, layers)
    if not variant.trims():
        return extrapolate_tensors(ref, mem, [a * s for a in alphas])
    if ref.shape != mem.shape or ref.dtype != mem.dtype:
        raise ValueError(f"{name}: ref {tuple(ref.shape)} {ref.dtype} vs mem {tuple(mem.shape)} {mem.dtype}")
    compute = torch.promote_types(ref.dtype, torch.float32)
    r = ref.to(compute).reshape(-1)  # [n]
    delta = r - mem.to(device=ref.device, dtype=compute).reshape(-1)  # [n]
    n = delta.numel()
    if variant.keep_fraction < 1:
        kept = largest(delta.abs(), math.ceil(Fraction(repr(variant.keep_fraction)) * n))
        delta = torch.where(kept, delta, torch.zeros((), dtype=compute, device=delta.device))
    if variant.drop_rate > 0:
        g = torch.Generator().manual_seed(variant.tensor_seed(name))
        survive = (torch.rand(n, generator=g) >= variant.drop_rate).to(delta.device)
        delta = torch.where(
            survive, delta / (1 - variant.drop_rate), torch.zeros((), dtype=compute, device=delta.device)
        )
    outs = [torch.empty_like(ref) for _ in alphas]
    for alpha, o in zip(alphas, outs):
        o.view(-1).copy_(torch.add(r, delta, alpha=alpha * s))  # the one rounding back to ref's dtype
    return outs


def largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """A mask of the k largest entries of the 1-D `values`; among equal values at the cut, the first
    positions. Unlike torch.topk, whose choice among ties is its own, the same on every device."""
    n = values.numel()
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=values.device)
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=values.device)
    cut = torch.kthvalue(values, n - k + 1).values  # the k-th largest
    kept = values > cut
    ties = torch.nonzero(values == cut).squeeze(1)[: k - int(kept.sum())]
    kept[ties] = True
    return kept


def extrapolate_state_dict(
    ref_sd: Mapping[str, torch.Tensor], mem_sd: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """Eq. 8 over in-memory state dicts (used by the training loop, e.g. for the momentum average)."""
    check_same_tensors(ref_sd, mem_sd, where="state dicts")
    return {name: extrapolate_tensor(r, mem_sd[name], alpha) for name, r in ref_sd.items()}


# ----------------------------------------------------------------------------- folder checks


def alpha_label(alpha: float) -> str:
    """Shortest exact text for alpha, used in folder names: 4 -> "4", 0.5 -> "0.5", -1 -> "-1"."""
    text = repr(float(alpha))
    return text[:-2] if text.endswith(".0") else text


def _check_alphas(alphas: Sequence[float], allow_negative: bool) -> list[float]:
    """Refuse empty, non-finite, duplicate, or (without allow_negative) non-positive alphas."""
    if isinstance(alphas, (int, float)):
        alphas = [alphas]
    values = [float(a) for a in alphas]
    if not values:
        raise MoxError("no --alpha given")
    for a in values:
        if not math.isfinite(a):
            raise MoxError(f"alpha {a} is not a finite number")
        if a <= 0 and not allow_negative:
            raise MoxError(
                f"alpha {alpha_label(a)} <= 0 does not extrapolate away from mem "
                "(0 copies ref, -1 gives mem, between is interpolation); pass --allow-negative to do it anyway"
            )
    dupes = sorted({alpha_label(a) for a in values if values.count(a) > 1})
    if dupes:
        raise MoxError(f"duplicate alpha values: {', '.join(dupes)}")
    return values


# ----------------------------------------------------------------------------- folders


def extrapolate_folders(
    ref: Path,
    mem: Path,
    alphas: Sequence[float],
    out: Path,
    *,
    shard_size: str | int = "2GB",
    overwrite: bool = False,
    allow_negative: bool = False,
    progress: bool = True,
    card_fields: Mapping[str, object] | None = None,
    variant: Variant | None = None,
) -> list[Path]:
    """Write Eq. 8 models as HF folders: `out` for one alpha, `out/alpha-<A>/` for several; with a
    `variant` (variants.py), which entries of each tensor's Δ move and how far.

    All checks run before anything is written; the inputs are read once whatever the number of alphas;
    the whole of `out` appears atomically. Each output's shard layout is fixed from the headers, and every
    chunk is written to its place as soon as it is computed, by one worker per torch thread. Heap memory is
    a few chunks per worker (about 0.5 MiB + 64K elements per alpha), not shards; a variant that trims
    (keep_fraction, drop_rate) needs whole tensors, one per alpha. Returns the model folders written.
    """
    ref, mem, out = Path(ref), Path(mem), Path(out)
    values = _check_alphas(alphas, allow_negative)
    cap = parse_size(shard_size)
    check_model_folder(ref, role="--ref", contents=False, hub=False)
    check_model_folder(mem, role="--mem", contents=False, hub=False)
    check_output_dir(out, overwrite=overwrite, inputs={"--ref": ref, "--mem": mem})
    ref_infos, mem_infos = read_tensor_infos(ref), read_tensor_infos(mem)
    check_same_tensors(ref_infos, mem_infos)
    variant = variant or Variant()
    variant.check_edits([n for n, i in ref_infos.items() if i.floating], str(ref))
    order = sorted(ref_infos, key=lambda n: (str(ref_infos[n].file), ref_infos[n].offset))  # sequential reads
    layout = plan_shards([(n, ref_infos[n].dtype, ref_infos[n].shape, ref_infos[n].nbytes) for n in order], cap)

    subdirs = [Path(".")] if len(values) == 1 else [Path(f"alpha-{alpha_label(a)}") for a in values]
    with atomic_output_dir(out, overwrite=overwrite, inputs={"--ref": ref, "--mem": mem}) as tmp:
        with ExitStack() as stack:
            folders = [stack.enter_context(ShardedFolder(tmp / sub, layout)) for sub in subdirs]
            _stream(ref_infos, mem_infos, order, values, folders, progress, variant)
        fields = {**(card_fields or {}), **({} if variant.plain else {"variant": variant.fields()})}
        for sub, alpha in zip(subdirs, values):
            copy_aux_files(ref, tmp / sub)
            _write_card(tmp / sub, ref, mem, alpha, cap, fields, variant.plain)
    return [out / sub if str(sub) != "." else out for sub in subdirs]


@contextmanager
def _workers() -> Iterator[tuple[ThreadPoolExecutor, int]]:
    """One worker thread per torch thread, each running torch single-threaded, for the call.

    Chunks of one tensor go to different workers; each computes and writes its own chunks, so no core waits
    for another at a barrier inside an op (torch's own threads spin-wait for each other on a busy machine)
    and the kernel's page-cache copies run on every core. Queued work is cancelled on an error or a signal.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="mox-extrapolate")
    try:
        yield pool, n
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(n)


def _stream(
    ref_infos: Mapping[str, TensorInfo],
    mem_infos: Mapping[str, TensorInfo],
    order: Sequence[str],
    alphas: Sequence[float],
    folders: Sequence[ShardedFolder],
    progress: bool,
    variant: Variant,
) -> None:
    """Read each tensor pair once, in `order`, and write it to every alpha's folder."""
    from safetensors import safe_open
    from tqdm.auto import tqdm

    layers = count_layers(order)
    total = sum(ref_infos[n].nbytes + mem_infos[n].nbytes for n in order)
    with ExitStack() as stack:
        handles: dict[Path, object] = {}

        def handle(path: Path):
            # safe_open memory-maps the file: tensors it returns are file pages, not heap
            if path not in handles:
                handles[path] = stack.enter_context(safe_open(str(path), framework="pt"))
            return handles[path]

        bar = stack.enter_context(
            tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="extrapolate", disable=not progress)
        )
        pool, workers = stack.enter_context(_workers())
        for name in order:
            r = handle(ref_infos[name].file).get_tensor(name)
            m = handle(mem_infos[name].file).get_tensor(name)
            _extrapolate_one(name, r, m, alphas, folders, variant, layers, pool, workers)
            bar.update(ref_infos[name].nbytes + mem_infos[name].nbytes)


def _extrapolate_one(
    name: str,
    r: torch.Tensor,
    m: torch.Tensor,
    alphas: Sequence[float],
    folders: Sequence[ShardedFolder],
    variant: Variant,
    layers: Mapping[str, int],
    pool: ThreadPoolExecutor,
    workers: int,
) -> None:
    """Write one tensor for every alpha: θ_ref's bytes where nothing moves, whole tensors for a trimming
    variant, otherwise chunk ranges computed and written by the workers, one range each."""
    if not r.is_floating_point() or not variant.edits(name):
        for folder in folders:
            folder.write(name, r)  # straight from the mapped input
        return
    if variant.trims():
        for folder, alpha, o in zip(folders, alphas, extrapolate_variant(r, m, alphas, variant, name, layers)):
            check_finite(o, name, alpha)
            folder.write(name, o)
        return
    scaled = [a * variant.scale(name, layers) for a in alphas]
    n = r.numel()
    if n == 0:
        return  # a zero-byte slot: nothing to write
    per = -(-n // workers) if n >= workers * CHUNK_ELEMS else n  # small tensors: one worker, no hand-offs
    stop = threading.Event()
    futures = [
        pool.submit(_write_range, name, r, m, alphas, scaled, folders, lo, min(lo + per, n), stop)
        for lo in range(0, n, per)
    ]
    try:
        for f in futures:
            f.result()
    finally:
        stop.set()  # on an error the other ranges stop at their next chunk


_scratch = threading.local()


def _write_range(
    name: str,
    r: torch.Tensor,
    m: torch.Tensor,
    alphas: Sequence[float],
    scaled: Sequence[float],
    folders: Sequence[ShardedFolder],
    lo: int,
    hi: int,
    stop: threading.Event,
) -> None:
    """Elements [lo, hi) of one tensor: Eq. 8 chunk by chunk into this thread's staging buffers (reused, so
    no fresh pages per chunk), each checked finite and written to its alpha's file at its offset."""
    compute = torch.promote_types(r.dtype, torch.float32)
    key = (compute, r.dtype, len(alphas))
    if getattr(_scratch, "key", None) != key:
        _scratch.key = key
        _scratch.bufs = [torch.empty(CHUNK_ELEMS, dtype=compute) for _ in range(4)]
        _scratch.stage = [torch.empty(CHUNK_ELEMS, dtype=r.dtype) for _ in alphas]
    r_flat, m_flat, size = r.reshape(-1), m.reshape(-1), r.element_size()
    check = not cannot_overflow(r_flat[lo:hi], m_flat[lo:hi], scaled, r.dtype)
    factors = eq8_factors(scaled, compute)
    for start in range(lo, hi, CHUNK_ELEMS):
        if stop.is_set():
            return
        k = min(CHUNK_ELEMS, hi - start)
        outs = [buf[:k] for buf in _scratch.stage]
        eq8_chunk(r_flat[start : start + k], m_flat[start : start + k], factors, outs, _scratch.bufs)
        for folder, alpha, o in zip(folders, alphas, outs):
            if check:
                check_finite(o, name, alpha)
            folder.write(name, o, at=start * size)


def cannot_overflow(r: torch.Tensor, m: torch.Tensor, alphas: Sequence[float], dtype: torch.dtype) -> bool:
    """Whether Eq. 8 of these entries is finite in `dtype` for every alpha, known from the inputs alone.

    With R = max|r| and M = max|m|, every result is at most (|1+α|·R + |α|·M)(1 + 2⁻²⁴)³ in magnitude (three
    fp32 roundings: the products, with α and 1+α rounded to fp32, and the difference), and rounding a value
    below the largest finite number of `dtype` cannot overflow. So a bound under that number, with a 0.1 %
    margin, proves all alphas finite from two passes over the inputs instead of one check per output; when
    it fails (huge α, inf/NaN inputs) the caller checks each output exactly."""
    if r.numel() == 0:
        return True
    big_r, big_m = _max_abs(r), _max_abs(m)
    limit = torch.finfo(dtype).max
    return all(math.isfinite(b) and b * 1.001 < limit for b in (abs(1 + a) * big_r + abs(a) * big_m for a in alphas))


def _max_abs(t: torch.Tensor) -> float:
    """max |t| in one aminmax pass; NaN if t holds a NaN (aminmax propagates it to both ends)."""
    lo, hi = (float(x) for x in torch.aminmax(t))
    return math.nan if math.isnan(lo) or math.isnan(hi) else max(-lo, hi)


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry is finite (no inf, no NaN); True for integer and empty tensors.

    One `aminmax` pass instead of `isfinite(t).all()`, which on CPU builds a bool tensor and is about 17x
    slower (bf16, measured in docs/performance.md): min and max propagate NaN, and an inf is an extreme."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def check_finite(t: torch.Tensor, name: str, alpha: float) -> None:
    """Refuse an extrapolated tensor that its dtype cannot hold: (1+α)θ_ref − αθ_mem overflows bf16/fp16 (or
    fp32, where it is computed) for a large enough α, and a model of inf/NaN must not be written as if good."""
    if not all_finite(t):
        raise MoxError(
            f"α = {alpha:g}: tensor {name} is not finite in {t.dtype} after extrapolation (the values overflow "
            "it, or the inputs hold inf/NaN); use a smaller α"
        )


def _write_card(
    out_dir: Path,
    ref: Path,
    mem: Path,
    alpha: float,
    cap: int,
    card_fields: Mapping[str, object] | None,
    plain: bool = True,
) -> None:
    """README recording method, alpha and both source models, so the output explains itself."""
    fields: dict[str, object] = {
        "method": METHOD,
        "formula": FORMULA,
        "alpha": alpha_label(alpha),
        # relative to this folder (its temporary name is a sibling of the final one: the same path)
        "reference model (theta_ref)": os.path.relpath(ref.resolve(), out_dir.resolve()),
        "memorization model (theta_mem)": os.path.relpath(mem.resolve(), out_dir.resolve()),
        "max shard size (bytes)": cap,
    }
    fields.update(card_fields or {})
    moved = (
        "every floating-point weight is computed in fp32 as `(1 + alpha) * ref - alpha * mem`"
        if plain
        else "with the extrapolation variant above, only part of `delta = ref - mem` moves: per tensor, "
        "`ref + alpha * s * (M * delta) / (1 - p)` in fp32 (M the entries kept, s the depth factor, p the drop "
        "rate; mox_unlearn/variants.py), and tensors it leaves out stay at the reference's values"
    )
    body = (
        f"Made with `mox extrapolate`: {moved}, cast back to the original dtype; integer and bool "
        "tensors are copied from the reference model, as are config and tokenizer files."
    )
    write_model_card(
        out_dir,
        title=f"MOX-unlearned model (alpha = {alpha_label(alpha)})",
        fields=fields,
        body=body,
        source=str(ref),
        tags=["mox"],
    )
