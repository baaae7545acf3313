"""LoRA memorization: θ_for = θ_ref − α·ΔW_lora exactly, adapters that reproduce the merged folders, and
momentum that averages the products B·A (not A and B separately)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mox_unlearn.cli import main
from mox_unlearn.extrapolation import extrapolate_folders
from mox_unlearn.lora import LowRankMomentum

pytest.importorskip("peft")

LORA = ["lora=true", "lora_r=4", "lora_alpha=8", "lr=5e-3", "batch_size=2", "per_device_batch_size=2", "max_length=48"]


def _run(tiny_model_dir, qa_files, out, *extra):
    forget, retain = qa_files
    assert (
        main(
            [
                "unlearn",
                "--model",
                str(tiny_model_dir),
                "--forget",
                str(forget),
                "--retain",
                str(retain),
                "--out",
                str(out),
                "--max-steps",
                "4",
                *LORA,
                *extra,
            ]
        )
        == 0
    )
    return out


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def _assert_same(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, qa_files, tmp_path_factory):
    return _run(tiny_model_dir, qa_files, tmp_path_factory.mktemp("lora") / "run", "--alpha", "3")


def test_merged_lora_mox_equals_streaming_extrapolation_of_merged_memorized(lora_run, tiny_model_dir, tmp_path):
    run = json.loads((lora_run / "run.json").read_text())
    assert 0 < run["trainable_parameters"] < 0.5 * sum(v.numel() for v in _weights(tiny_model_dir).values())
    mem, ref = _weights(lora_run / "memorized"), _weights(tiny_model_dir)
    assert any(not torch.equal(mem[k], ref[k]) for k in ref)  # the adapter learnt something
    extrapolate_folders(tiny_model_dir, lora_run / "memorized", [3.0], tmp_path / "streamed", progress=False)
    _assert_same(_weights(lora_run / "model"), _weights(tmp_path / "streamed"), atol=1e-5)


def test_adapters_rebuild_the_merged_models(lora_run, tiny_model_dir):
    from peft import PeftModel

    from mox_unlearn.io.loading import load_model
    from mox_unlearn.lora import load_forget_model

    forget = PeftModel.from_pretrained(load_model(str(tiny_model_dir), torch.float32), str(lora_run / "forget-adapter"))
    _assert_same(
        {k: v for k, v in forget.merge_and_unload().state_dict().items() if k in _weights(lora_run / "model")},
        _weights(lora_run / "model"),
        atol=1e-5,
    )
    # α chosen at load time from the memorization adapter
    again = load_forget_model(str(tiny_model_dir), str(lora_run / "memorized-adapter"), 3.0)
    _assert_same(
        {k: v for k, v in again.state_dict().items() if k in _weights(lora_run / "model")},
        _weights(lora_run / "model"),
        atol=1e-5,
    )


def test_lora_momentum_is_exact_over_products(tiny_model_dir, qa_files, tmp_path):
    """Momentum over 2-step 'epochs' equals the fold of the per-epoch merged θ_mem snapshots (Eq. 10)."""
    from mox_unlearn.momentum import MomentumAverage

    out = _run(
        tiny_model_dir,
        qa_files,
        tmp_path / "mom",
        "--momentum",
        "momentum_every=2",
        "eta=0.5",
        "save_epochs=true",
        "epochs=2",
        "batch_size=2",
    )
    ref = _weights(tiny_model_dir)
    snaps = sorted((out / "epochs").glob("epoch-*"))
    assert len(snaps) == 2
    avg = MomentumAverage(0.5, 4.0)
    for snap in snaps:
        avg.update(ref, _weights(snap).items())
    merged = _weights(out / "model")
    for k, v in merged.items():
        torch.testing.assert_close(v, avg.avg[k], rtol=0, atol=1e-5, msg=k)
    adapter = load_file(str(out / "forget-adapter" / "adapter_model.safetensors"))
    assert {t.shape[1] for k, t in adapter.items() if k.endswith("lora_B.weight")} == {8}  # rank 4 × 2 updates


def test_low_rank_momentum_coefficients_by_hand():
    class Layer:  # stands in for a peft model: one adapted weight
        pass

    m = LowRankMomentum(eta=0.25, alpha=2.0)
    m.coefs, m.history = [], []
    b1, a1 = torch.tensor([[1.0], [0.0]]), torch.tensor([[1.0, 1.0]])
    b2, a2 = torch.tensor([[0.0], [1.0]]), torch.tensor([[2.0, 0.0]])
    for b, a in ((b1, a1), (b2, a2)):
        m.coefs = [c * (1 - m.eta) for c in m.coefs] + ([m.eta] if m.coefs else [1.0])
        m.history.append({"w": (b, a)})
    b, a = m.forget_factors()["w"]
    # θ̄ − θ_ref = −α(0.75·B1A1 + 0.25·B2A2)
    expected = -2.0 * (0.75 * b1 @ a1 + 0.25 * b2 @ a2)
    torch.testing.assert_close(b @ a, expected)
    assert m.coefs == [0.75, 0.25]


def test_lora_refusals(tiny_model_dir, qa_files, tmp_path, capsys):
    forget, retain = qa_files
    base = ["unlearn", "--model", str(tiny_model_dir), "--forget", str(forget), "--retain", str(retain)]
    assert main([*base, "--out", str(tmp_path / "a"), "--method", "rmu", "lora=true"]) == 2
    assert "use one or the other" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b"), "lora=true", "lora_targets=no_such_module"]) == 2
    assert "LoRA" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_gradient_checkpointing_gives_the_same_run(tiny_model_dir, qa_files, tmp_path):
    plain = _run(tiny_model_dir, qa_files, tmp_path / "plain")
    ckpt = _run(tiny_model_dir, qa_files, tmp_path / "ckpt", "gradient_checkpointing=true")
    _assert_same(_weights(plain / "model"), _weights(ckpt / "model"), atol=1e-5)
