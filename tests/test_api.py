"""The Python API (issue 19 item 1): the names, their docstrings, and docs/api.md's script, run as written."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
import torch

import mox_unlearn
from mox_unlearn.errors import MoxError

API = ("UnlearnConfig", "unlearn", "extrapolate", "evaluate_tofu", "evaluate_muse", "select_alpha", "load_forget_model")
DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_the_api_names_are_exported_typed_and_documented():
    from mox_unlearn import (  # noqa: F401  (the acceptance line of issue 19)
        UnlearnConfig,
        evaluate_muse,
        evaluate_tofu,
        extrapolate,
        load_forget_model,
        select_alpha,
        unlearn,
    )

    assert set(API) <= set(mox_unlearn.__all__) and set(API) <= set(dir(mox_unlearn))
    for name in API[1:]:
        fn = getattr(mox_unlearn, name)
        doc = inspect.getdoc(fn) or ""
        assert "Args:" in doc and "Returns:" in doc, name
        sig = inspect.signature(fn)
        assert all(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values()), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mox_unlearn.nope  # noqa: B018


def test_extrapolate_in_memory_is_eq8_and_leaves_the_inputs_alone(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    mem = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in mem.parameters():
            p.add_(0.01)
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    out = mox_unlearn.extrapolate(ref, mem, 2.0)
    for name, r in ref.state_dict().items():
        assert torch.equal(r, before[name])
        assert torch.equal(out.state_dict()[name], (3.0 * r - 2.0 * mem.state_dict()[name]))
    sds = mox_unlearn.extrapolate(ref.state_dict(), mem.state_dict(), [1.0, 4.0])
    assert len(sds) == 2 and torch.equal(
        sds[1]["lm_head.weight"],
        out.state_dict()["lm_head.weight"] * 0
        + (5.0 * ref.state_dict()["lm_head.weight"] - 4.0 * mem.state_dict()["lm_head.weight"]),
    )
    with pytest.raises(MoxError, match="must both be model folders, both modules or both state dicts"):
        mox_unlearn.extrapolate(ref, mem.state_dict(), 1.0)
    with pytest.raises(MoxError, match="need out="):
        mox_unlearn.extrapolate(tiny_model_dir, tiny_model_dir, 1.0)
    with pytest.raises(MoxError, match="<= 0"):
        mox_unlearn.extrapolate(ref, mem, -1.0)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@pytest.mark.slow
def test_the_docs_api_script_runs_as_written(data_dir, tmp_path):
    """Every ```python block of docs/api.md, in order, in one namespace; only the settings of the first
    block are replaced (a tiny random Llama, the shared TOFU data, 4 records per split, 2 steps)."""
    from mox_unlearn.tiny import build_tiny_llama, build_tokenizer

    tofu = data_dir / "tofu"
    texts = [json.loads(line)["question"] + " " + json.loads(line)["answer"] for line in open(tofu / "full.jsonl")]
    base = build_tiny_llama(tmp_path / "base", build_tokenizer(texts, vocab_size=1024), max_position_embeddings=1024)
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 6 and "BASE =" in blocks[0]
    ns: dict = {}
    exec(compile(blocks[0], f"{DOC}:settings", "exec"), ns)
    ns.update(
        BASE=Path(base),
        TOFU=tofu,
        WORK=tmp_path / "work",
        LIMIT=4,
        QUICK={"max_steps": 2, "per_device_batch_size": 4, "batch_size": 4, "max_length": 128},
    )
    for i, block in enumerate(blocks[1:], start=1):
        exec(compile(block, f"{DOC}:block{i}", "exec"), ns)
    assert (tmp_path / "work" / "mox" / "model" / "config.json").is_file()
    assert [c.name for c in ns["candidates"]] == ["alpha-1", "alpha-2", "alpha-4", "alpha-8"]
    assert set(ns["summaries"]) == {1.0, 2.0, 4.0, 8.0} and ns["chosen"] in ns["summaries"]
