"""MOX extrapolation (Eq. 8): theta_for = (1 + alpha) * theta_ref - alpha * theta_mem.

Equivalently theta_ref + alpha * (theta_ref - theta_mem): step away from the model that memorised
the forget set. Folders are processed tensor by tensor straight from memory-mapped safetensors, so a
model of any size needs about one output shard of memory per alpha (plus one shard being written),
and several alphas share one read of the inputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

from mox_unlearn.errors import MoxError
from mox_unlearn.io.atomic import atomic_output_dir, check_output_dir
from mox_unlearn.io.cards import write_model_card
from mox_unlearn.io.folders import copy_aux_files
from mox_unlearn.io.loading import check_model_folder
from mox_unlearn.io.reading import TensorInfo, check_same_tensors, read_tensor_infos
from mox_unlearn.io.shards import ArenaPool, ShardSaver, ShardWriter, parse_size
from mox_unlearn.variants import Variant, count_layers

METHOD = "MOX extrapolation (Eq. 8)"
FORMULA = "theta_for = (1 + alpha) * theta_ref - alpha * theta_mem"
# Elements per fp32 work chunk and CPU thread: 256K * 4 B = 1 MiB, small enough to stay in cache
# while every alpha is computed from the same converted chunk, large enough that per-op overhead
# (Python, thread wake-ups) stays small. On accelerators one chunk is 16M elements.
CHUNK_ELEMS = 1 << 18
DEVICE_CHUNK_ELEMS = 1 << 24

__all__ = [
    "extrapolate_tensor",
    "extrapolate_tensors",
    "extrapolate_variant",
    "extrapolate_state_dict",
    "extrapolate_folders",
    "alpha_label",
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
    `out` (floating tensors only): contiguous tensors like `ref` to write into, e.g. from
    ShardWriter.empty(); they are returned.
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
    r_buf, m_buf, a_buf, b_buf = (torch.empty(min(n, step), dtype=compute, device=ref.device) for _ in range(4))
    direct = ref.dtype == compute  # fp32/fp64: read ref in place and write straight into the output
    for start in range(0, n, step):
        stop = min(start + step, n)
        k = stop - start
        r = r_flat[start:stop] if direct else r_buf[:k].copy_(r_flat[start:stop])  # [k] in compute dtype
        if direct and mem.device == ref.device:
            m = m_flat[start:stop]
        else:
            m = m_buf[:k].copy_(m_flat[start:stop])  # [k] in compute dtype, on ref's device
        b = b_buf[:k]
        for alpha, o in zip(alphas, o_flats):
            dst = o[start:stop] if direct else a_buf[:k]
            torch.mul(r, 1.0 + alpha, out=dst)
            torch.mul(m, alpha, out=b)
            dst.sub_(b)
            if not direct:
                o[start:stop].copy_(dst)  # the one rounding fp32 -> bf16/fp16
    return outs


def extrapolate_variant(
    ref: torch.Tensor,
    mem: torch.Tensor,
    alphas: Sequence[float],
    variant: Variant,
    name: str,
    n_layers: int,
    out: Sequence[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Eq. 8 with a variant (variants.py) for the tensor `name`, one result per alpha (`out` as in
    `extrapolate_tensors`): θ_ref + α·s·(M ⊙ Δ)/(1 − p), computed in fp32 and cast back once.

    A tensor the variant does not edit is θ_ref bitwise; one it edits without trimming or dropping goes
    through `extrapolate_tensors` with α·s, so the plain variant is plain extrapolation bit for bit. With
    keep_fraction P, at most ⌈P·n⌉ entries differ from θ_ref (torch.topk of |Δ|: exactly that many kept)."""
    if not ref.is_floating_point() or not variant.edits(name):
        if out is None:
            return [ref for _ in alphas]
        for o in out:
            o.copy_(ref)
        return list(out)
    s = variant.scale(name, n_layers)
    if not variant.trims():
        return extrapolate_tensors(ref, mem, [a * s for a in alphas], out=out)
    if ref.shape != mem.shape or ref.dtype != mem.dtype:
        raise ValueError(f"{name}: ref {tuple(ref.shape)} {ref.dtype} vs mem {tuple(mem.shape)} {mem.dtype}")
    compute = torch.promote_types(ref.dtype, torch.float32)
    r = ref.to(compute).reshape(-1)  # [n]
    delta = r - mem.to(device=ref.device, dtype=compute).reshape(-1)  # [n]
    n = delta.numel()
    if variant.keep_fraction < 1:
        k = math.ceil(variant.keep_fraction * n)
        kept = torch.zeros(n, dtype=torch.bool, device=delta.device)
        kept[torch.topk(delta.abs(), k, sorted=False).indices] = True
        delta = torch.where(kept, delta, torch.zeros((), dtype=compute, device=delta.device))
    if variant.drop_rate > 0:
        g = torch.Generator().manual_seed(variant.tensor_seed(name))
        survive = (torch.rand(n, generator=g) >= variant.drop_rate).to(delta.device)
        delta = torch.where(
            survive, delta / (1 - variant.drop_rate), torch.zeros((), dtype=compute, device=delta.device)
        )
    outs = list(out) if out is not None else [torch.empty_like(ref) for _ in alphas]
    for alpha, o in zip(alphas, outs):
        o.view(-1).copy_(torch.add(r, delta, alpha=alpha * s))  # the one rounding back to ref's dtype
    return outs


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

    All checks run before anything is written; the inputs are read once whatever the number of
    alphas; the whole of `out` appears atomically. Peak heap memory is about
    (len(alphas) + 1) * shard_size (+ one tensor larger than a shard, if any). Shards are written by
    a background thread, and torch uses one thread fewer during the call to leave it a core.
    Returns the model folders written.
    """
    ref, mem, out = Path(ref), Path(mem), Path(out)
    values = _check_alphas(alphas, allow_negative)
    cap = parse_size(shard_size)
    check_model_folder(ref, role="--ref", contents=False, hub=False)
    check_model_folder(mem, role="--mem", contents=False, hub=False)
    check_output_dir(out, overwrite=overwrite, inputs={"--ref": ref, "--mem": mem})
    ref_infos, mem_infos = read_tensor_infos(ref), read_tensor_infos(mem)
    check_same_tensors(ref_infos, mem_infos)

    subdirs = [Path(".")] if len(values) == 1 else [Path(f"alpha-{alpha_label(a)}") for a in values]
    with (
        atomic_output_dir(out, overwrite=overwrite, inputs={"--ref": ref, "--mem": mem}) as tmp,
        ShardSaver() as saver,
        _spare_one_core(),
    ):
        # one shard buffer per output plus one for the shard being saved; smaller for small models
        total = sum(info.nbytes for info in ref_infos.values())
        arenas = ArenaPool(len(values) + 1, min(cap, total) + 64 * len(ref_infos))
        writers = [ShardWriter(tmp / sub, cap, saver=saver, arenas=arenas) for sub in subdirs]
        _stream(ref_infos, mem_infos, values, writers, progress, variant or Variant())
        fields = {**(card_fields or {}), **({"variant": variant.fields()} if variant and not variant.plain else {})}
        for writer, sub, alpha in zip(writers, subdirs, values):
            writer.close()
            copy_aux_files(ref, tmp / sub)
            _write_card(tmp / sub, ref, mem, alpha, cap, fields)
    return [out / sub if str(sub) != "." else out for sub in subdirs]


@contextmanager
def _spare_one_core() -> Iterator[None]:
    """Use one torch thread fewer while the saver thread writes shards.

    On a small machine, torch's threads spin-waiting for a core that the writer holds slow the
    arithmetic down many times over; leaving it a core lets compute and disk writes overlap.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, before - 1))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _stream(
    ref_infos: Mapping[str, TensorInfo],
    mem_infos: Mapping[str, TensorInfo],
    alphas: Sequence[float],
    writers: Sequence[ShardWriter],
    progress: bool,
    variant: Variant,
) -> None:
    """Read each tensor pair once (ref file order, then file offset) and feed every alpha's writer."""
    from safetensors import safe_open
    from tqdm.auto import tqdm

    order = sorted(ref_infos, key=lambda n: (str(ref_infos[n].file), ref_infos[n].offset))
    n_layers = count_layers(order)
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
        for name in order:
            r = handle(ref_infos[name].file).get_tensor(name)
            m = handle(mem_infos[name].file).get_tensor(name)
            _extrapolate_one(name, r, m, alphas, writers, variant, n_layers)
            del r, m
            bar.update(ref_infos[name].nbytes + mem_infos[name].nbytes)


