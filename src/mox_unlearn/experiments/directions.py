"""directions (paper Fig. 6): cosines between the normalised updates Δθ_X = (θ_X − θ_ref)/‖θ_X − θ_ref‖ of
MOX's θ_mem and θ_for, momentum θ_for, GA and NPO, over all parameters and per layer. Models are read one
tensor at a time from their safetensors files (float64 sums), so any size fits in memory.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mox_unlearn.errors import MoxError
from mox_unlearn.experiments.training import finish
from mox_unlearn.experiments.workspace import Workspace
from mox_unlearn.io.reading import check_same_tensors, open_weights
from mox_unlearn.report import figure, save_figure

if TYPE_CHECKING:
    pass

GroupFn = Callable[[str], str]
Pair = tuple[str, str]
Dots = dict[str, dict[Pair, float]]  # group -> (a, b) -> <Δa, Δb>; (a, a) is ‖Δa‖²

ALL = "all"
CHUNK_ELEMS = 1 << 22  # float64 working set per model: 32 MiB, whatever the tensor size
# Llama / Mistral / Qwen "layers.N.", GPT-2 / Falcon "h.N.", BERT-style "layer.N.", "blocks.N."
_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.")


# ============================================================================= directions (Fig. 6)


def layer_group(name: str) -> str:
    """The part of the model a tensor belongs to: "layers.N", "embed", "lm_head", "norm" or "other"."""
    m = _LAYER.search(name)
    if m:
        return f"layers.{m.group(1)}"
    for part in ("embed", "lm_head", "norm"):
        if part in name:
            return part
    return "other"


def group_order(group: str) -> tuple[int, int, str]:
    """Sort key for groups in model order: all, embeddings, layers by index, final norm, other, lm_head."""
    if group.startswith("layers.") and group[7:].isdigit():
        return (2, int(group[7:]), "")
    rank = {ALL: 0, "embed": 1, "norm": 3, "lm_head": 5}.get(group, 4)
    return (rank, 0, group)


def model_pairs(names: Sequence[str]) -> list[Pair]:
    """Every (a, b) with a at or before b: the pairs whose dot products give all cosines and norms."""
    return [(a, b) for i, a in enumerate(names) for b in names[i:]]


def delta_dots(
    ref: Mapping[str, torch.Tensor],
    models: Mapping[str, Mapping[str, torch.Tensor]],
    group: GroupFn = layer_group,
    chunk: int = CHUNK_ELEMS,
) -> Dots:
    """<Δa, Δb> with Δx = θ_x − θ_ref for every pair of models, per group and over all ("all"), in float64.

    Tensors are asked for one name at a time and worked through in chunks of `chunk` elements, so with
    lazily loading mappings (`FolderWeights`) memory stays at one tensor per model whatever the model
    size. Names (and, where the mappings carry headers, shapes) are checked before any tensor is read.
    Integer and bool tensors are buffers, not weights, and are skipped.
    """
    names = list(models)
    for name in names:
        check_same_tensors(
            _shapes(ref), _shapes(models[name]), names=("the reference", f"model {name!r}"), dtypes=False
        )
    pairs = model_pairs(names)
    dots: Dots = {ALL: dict.fromkeys(pairs, 0.0)}
    for tensor_name in ref:
        r = ref[tensor_name]
        if not r.is_floating_point():
            continue
        found = {n: models[n][tensor_name] for n in names}
        for n, t in found.items():
            check_same_tensors(
                {tensor_name: r}, {tensor_name: t}, names=("the reference", f"model {n!r}"), dtypes=False
            )
        acc = dots.setdefault(group(tensor_name), dict.fromkeys(pairs, 0.0))
        for pair, value in _tensor_dots(r, found, pairs, chunk).items():
            acc[pair] += value
            dots[ALL][pair] += value
    return dots


def _shapes(weights: Mapping[str, Any]) -> dict[str, tuple[int, ...] | None]:
    """Name -> shape from the headers of a `FolderWeights`; name -> None for other mappings, whose shapes
    are checked as each tensor is read (asking for them here would read every tensor up front)."""
    infos = getattr(weights, "infos", None)
    if infos is None:
        return dict.fromkeys(weights)
    return {name: tuple(info.shape) for name, info in infos.items()}


def _tensor_dots(
    ref: torch.Tensor, models: Mapping[str, torch.Tensor], pairs: Sequence[Pair], chunk: int
) -> dict[Pair, float]:
    """The pairwise dot products of one tensor's deltas, chunk by chunk over the flattened tensor."""
    out = dict.fromkeys(pairs, 0.0)
    r_flat = ref.reshape(-1)  # [n]
    flats = {n: t.reshape(-1) for n, t in models.items()}  # [n] each
    for start in range(0, r_flat.numel(), chunk):
        r = r_flat[start : start + chunk].to(torch.float64)
        deltas = {n: f[start : start + chunk].to(torch.float64) - r for n, f in flats.items()}  # [k] each
        for a, b in pairs:
            out[(a, b)] += float(torch.dot(deltas[a], deltas[b]))
    return out


