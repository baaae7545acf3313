"""Extrapolation-time variants (issue 17): keep-fraction, DARE drop, only/skip, α by depth; exact, by hand,
through `mox extrapolate` and through `mox unlearn`'s own extrapolation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mox_unlearn.cli import main
from mox_unlearn.errors import MoxError
from mox_unlearn.extrapolation import extrapolate_tensors, extrapolate_variant
from mox_unlearn.tiny import build_tiny_llama
from mox_unlearn.variants import Variant, count_layers

FAST = ["per_device_batch_size=2", "batch_size=2", "max_length=64", "lr=1e-2", "warmup_epochs=0", "--max-steps", "2"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tokenizer, tiny_model_dir) -> tuple[Path, Path]:
    return tiny_model_dir, build_tiny_llama(tmp_path_factory.mktemp("variant-mem"), tokenizer, seed=1)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def extrapolate(ref: Path, mem: Path, out: Path, *flags: str) -> dict[str, torch.Tensor]:
    assert main(["extrapolate", "--ref", str(ref), "--mem", str(mem), "--alpha", "4", "--out", str(out), *flags]) == 0
    return weights(out)


# ----------------------------------------------------------------------------- by hand


def test_keep_fraction_keeps_the_largest_entries_of_delta_by_hand():
    ref = torch.tensor([1.0, 1.0, 1.0, 1.0])
    mem = torch.tensor([0.9, 1.5, 1.0, 0.0])  # Δ = [0.1, -0.5, 0, 1]
    out = extrapolate_variant(ref, mem, [2.0], Variant(keep_fraction=0.5), "w", 0)[0]
    assert out.tolist() == [1.0, 0.0, 1.0, 3.0]  # |Δ| largest two: 1 and -0.5; 1 + 2·1, 1 + 2·(-0.5)
    out = extrapolate_variant(ref, mem, [2.0], Variant(keep_fraction=0.3), "w", 0)[0]
    assert out.tolist() == [1.0, 0.0, 1.0, 3.0]  # ⌈0.3·4⌉ = ⌈1.2⌉ = 2 kept, as with 0.5
    out = extrapolate_variant(ref, mem, [2.0], Variant(keep_fraction=0.25), "w", 0)[0]
    assert out.tolist() == [1.0, 1.0, 1.0, 3.0]  # ⌈1⌉ = 1 kept: Δ = 1


def test_keep_fraction_counts_exactly_and_breaks_ties_by_position():
    """⌈P·n⌉ on the decimal P: 0.07 · 100 is 7.000000000000001 in floats, yet 7 entries are kept. Among equal
    |Δ| at the cut, the first positions are kept, so every device keeps the same entries."""
    ref = torch.zeros(100)
    mem = -torch.arange(1, 101, dtype=torch.float32)  # Δ = 1..100, all distinct
    out = extrapolate_variant(ref, mem, [1.0], Variant(keep_fraction=0.07), "w", 0)[0]
    assert int((out != 0).sum()) == 7 and out[93:].tolist() == list(range(94, 101))
    ref, mem = torch.zeros(8), -torch.tensor([3.0, 1, 1, 1, 1, 2, 1, 1])  # |Δ| ties at the cut (k = 3)
    out = extrapolate_variant(ref, mem, [1.0], Variant(keep_fraction=0.375), "w", 0)[0]
    assert out.tolist() == [3.0, 1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0]


def test_drop_rate_rescales_the_survivors_and_is_seeded_by_name():
    ref, mem = torch.zeros(10_000), -torch.ones(10_000)  # Δ = 1 everywhere
    v = Variant(drop_rate=0.25, seed=3)
    a = extrapolate_variant(ref, mem, [1.0], v, "layers.0.w", 1)[0]
    assert set(a.unique().tolist()) <= {0.0, torch.tensor(1 / 0.75).item()}  # 1/(1-p) in fp32
    assert abs((a != 0).float().mean().item() - 0.75) < 0.02  # about 1 - p survive
    assert abs(a.mean().item() - 1.0) < 0.03  # in expectation Δ itself (DARE's rescale)
    assert torch.equal(a, extrapolate_variant(ref, mem, [1.0], v, "layers.0.w", 1)[0])  # same seed, same mask
    assert not torch.equal(a, extrapolate_variant(ref, mem, [1.0], v, "layers.1.w", 1)[0])  # another tensor
    assert not torch.equal(a, extrapolate_variant(ref, mem, [1.0], Variant(drop_rate=0.25, seed=4), "layers.0.w", 1)[0])


def test_alpha_by_depth_is_linear_over_the_numbered_layers():
    v = Variant(alpha_by_depth="linear:0.5,1.5")
    assert [v.scale(f"model.layers.{i}.mlp.up_proj.weight", 3) for i in range(3)] == [0.5, 1.0, 1.5]
    assert v.scale("model.embed_tokens.weight", 3) == 1.0 and v.scale("lm_head.weight", 3) == 1.0
    assert count_layers(["model.layers.0.a", "model.layers.11.b", "lm_head.weight"]) == {"model.layers.": 12}
    # each stack of numbered layers over its own depth: T5 (not its "layer.0" inside a block), two towers
    t5 = [f"{s}.block.{i}.layer.{k}.w" for s in ("encoder", "decoder") for i in range(3) for k in range(2)]
    stacks = count_layers([*t5, "decoder.block.3.layer.0.w", "shared.weight"])
    assert stacks == {"encoder.block.": 3, "decoder.block.": 4}
    assert [v.scale(f"encoder.block.{i}.layer.1.w", stacks) for i in range(3)] == [0.5, 1.0, 1.5]
    assert [v.scale(f"decoder.block.{i}.layer.0.w", stacks) for i in range(4)] == [0.5, 0.5 + 1 / 3, 0.5 + 2 / 3, 1.5]
    towers = count_layers(["vision.encoder.layers.1.q", "language_model.model.layers.4.q"])
    assert towers == {"vision.encoder.layers.": 2, "language_model.model.layers.": 5}
    assert v.scale("vision.encoder.layers.1.q", towers) == v.scale("language_model.model.layers.4.q", towers) == 1.5
    ref, mem = torch.ones(3), torch.zeros(3)
    out = extrapolate_variant(ref, mem, [2.0], v, "model.layers.2.w", 3)[0]
    assert out.tolist() == [4.0, 4.0, 4.0]  # 1 + 2·1.5·1


def test_only_and_skip_choose_tensors_by_name():
    v = Variant(only="mlp", skip="down")
    assert v.edits("model.layers.0.mlp.up_proj.weight")
    assert not v.edits("model.layers.0.mlp.down_proj.weight") and not v.edits("model.layers.0.self_attn.q_proj.weight")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"keep_fraction": 0}, "keep_fraction must be in (0, 1]"),
        ({"keep_fraction": 1.5}, "keep_fraction must be in (0, 1]"),
        ({"drop_rate": 1}, "drop_rate must be in [0, 1)"),
        ({"only": "("}, "only '(' is not a regular expression"),
        ({"alpha_by_depth": "cosine:1,2"}, "alpha_by_depth must be linear:A,B"),
        ({"alpha_by_depth": "linear:1"}, "alpha_by_depth must be linear:A,B"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"seed": 1.5}, "seed must be an integer >= 0"),
        ({"keep_fraction": True}, "keep_fraction must be in (0, 1]"),
        ({"drop_rate": "0.5"}, "drop_rate must be in [0, 1)"),
        ({"only": 123}, "only must be a regular expression (text), got 123"),
        ({"skip": ["mlp"]}, "skip must be a regular expression (text), got ['mlp']"),
        ({"alpha_by_depth": 1}, "alpha_by_depth must be linear:A,B"),
    ],
)
def test_bad_variants_are_one_line(settings, message):
    with pytest.raises(MoxError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        Variant(**settings)


def test_settings_that_are_not_a_variant_are_one_line():
    with pytest.raises(MoxError, match=r"^--variant: unknown setting 1; valid: keep_fraction"):
        Variant.from_settings({1: 2, "a": 3}, "--variant")  # keys of two types: named, not a sort error
    with pytest.raises(MoxError, match=r"^--variant: only must be a regular expression \(text\)"):
        Variant.from_settings({"only": 123}, "--variant")


def test_numpy_numbers_are_plain_numbers():
    """A sweep in Python (`np.linspace`) gives numpy scalars: read as the floats and ints they are."""
    np = pytest.importorskip("numpy")
    v = Variant(keep_fraction=np.linspace(0.1, 0.5, 5)[1], drop_rate=np.float32(0.5), seed=np.int64(3))
    assert v == Variant(keep_fraction=0.2, drop_rate=0.5, seed=3)
    assert (type(v.keep_fraction), type(v.drop_rate), type(v.seed)) == (float, float, int)
    ref, mem = torch.zeros(10), -torch.arange(1.0, 11.0)
    out = extrapolate_variant(ref, mem, [1.0], Variant(keep_fraction=np.float64(0.2)), "w", 0)[0]
    assert out.tolist() == [0.0] * 8 + [9.0, 10.0]


def test_the_plain_variant_is_eq8_bitwise_in_every_dtype():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        ref, mem = torch.randn(1000, generator=g).to(dtype), torch.randn(1000, generator=g).to(dtype)
        plain = extrapolate_tensors(ref, mem, [4.0, 0.5])
        for v in (Variant(), Variant(keep_fraction=1.0), Variant(only=".")):
            assert all(torch.equal(a, b) for a, b in zip(plain, extrapolate_variant(ref, mem, [4.0, 0.5], v, "w", 0)))


# ----------------------------------------------------------------------------- mox extrapolate (acceptance)


def test_keep_fraction_one_is_plain_extrapolation_bitwise(pair, tmp_path):
    ref, mem = pair
    plain = extrapolate(ref, mem, tmp_path / "plain")
    full = extrapolate(ref, mem, tmp_path / "keep1", "--keep-fraction", "1.0")
    assert plain.keys() == full.keys() and all(torch.equal(plain[k], full[k]) for k in plain)


def test_keep_fraction_half_moves_at_most_half_of_every_tensor(pair, tmp_path):
    ref, mem = pair
    r = weights(ref)
    half = extrapolate(ref, mem, tmp_path / "half", "--keep-fraction", "0.5")
    for name, t in half.items():
        changed = int((t != r[name]).sum())
        assert changed <= math.ceil(t.numel() / 2), (name, changed, t.numel())
    assert sum(int((t != r[n]).sum()) for n, t in half.items()) > 0


def test_only_leaves_every_other_tensor_bitwise_at_ref(pair, tmp_path):
    ref, mem = pair
    r, plain = weights(ref), extrapolate(ref, mem, tmp_path / "plain")
    mlp = extrapolate(ref, mem, tmp_path / "mlp", "--only", "mlp")
    for name, t in mlp.items():
        assert torch.equal(t, plain[name] if "mlp" in name else r[name]), name
    skipped = extrapolate(ref, mem, tmp_path / "skip", "--skip", "embed|norm")
    assert torch.equal(skipped["model.embed_tokens.weight"], r["model.embed_tokens.weight"])
    assert torch.equal(skipped["lm_head.weight"], plain["lm_head.weight"])


def test_the_card_records_the_variant(pair, tmp_path):
    ref, mem = pair
    extrapolate(ref, mem, tmp_path / "v", "--keep-fraction", "0.2", "--only", "mlp")
    card = (tmp_path / "v" / "README.md").read_text()
    assert '"keep_fraction": 0.2' in card and '"only": "mlp"' in card
    assert "every floating-point weight" not in card and "only part of" in card  # not Eq. 8 everywhere
    extrapolate(ref, mem, tmp_path / "plain")
    assert "every floating-point weight is computed" in (tmp_path / "plain" / "README.md").read_text()


@pytest.mark.parametrize("flags", [["--only", "no_such_tensor"], ["--skip", "."], ["--only", "mlp", "--skip", "mlp"]])
def test_a_variant_that_edits_no_tensor_is_refused(pair, tmp_path, capsys, flags):
    """Its output would be θ_ref itself under an "unlearned" card (e.g. --only lm_head on a model with tied
    embeddings, which has no lm_head tensor): one line, and nothing written."""
    ref, mem = pair
    out = tmp_path / "none"
    assert main(["extrapolate", "--ref", str(ref), "--mem", str(mem), "--alpha", "4", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "edits no tensor" in err[0] and "model.layers.0." in err[0], err
    assert not out.exists()


# ----------------------------------------------------------------------------- mox unlearn's own extrapolation


def test_unlearn_with_a_variant_equals_extrapolating_its_memorized_model(pair, qa_files, tmp_path):
    ref, _ = pair
    forget, retain = qa_files
    out = tmp_path / "run"
    args = ["unlearn", "--model", str(ref), "--forget", str(forget), "--retain", str(retain), "--out", str(out)]
    assert main([*args, *FAST, "extrapolation.keep_fraction=0.3", "extrapolation.skip=embed"]) == 0
    by_cli = extrapolate(ref, out / "memorized", tmp_path / "cli", "--keep-fraction", "0.3", "--skip", "embed")
    trained = weights(out / "model")
    assert all(torch.equal(trained[k], by_cli[k]) for k in by_cli)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["momentum=true"], "not supported with momentum=true"),
        (["lora=true"], "not supported with lora=true"),
        (["--method", "npo"], "method npo does not extrapolate"),
    ],
)
def test_unlearn_refuses_a_variant_it_cannot_apply_exactly(pair, qa_files, tmp_path, capsys, extra, message):
    assert_refused(pair, qa_files, tmp_path, capsys, ["extrapolation.keep_fraction=0.5", *extra], message)


def test_under_fsdp_only_the_variants_that_need_no_whole_tensor_are_allowed():
    """FSDP ranks hold slices of each tensor: keep_fraction's ranking and DARE's mask need the whole one;
    only / skip / α by depth choose or scale whole tensors by name and work on slices."""
    from mox_unlearn.config import UnlearnConfig
    from mox_unlearn.train.spaces import check_variant

    for settings in ({"keep_fraction": 0.5}, {"drop_rate": 0.1}):
        with pytest.raises(MoxError, match="needs whole tensors and is not supported under FSDP"):
            check_variant(UnlearnConfig(extrapolation=Variant(**settings)), sharded=True)
        check_variant(UnlearnConfig(extrapolation=Variant(**settings)), sharded=False)
    for settings in ({"only": "mlp"}, {"skip": "embed"}, {"alpha_by_depth": "linear:0.5,1.5"}):
        check_variant(UnlearnConfig(extrapolation=Variant(**settings)), sharded=True)


def test_unlearn_refuses_a_variant_that_edits_no_tensor_before_training(pair, qa_files, tmp_path, capsys):
    assert_refused(pair, qa_files, tmp_path, capsys, ["extrapolation.only=no_such_tensor"], "edits no tensor")


def test_a_variant_given_in_code_as_a_mapping_is_read_as_yaml_would_be():
    from mox_unlearn.config import UnlearnConfig, check_config

    cfg = check_config(UnlearnConfig(extrapolation={"keep_fraction": 0.2, "only": "mlp"}))
    assert cfg.extrapolation == Variant(keep_fraction=0.2, only="mlp")
    with pytest.raises(MoxError, match=r"^config extrapolation: keep_fraction must be in \(0, 1\]"):
        check_config(UnlearnConfig(extrapolation={"keep_fraction": 2}))
    with pytest.raises(MoxError, match=r"^config extrapolation: expected a mapping .*got 5"):
        check_config(UnlearnConfig(extrapolation=5))
    with pytest.raises(MoxError, match=r"^config alpha_variants: expected a list, got 5"):
        check_config(UnlearnConfig(alpha_variants=5))


def assert_refused(pair, qa_files, tmp_path, capsys, settings: list[str], message: str) -> None:
    """`mox unlearn` with `settings` exits 2 with one line holding `message`, and makes no run folder."""
    forget, retain = qa_files
    out = tmp_path / "run"
    args = ["unlearn", "--model", str(pair[0]), "--forget", str(forget), "--retain", str(retain), "--out", str(out)]
    assert main([*args, *FAST, *settings]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mox:")]
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


# ----------------------------------------------------------------------------- repair_steps


def test_repair_steps_train_kl_to_the_reference_on_retain_after_extrapolation(pair, qa_files, tmp_path):
    """The first repair loss is KL(p_ref || p_θ_for) on the first retain batch, computed here by hand from
    `mox extrapolate` of the run's θ_mem; the written model is θ_for after the steps, not θ_for itself."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mox_unlearn.data import PromptFormat, encode_records, load_records
    from mox_unlearn.data.formatting import collate
    from mox_unlearn.losses.base import answer_logits, kl_ref_to_policy

    ref, _ = pair
    forget, retain = qa_files
    out = tmp_path / "run"
    args = ["unlearn", "--model", str(ref), "--forget", str(forget), "--retain", str(retain), "--out", str(out)]
    assert main([*args, *FAST, "repair_steps=3", "per_device_batch_size=2"]) == 0
    info = json.loads((out / "run.json").read_text())["repair"]
    assert info["steps"] == 3 and len(info["losses"]) == 3 and all(math.isfinite(x) for x in info["losses"])
    theta_for = tmp_path / "for"
    extrapolate(ref, out / "memorized", theta_for)
    tok = AutoTokenizer.from_pretrained(ref)
    examples = encode_records(tok, load_records(str(retain), name="retain"), PromptFormat(), 64)
    first = torch.randperm(len(examples), generator=torch.Generator().manual_seed(0)).tolist()[:2]
    batch = collate([examples[i] for i in first], tok.pad_token_id)
    labels = batch.pop("labels")
    with torch.no_grad():
        ref_logits = AutoModelForCausalLM.from_pretrained(ref)(**batch).logits
        for_logits = AutoModelForCausalLM.from_pretrained(theta_for)(**batch).logits
    expected = float(kl_ref_to_policy(answer_logits(ref_logits, labels), answer_logits(for_logits, labels)))
    assert info["losses"][0] == pytest.approx(expected, rel=1e-4, abs=1e-7)
    repaired, plain = weights(out / "model"), weights(theta_for)
    assert any(not torch.equal(repaired[k], plain[k]) for k in plain)
    assert "steps of KL(p_ref ‖ p_θ) on the retain set" in (out / "model" / "README.md").read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["lora=true"], "repair_steps is not supported with lora=true"),
        (["momentum=true"], "repair_steps is not supported with momentum=true"),
        (["--method", "npo"], "method npo does not extrapolate"),
        (["repair_steps=-1"], "repair_steps: must be >= 0"),
    ],
)
def test_repair_steps_refusals(pair, qa_files, tmp_path, capsys, extra, message):
    assert_refused(pair, qa_files, tmp_path, capsys, ["repair_steps=2", *extra], message)