def _extrapolate_one(
    name: str,
    r: torch.Tensor,
    m: torch.Tensor,
    alphas: Sequence[float],
    writers: Sequence[ShardWriter],
    variant: Variant,
    n_layers: int,
) -> None:
    """Compute one tensor for every alpha straight into each writer's shard buffer, and add it.

    A function of its own so that no local keeps an output alive after its shard is written.
    """
    if not r.is_floating_point() or not variant.edits(name):
        r = r.clone()  # own the bytes rather than keep a view into a mapped file
        for writer in writers:
            writer.add(name, r)
        return
    oversized = _nbytes(r) >= writers[0].cap
    for batch in _alpha_batches(len(alphas), oversized):
        if oversized and writers[0].saver is not None:
            writers[0].saver.wait()  # never one oversized copy written while another is computed
        # empty() flushes a writer first if the tensor would not fit: memory stays ~ one shard each
        outs = [writers[i].empty(r.shape, r.dtype) for i in batch]
        extrapolate_variant(r, m, [alphas[i] for i in batch], variant, name, n_layers, out=outs)
        for i, out in zip(batch, outs):
            check_finite(out, name, alphas[i])
            writers[i].add(name, out)
        del outs, out


def check_finite(t: torch.Tensor, name: str, alpha: float) -> None:
    """Refuse an extrapolated tensor that its dtype cannot hold: (1+α)θ_ref − αθ_mem overflows bf16/fp16 (or
    fp32, where it is computed) for a large enough α, and a model of inf/NaN must not be written as if good."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise MoxError(
            f"α = {alpha:g}: tensor {name} is not finite in {t.dtype} after extrapolation (the values overflow "
            "it, or the inputs hold inf/NaN); use a smaller α"
        )


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _alpha_batches(n_alpha: int, oversized: bool) -> list[list[int]]:
    """Alphas computed together for one tensor: all at once (inputs converted once), except for a
    tensor that fills a shard by itself, whose outputs are made and written one alpha at a time so
    memory holds one copy of it rather than n_alpha copies."""
    if oversized:
        return [[i] for i in range(n_alpha)]
    return [list(range(n_alpha))]


def _write_card(
    out_dir: Path, ref: Path, mem: Path, alpha: float, cap: int, card_fields: Mapping[str, object] | None
) -> None:
    """README recording method, alpha and both source models, so the output explains itself."""
    fields: dict[str, object] = {
        "method": METHOD,
        "formula": FORMULA,
        "alpha": alpha_label(alpha),
        "reference model (theta_ref)": str(ref.resolve()),
        "memorization model (theta_mem)": str(mem.resolve()),
        "max shard size (bytes)": cap,
    }
    fields.update(card_fields or {})
    body = (
        "Made with `mox extrapolate`: every floating-point weight is computed in fp32 as "
        "`(1 + alpha) * ref - alpha * mem` and cast back to its original dtype; integer and bool "
        "tensors are copied from the reference model, as are config and tokenizer files."
    )
    write_model_card(out_dir, title=f"MOX-unlearned model (alpha = {alpha_label(alpha)})", fields=fields, body=body)