def cosine(dots: Mapping[Pair, float], a: str, b: str) -> float | None:
    """cos(Δa, Δb) from the dot products; None where either delta is zero (no direction)."""
    norm2 = dots[(a, a)] * dots[(b, b)]
    if norm2 <= 0:
        return None
    value = dots[(a, b)] if (a, b) in dots else dots[(b, a)]
    return max(-1.0, min(1.0, value / math.sqrt(norm2)))  # rounding may step a hair past ±1


def cosine_rows(dots: Dots, names: Sequence[str]) -> list[dict]:
    """Rows {pair, group, cosine}: every pair of distinct models, groups in model order ("all" first)."""
    pairs = [(a, b) for a, b in model_pairs(names) if a != b]
    return [
        {"pair": f"{a} vs {b}", "group": g, "cosine": cosine(dots[g], a, b)}
        for g in sorted(dots, key=group_order)
        for a, b in pairs
    ]


def delta_cosines(ref_dir: str | Path, models: Mapping[str, str | Path], group: GroupFn = layer_group) -> list[dict]:
    """Rows {pair, group, cosine} of the updates of `models` (name -> HF folder) from the model in `ref_dir`.

    Every folder's tensor names and shapes are checked against the reference from the headers before
    any weight is read (in `delta_dots`); then the tensors stream through one at a time.
    """
    if len(models) < 2:
        raise MoxError("direction cosines need at least two models besides the reference")
    with open_weights({"__ref__": Path(ref_dir), **{n: Path(p) for n, p in models.items()}}) as w:
        ref = w.pop("__ref__")
        return cosine_rows(delta_dots(ref, w, group), list(models))


def directions(ws: Workspace) -> dict:
    """Fig. 6: is GD's update (θ_mem) opposite to GA's (GA, NPO), and does MOX's θ_for point where GA goes?"""
    mox_run, u = ws.run_method("mox")
    mom_run, mom = ws.run_method("mox-momentum")
    models: dict[str, Path] = {
        "mem": mox_run / "memorized",
        "for": mox_run / "model",
        "for-momentum": mom_run / "model",
    }
    for name in ws.cfg.compare_methods:
        models[name] = ws.run_method(name)[0] / "model"
    rows = delta_cosines(u.model, models)
    others = ", ".join(ws.cfg.compare_methods)
    note = (
        f"Δθ_X = (θ_X − θ_ref)/‖θ_X − θ_ref‖ over all floating-point tensors and per layer group, "
        f"summed in float64 one tensor at a time. mem = MOX's θ_mem; for = its θ_for at α = {u.alpha:g}, a "
        "plain extrapolation with θ_for − θ_ref = −α(θ_mem − θ_ref), so cos(mem, for) = −1 exactly by "
        "construction (the table shows it up to fp32 rounding); for-momentum = the momentum average (Eq. 10, "
        f"η = {mom.eta:g}, α = {mom.alpha:g}) of the per-epoch θ_for, not trivially −1 to mem; {others} = "
        f"those methods' unlearned models. All trained with the same settings ({u.epochs} epochs, "
        f"lr {u.lr:g}). An empty cosine means a zero update."
    )
    return finish(ws, "directions", rows, "Directions of the updates from θ_ref (paper Fig. 6)", _plot_directions, note)


def _plot_directions(rows: list[dict], path: Path) -> Path:
    """Left: cosine over all parameters per pair. Right: per-group cosine lines, "all" highlighted first."""
    fig, axes = figure(1, 2, size=(15, 5))
    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    groups = sorted({r["group"] for r in rows}, key=group_order)
    value = {(r["pair"], r["group"]): r["cosine"] for r in rows}
    nan = float("nan")
    left, right = axes[0]
    overall = [value.get((p, ALL)) for p in pairs]
    left.barh(
        range(len(pairs)),
        [nan if v is None else v for v in overall],
        color=["tab:red" if (v or 0) < 0 else "tab:blue" for v in overall],
    )
    left.set_yticks(range(len(pairs)), pairs)
    left.invert_yaxis()
    left.set_xlim(-1.05, 1.05)
    left.axvline(0, color="k", lw=0.8)
    left.set_xlabel("cosine similarity")
    left.set_title("all parameters")
    for p in pairs:
        ys = [value.get((p, g)) for g in groups]
        line = right.plot(range(len(groups)), [nan if y is None else y for y in ys], "o-", lw=1, ms=3, label=p)
        if ys and ys[0] is not None:
            right.scatter([0], [ys[0]], marker="*", s=140, color=line[0].get_color(), zorder=3)
    right.axvspan(-0.5, 0.5, color="0.85", zorder=0)
    right.set_xticks(range(len(groups)), groups, rotation=45, ha="right", fontsize=8)
    right.set_ylim(-1.05, 1.05)
    right.axhline(0, color="k", lw=0.8)
    right.set_ylabel("cosine similarity")
    right.set_title("per layer group (shaded ★: all parameters)")
    right.grid(alpha=0.3)
    right.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(fig, path)
