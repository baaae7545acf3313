"""Every method of the registry runs in the same loop; the reference cache changes nothing but speed."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from mox_unlearn.cli import main
from mox_unlearn.config import UnlearnConfig
from mox_unlearn.data import collate, encode_records, load_records
from mox_unlearn.forward import Models, RefCache, StepBatch, build_inputs
from mox_unlearn.losses import LOSSES
from mox_unlearn.methods import METHODS, Method, register_method
from mox_unlearn.methods.targets import TargetSource
from mox_unlearn.train import Callback, resolve

FAST = ["per_device_batch_size=2", "batch_size=2", "lr=1e-3", "warmup_epochs=0", "max_length=64", "--max-steps", "3"]
EXTRA = {
    "whp": ["reinforce_max_steps=2"],
    "altpo": ["alternates_max_new_tokens=6"],
    "rmu": ["loss.steering_coeff=5"],
}


def weights(folder) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in AutoModelForCausalLM.from_pretrained(folder).state_dict().items()}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_three_steps_of_every_method(name, tiny_model_dir, qa_files, tmp_path):
    forget, retain = qa_files
    out = tmp_path / name
    code = main(
        [
            "unlearn",
            "--method",
            name,
            "--model",
            str(tiny_model_dir),
            "--forget",
            str(forget),
            "--retain",
            str(retain),
            "--out",
            str(out),
            *FAST,
            *EXTRA.get(name, []),
        ]
    )
    assert code == 0
    info = json.loads((out / "run.json").read_text())
    assert info["final_logs"] and all(math.isfinite(v) for v in info["final_logs"].values())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all(math.isfinite(r["loss"]) for r in log)
    ref, new = weights(tiny_model_dir), weights(out / "model")
    moved = [k for k in ref if not torch.equal(ref[k], new[k])]
    assert moved, f"{name} did not change any parameter"
    if name == "rmu":  # only the layers around the RMU layer train by default
        assert all("mlp.down_proj" in k for k in moved)
    if name == "altpo":
        rows = [json.loads(line) for line in (out / "alternates.jsonl").read_text().splitlines()]
        assert len(rows) == 4 and all("alternate" in r for r in rows)
    if name == "whp":
        assert (out / "reinforce" / "model" / "config.json").is_file()


def test_every_objective_of_every_method_is_registered():
    for method in METHODS.values():
        for objective in method.objectives:
            assert objective in LOSSES, (method.name, objective)


@pytest.mark.parametrize("objective", ["npo", "dpo", "memorize_po"])
def test_cached_reference_logprobs_equal_recomputed_ones(objective, tiny_model_dir, qa_files, tokenizer):
    """The cache reproduces the reference statistics of a fresh forward, batch after batch."""
    method = {"npo": "npo", "dpo": "dpo", "memorize_po": "mox"}[objective]
    cfg = UnlearnConfig(
        model=str(tiny_model_dir),
        forget=str(qa_files[0]),
        retain=str(qa_files[1]),
        method=method,
        objective=objective,
        max_length=64,
    )
    r = resolve(cfg)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval().requires_grad_(False)
    ex = encode_records(tokenizer, load_records(cfg.forget), cfg.prompt, 64)
    cached = Models(model=model, ref=ref, cache=RefCache(ref, enabled=True))
    fresh = Models(model=model, ref=ref, cache=RefCache(ref, enabled=False))
    for rows in ([0, 1], [1, 2, 3], [3, 0], [2]):  # items reappear with other batch partners / padding
        batch = StepBatch(
            forget=collate([ex[i] for i in rows], tokenizer.pad_token_id),
            forget_keys=rows,
            retain=collate([ex[i] for i in rows], tokenizer.pad_token_id),
            target=collate([ex[i] for i in reversed(rows)], tokenizer.pad_token_id),
            target_keys=[("t", i) for i in reversed(rows)],
        )
        a, _ = r.spec.fn(build_inputs(r.needs | {"ref_target"}, cached, batch), **r.hp)
        b, _ = r.spec.fn(build_inputs(r.needs | {"ref_target"}, fresh, batch), **r.hp)
        assert a.item() == pytest.approx(b.item(), rel=1e-5, abs=1e-6)
    assert cached.cache.hits > 0


def test_method_specific_refusals(tiny_model_dir, qa_files, tmp_path, capsys):
    forget, retain = qa_files
    base = ["unlearn", "--model", str(tiny_model_dir), "--forget", str(forget), "--out", str(tmp_path / "o")]
    assert main([*base, "--method", "npo"]) == 2
    assert "needs a retain set" in capsys.readouterr().err
    assert main([*base, "--method", "npo", "--retain", str(retain), "--targeted"]) == 2
    assert "targeted variant" in capsys.readouterr().err
    assert main([*base, "--method", "ga", "trainable=nothing_matches_this"]) == 2
    assert "matches no parameter" in capsys.readouterr().err
    assert main([*base, "--method", "ga", "--momentum"]) == 2
    assert "needs an extrapolating method" in capsys.readouterr().err


def test_every_preset_config_loads_and_resolves():
    from pathlib import Path

    from mox_unlearn.config import load_config

    presets = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))
    assert {p.stem for p in presets} >= set(METHODS)
    for path in presets:
        cfg = load_config(path, ["model=some-model"])
        r = resolve(cfg)
        assert r.method.name == cfg.method and set(cfg.loss) <= set(r.spec.defaults), path


# ----------------------------------------------------------------------------- methods as plug-ins


class EchoQuestions(TargetSource):
    """A made-up target source: each forget question is its own target answer."""

    name = "echo"

    def pool(self, run) -> list[str]:
        return [r["question"] for r in run.forget.records]

    def choices(self, n_items: int, n_pool: int, seed: int, epoch: int) -> list[int]:
        return list(range(n_items))


class SeenTargets(Callback):
    def __init__(self):
        self.targets: list[str] = []

    def on_micro_batch(self, run, batch, mine) -> None:
        choices = run.targets.choices(0)
        self.targets += [run.targets.pool[choices[i]] for i in mine[0]]


def test_a_made_up_method_with_its_own_target_source_trains_in_the_unchanged_loop(tiny_model_dir, qa_files, tmp_path):
    """Issue 15: a method that brings its own targets is one registry entry + its plug-in, no loop edit."""
    forget, retain = qa_files
    register_method(Method("echo", ("idkpo",), "fine-tune forget prompts to their own question", targets=EchoQuestions))
    seen = SeenTargets()
    try:
        assert resolve(UnlearnConfig(model="m", forget="f", method="echo")).target == "echo"
        args = ["unlearn", "--method", "echo", "--model", str(tiny_model_dir), "--forget", str(forget)]
        args += ["--retain", str(retain), "--out", str(tmp_path / "echo"), *FAST]
        assert main(args, callbacks=[seen]) == 0
    finally:
        METHODS.pop("echo")
    run = json.loads((tmp_path / "echo" / "run.json").read_text())
    assert run["final_logs"]["target"] > 0 and (tmp_path / "echo" / "model" / "config.json").is_file()
    questions = {r["question"] for r in load_records(str(forget), name="forget").records}
    assert len(seen.targets) == 6 and set(seen.targets) <= questions  # 3 steps × 2 items, all echoes


def test_a_loss_takes_its_defaults_from_its_signature_and_checks_its_switches():
    from mox_unlearn.losses import register_loss

    assert LOSSES["npo"].defaults == {"beta": 0.1, "gamma": 1.0, "alpha_r": 1.0}
    assert LOSSES["memorize"].switches == {"lambda_kl": frozenset({"retain_logits", "ref_retain_logits"})}
    with pytest.raises(ValueError, match="need defaults"):
        register_loss("bad", needs=("forget",))(lambda inputs, beta: None)
    with pytest.raises(ValueError, match="not its hyper-parameters"):
        register_loss("bad", needs=("forget",), switches={"lambda_kl": ("retain",)})(lambda inputs, beta=1.0: None)
    assert "bad" not in LOSSES
