"""`mox eval`: load a model, run a benchmark, write one JSON result file and print a table."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from mox_unlearn import __version__
from mox_unlearn.data.formatting import PromptFormat, ensure_pad_token
from mox_unlearn.errors import MoxError

BENCHMARKS = ("tofu", "muse")


def load_eval_model(path: str, dtype: str = "auto"):
    """Model (eval mode, on the GPU where there is one) and tokenizer with a pad token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    dtypes = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in dtypes:
        raise MoxError(f"unknown dtype {dtype!r}; valid: {', '.join(dtypes)}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtypes[dtype])
    except (OSError, ValueError, KeyError) as e:
        raise MoxError(f"cannot load model {path!r}: {str(e).strip().splitlines()[0]}") from None
    ensure_pad_token(tokenizer)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), tokenizer


def run_eval(benchmark: str, model_path: str, out: str | Path, *, data: str | None = None, forget_split: str = "forget10",
             retain_result: str | None = None, batch_size: int = 16, limit: int | None = None,
             fmt: PromptFormat | None = None, dtype: str = "auto", overwrite: bool = True) -> dict:
    """Evaluate and write `out` (JSON, atomically). Returns the result dict."""
    if benchmark not in BENCHMARKS:
        raise MoxError(f"unknown benchmark {benchmark!r}; valid: {', '.join(BENCHMARKS)}")
    if limit is not None and limit < 1:
        raise MoxError(f"--limit must be >= 1, got {limit}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise MoxError(f"{out} exists (use --overwrite)")
    if out.suffix != ".json":
        raise MoxError(f"--out must be a .json file, got {out}")
    start = time.perf_counter()
    model, tokenizer = load_eval_model(model_path, dtype)
    if benchmark == "tofu":
        from mox_unlearn.evaluate.tofu import TOFU_HUB_ID, evaluate_tofu

        result = evaluate_tofu(model, tokenizer, data=data or TOFU_HUB_ID, forget_split=forget_split,
                               retain_result=retain_result, fmt=fmt, batch_size=batch_size, limit=limit)
    else:
        from mox_unlearn.evaluate.muse import MUSE_HUB_ID, evaluate_muse

        result = evaluate_muse(model, tokenizer, data=data or MUSE_HUB_ID, retain_result=retain_result,
                               batch_size=batch_size, limit=limit)
    result = {"benchmark": benchmark, "model": str(model_path), "data": data, **result,
              "seconds": round(time.perf_counter() - start, 2), "versions": _versions()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, out)
    return result


def summary_table(result: dict) -> str:
    """The summary and every aggregate metric as an aligned two-column table."""
    rows = [(k, v) for k, v in result["summary"].items()]
    rows += [(k, m["value"]) for k, m in result["metrics"].items() if k not in result["summary"]]
    width = max(len(k) for k, _ in rows)
    fmt = lambda v: "missing" if v is None else f"{v:.4g}"  # noqa: E731
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{k:<{width}}  {fmt(v)}" for k, v in rows]
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"mox-unlearn": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": sys.version.split()[0]}
