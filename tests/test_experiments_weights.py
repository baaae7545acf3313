"""`directions` and `efficiency`: the streaming delta-cosine math against values computed by hand, the
per-layer grouping, refusals of mismatched models, and both experiments end to end on a miniature benchmark."""

from __future__ import annotations

import json
import math

import pytest
import torch
from miniature import mini_settings
from safetensors.torch import save_file

from mox_unlearn.config import apply_mapping
from mox_unlearn.errors import MoxError
from mox_unlearn.experiments import ExperimentConfig, Workspace
from mox_unlearn.experiments.directions import (
    cosine,
    cosine_rows,
    delta_cosines,
    delta_dots,
    directions,
    group_order,
    layer_group,
)
from mox_unlearn.experiments.efficiency import (
    efficiency,
    extrapolation_flops_per_element,
    momentum_flops_per_element,
)

MINI = mini_settings()

A, B = "model.layers.0.mlp.w", "model.layers.1.mlp.w"
ALPHA = 3.0


def _hand_models() -> tuple[dict, dict]:
    """θ_ref and four models whose deltas are known:
    m1: Δ = ([1, 0], [0, 1]); m2: Δ = ([0, 1], [0, 1]); ext: (1+α)θ_ref − α·m1, so Δ = −α·Δm1; same: no change.
    Over all: cos(m1, m2) = 1/(√2·√2) = 0.5; layers.0: 0; layers.1: 1; cos(m1, ext) = −1 everywhere."""
    ref = {A: torch.tensor([1.0, 1.0]), B: torch.tensor([[0.0, 0.0]]), "model.layers.0.idx": torch.tensor([7])}
    m1 = {A: torch.tensor([2.0, 1.0]), B: torch.tensor([[0.0, 1.0]]), "model.layers.0.idx": torch.tensor([9])}
    m2 = {A: torch.tensor([1.0, 2.0]), B: torch.tensor([[0.0, 1.0]]), "model.layers.0.idx": torch.tensor([7])}
    ext = {k: (1 + ALPHA) * ref[k] - ALPHA * m1[k] if ref[k].is_floating_point() else ref[k] for k in ref}
    same = {k: v.clone() for k, v in ref.items()}
    return ref, {"m1": m1, "m2": m2, "ext": ext, "same": same}


@pytest.mark.parametrize("chunk", [1, 1 << 20])
def test_delta_dots_and_cosines_match_hand_computed_values(chunk):
    ref, models = _hand_models()
    dots = delta_dots(ref, models, chunk=chunk)
    assert set(dots) == {"all", "layers.0", "layers.1"}  # the integer buffer is skipped, not a group of its own
    assert dots["all"][("m1", "m1")] == 2.0
    assert dots["all"][("m1", "m2")] == 1.0
    assert dots["all"][("m1", "ext")] == -2.0 * ALPHA
    assert cosine(dots["all"], "m1", "m2") == pytest.approx(0.5)
    assert cosine(dots["layers.0"], "m1", "m2") == pytest.approx(0.0)
    assert cosine(dots["layers.1"], "m1", "m2") == pytest.approx(1.0)
    for group in dots:  # a plain extrapolation points exactly opposite to its θ_mem
        assert cosine(dots[group], "m1", "ext") == -1.0
        assert cosine(dots[group], "m1", "same") is None  # no update, no direction


class _Logged(dict):
    """A state dict that logs every tensor read, to check that delta_dots streams name by name."""

    def __init__(self, name, tensors, log):
        super().__init__(tensors)
        self.name, self.log = name, log

    def __getitem__(self, key):
        self.log.append((self.name, key))
        return super().__getitem__(key)


def test_delta_dots_reads_each_tensor_once_name_by_name():
    ref, models = _hand_models()
    log = []
    delta_dots(_Logged("ref", ref, log), {n: _Logged(n, t, log) for n, t in models.items()})
    floating = [k for k in ref if ref[k].is_floating_point()]
    assert log == [(m, k) for k in ref for m in (["ref", *models] if k in floating else ["ref"])]


def test_cosine_rows_cover_every_pair_and_group_in_model_order():
    ref, models = _hand_models()
    rows = cosine_rows(delta_dots(ref, models), list(models))
    assert [r["group"] for r in rows[:6]] == ["all"] * 6
    assert [r["pair"] for r in rows[:6]] == [
        "m1 vs m2",
        "m1 vs ext",
        "m1 vs same",
        "m2 vs ext",
        "m2 vs same",
        "ext vs same",
    ]
    assert len(rows) == 6 * 3
    assert all(r["cosine"] is None or -1 <= r["cosine"] <= 1 for r in rows)


def test_layer_groups_and_their_order():
    assert layer_group("model.layers.12.self_attn.q_proj.weight") == "layers.12"
    assert layer_group("transformer.h.3.mlp.c_fc.weight") == "layers.3"
    assert layer_group("model.shared_head.weight") == "other"  # "h" only as a whole name part
    assert layer_group("model.embed_tokens.weight") == "embed"
    assert layer_group("lm_head.weight") == "lm_head"
    assert layer_group("model.norm.weight") == "norm"
    assert layer_group("model.rotary.inv_freq") == "other"
    groups = ["lm_head", "layers.10", "other", "layers.2", "norm", "embed", "all"]
    assert sorted(groups, key=group_order) == ["all", "embed", "layers.2", "layers.10", "norm", "other", "lm_head"]


def _folder(path, tensors):
    path.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    return path


def test_delta_cosines_streams_folders_and_refuses_mismatched_models(tmp_path):
    ref, models = _hand_models()
    ref_dir = _folder(tmp_path / "ref", ref)
    dirs = {name: _folder(tmp_path / name, t) for name, t in models.items()}
    rows = delta_cosines(ref_dir, dirs)
    assert rows == cosine_rows(delta_dots(ref, models), list(models))

    renamed = _folder(tmp_path / "renamed", {("model.layers.0.mlp.v" if k == A else k): v for k, v in ref.items()})
    with pytest.raises(
        MoxError, match=r"1 in the reference but not model 'renamed' \(model\.layers\.0\.mlp\.w\)"
    ) as err:
        delta_cosines(ref_dir, {"m1": dirs["m1"], "renamed": renamed})
    assert "\n" not in str(err.value)
    reshaped = _folder(tmp_path / "reshaped", {**ref, B: torch.zeros(2, 1)})
    with pytest.raises(MoxError, match=r"shape \[1, 2\] in the reference but \[2, 1\] in model 'reshaped'"):
        delta_cosines(ref_dir, {"m1": dirs["m1"], "reshaped": reshaped})
    with pytest.raises(
        MoxError, match="in the reference but not model 'm1'"
    ):  # in-memory mappings are checked the same way
        delta_dots(ref, {"m1": {A: ref[A]}})
    with pytest.raises(MoxError, match=r"shape \[1, 2\] in the reference but \[2, 1\] in model 'm1'"):
        delta_dots(ref, {"m1": {**ref, B: torch.zeros(2, 1)}})


@pytest.mark.slow
def test_elementwise_flop_counts_of_extrapolation_and_momentum():
    # Eq. 8: (1+α)·r, α·m, and their difference; momentum adds θ̄·(1−η) and + η·θ_for (a multiply-add)
    assert extrapolation_flops_per_element(4.0) == 3
    assert momentum_flops_per_element(0.675, 4.0) == 6


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    cfg = ExperimentConfig()
    apply_mapping(cfg, MINI)
    root = tmp_path_factory.mktemp("weights")
    return Workspace(cfg, root / "exp", root / "cache")


def _table(ws, name):
    out = ws.root / name
    for ext in ("json", "csv", "md", "png"):
        assert (out / f"{name}.{ext}").stat().st_size > 0, ext
    return json.loads((out / f"{name}.json").read_text())["rows"]


@pytest.mark.slow
def test_directions_end_to_end(ws):
    result = directions(ws)
    rows = _table(ws, "directions")
    assert rows == json.loads(json.dumps(result["rows"]))
    groups = list(dict.fromkeys(r["group"] for r in rows))
    assert groups == ["all", "embed", "layers.0", "layers.1", "norm", "lm_head"]
    names = ["mem", "for", "for-momentum", "ga", "npo"]
    assert len(rows) == len(groups) * len(names) * (len(names) - 1) // 2
    assert all(-1 <= r["cosine"] <= 1 for r in rows)
    by = {(r["pair"], r["group"]): r["cosine"] for r in rows}
    for g in groups:  # θ_for is a plain extrapolation of θ_mem: opposite up to fp32 rounding
        assert by[("mem vs for", g)] == pytest.approx(-1.0, abs=1e-5)


@pytest.mark.slow
def test_efficiency_end_to_end(ws):
    efficiency(ws)
    rows = {r["measure"]: r for r in _table(ws, "efficiency")}
    step, cached = rows["step FLOPs per sample"], rows["step FLOPs per sample, reference cache warm"]
    policy, reference = rows["policy forward+backward FLOPs per sample"], rows["reference forward FLOPs per sample"]
    for r in (step, cached, policy, reference):
        assert r["mox"] > 0 and r["npo"] >= 0
    # the same forward passes of the trained model on the same batch, whatever the objective
    assert policy["mox"] == policy["npo"]
    assert abs(step["mox"] - (policy["mox"] + reference["mox"])) <= 1  # each rounded to a whole FLOP
    assert cached["npo"] == policy["npo"] < cached["mox"]  # NPO's cached reference pass costs nothing
    assert rows["extrapolation FLOPs per parameter"]["mox"] == 3
    theta = rows["θ (parameters of the target model)"]["mox"]
    assert rows["extrapolation FLOPs, whole model, one α"]["mox"] == 3 * theta // 4  # fp32: 4 bytes a parameter
    assert rows["parameters held in training, in θ"]["mox"] == 3.0
    assert rows["parameters held in training, in θ"]["npo"] == 2.0
    assert rows["AdamW state after one step"]["mox"] >= 2 * theta
    for r in rows.values():
        if r["unit"] in ("s", "s/sample"):
            assert r["mox"] > 0 and math.isfinite(r["mox"]), r["measure"]
