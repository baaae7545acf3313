"""`mox eval`: load a model, run a benchmark, write one JSON result file and print a table."""

from __future__ import annotations

import json
import time
from pathlib import Path

from mox_unlearn import versions
from mox_unlearn.data.formatting import PromptFormat, check_prompt
from mox_unlearn.errors import MoxError
from mox_unlearn.evaluate.benchmarks import get_benchmark
from mox_unlearn.io.atomic import check_not_an_input, write_text_atomic
from mox_unlearn.io.loading import check_attn_implementation, check_fits, load_model, load_tokenizer, torch_dtype
from mox_unlearn.redact import redact

OUTPUT_FORMATS = ("mox", "open-unlearning")
RESULT_IN_FOLDER = "mox_result.json"  # mox's own result, inside an open-unlearning output folder


def load_eval_model(
    path: str,
    dtype: str = "auto",
    fmt: PromptFormat | None = None,
    *,
    attn_implementation: str | None = None,
    device_map: str | None = None,
):
    """Model (eval mode, on the GPU where there is one, or placed by `device_map`) and tokenizer with a pad
    token. The tokenizer is checked first (against the model's config, and rendering one prompt with `fmt`),
    before any weights load."""
    import torch

    tokenizer = load_tokenizer(path)
    check_fits(path, tokenizer)
    if fmt is not None:
        check_prompt(tokenizer, fmt)
    model = load_model(
        path, torch_dtype(dtype, auto=True), attn_implementation=attn_implementation, device_map=device_map
    )
    if device_map is None:
        model = model.to("cuda" if torch.cuda.is_available() else "cpu")
    return model.eval(), tokenizer


def run_lm_eval(
    model_path: str,
    out: str | Path,
    *,
    tasks: str | None,
    tasks_dir: str | None = None,
    num_fewshot: int | None = None,
    data: str | None = None,
    batch_size: int = 16,
    limit: int | None = None,
    dtype: str = "auto",
    attn_implementation: str | None = None,
    device_map: str | None = None,
    chat_template: str = "auto",
    metric: str | None = None,
) -> dict:
    """`mox eval --benchmark lm-eval`: the tasks and the extra are checked before the model loads; the result
    (evaluate/harness.py) is written atomically like every other. `chat_template`: "always" formats every
    prompt with the tokenizer's chat template (lm-eval's apply_chat_template); "auto" and "never" keep
    lm-eval's default, plain prompts, as its tasks and most published MMLU / WMDP numbers are defined."""
    from mox_unlearn.evaluate import harness

    out = Path(out)
    if data is not None:
        raise MoxError("--data is not used by --benchmark lm-eval (its tasks name their data; --tasks-dir adds yours)")
    if out.suffix != ".json":
        raise MoxError(f"--out must be a .json file, got {out}")
    if num_fewshot is not None and num_fewshot < 0:
        raise MoxError(f"--num-fewshot must be >= 0, got {num_fewshot}")
    task_list = harness.parse_tasks(tasks)
    check_not_an_input(out, {"--model": model_path, "--tasks-dir": tasks_dir}, replaces_folder=False)
    check_model_folder_if_local(model_path, "--model")
    manager = harness.task_manager(task_list, tasks_dir)
    start = time.perf_counter()
    model, tokenizer = load_eval_model(
        model_path, dtype, attn_implementation=attn_implementation, device_map=device_map
    )
    if chat_template == "always" and not getattr(tokenizer, "chat_template", None):
        raise MoxError(f"--chat-template always: the tokenizer of {model_path} has no chat template")
    result = harness.evaluate_lm_eval(
        model,
        tokenizer,
        task_list,
        batch_size=batch_size,
        limit=limit,
        num_fewshot=num_fewshot,
        manager=manager,
        chat_template=chat_template == "always",
        metric=metric,
    )
    result = {
        "benchmark": "lm-eval",
        "model": str(model_path),
        **result,
        "limit": limit,
        "seconds": round(time.perf_counter() - start, 2),
        "versions": versions(),
    }
    write_text_atomic(out, json.dumps(redact(result), indent=1) + "\n")
    return result


def check_model_folder_if_local(path: str, flag: str) -> None:
    from mox_unlearn.io.loading import check_model_folder, looks_like_path

    if looks_like_path(path):
        try:
            check_model_folder(Path(path).expanduser())
        except MoxError as e:
            raise MoxError(f"{flag}: {e}") from None


def _reference(path: str | None, tokenizer, dtype: str):
    """The reference attack's model, which must tokenize as the evaluated model does (the same ids go to both)."""
    if path is None:
        return None
    from mox_unlearn.evaluate.convention import tokenizer_fingerprint

    ref, ref_tok = load_eval_model(path, dtype)
    if tokenizer_fingerprint(ref_tok) != tokenizer_fingerprint(tokenizer):
        raise MoxError(
            f"--mia-reference {path} has another tokenizer than the evaluated model; the attack needs the same"
        )
    return ref


def check_eval_inputs(benchmark: str, model_path: str, data: str | None, forget_split: str) -> None:
    """What `mox eval` can know before loading the model, refused in one line: a local model folder that
    is not one (io.loading.check_model_folder), the split name, and a local `--data`
    (io.loading.looks_like_path) that is missing, a file, or lacks a file the benchmark reads. Hub ids are
    left to the loaders."""
    from mox_unlearn.io.loading import check_model_folder, looks_like_path

    if looks_like_path(model_path):
        check_model_folder(Path(model_path).expanduser())

    needed = get_benchmark(benchmark).files(forget_split)
    if not data or not looks_like_path(data):
        return
    folder = Path(data).expanduser()
    layout = f"a folder in the {benchmark.upper()} layout (e.g. {needed[0]}) or a hub id"
    if not folder.exists():
        raise MoxError(f"--data {data}: no such local folder; expected {layout}")
    if not folder.is_dir():
        raise MoxError(f"--data {data} is a file; expected {layout}")
    missing = [name.replace("|", " or ") for name in needed if not any((folder / n).is_file() for n in name.split("|"))]
    if missing:
        raise MoxError(
            f"--data {data}: local folder without {missing[0]} ({len(missing)} of {len(needed)} files missing)"
        )


def run_eval(
    benchmark: str,
    model_path: str,
    out: str | Path,
    *,
    data: str | None = None,
    forget_split: str = "forget10",
    retain_result: str | None = None,
    batch_size: int = 16,
    limit: int | None = None,
    fmt: PromptFormat | None = None,
    dtype: str = "auto",
    overwrite: bool = True,
    allow_convention_mismatch: bool = False,
    output_format: str = "mox",
    attn_implementation: str | None = None,
    device_map: str | None = None,
    mia_reference: str | None = None,
    mia_gradnorm: bool = True,
    lm_eval_tasks: str | None = None,
    tasks_dir: str | None = None,
    num_fewshot: int | None = None,
    max_length: int | None = None,
    lm_eval_metric: str | None = None,
) -> dict:
    """Evaluate and write `out` (JSON, atomically). Returns the result dict. `max_length` (MUSE only): score
    the privleak texts up to this many tokens (default: the model's context window).

    With `output_format` "open-unlearning" (TOFU only), `out` is a folder that receives open-unlearning's
    TOFU_EVAL.json and TOFU_SUMMARY.json (evaluate/open_unlearning.py) and mox's own result as
    `mox_result.json`, all or nothing."""
    if limit is not None and limit < 1:
        raise MoxError(f"--limit must be >= 1, got {limit}")
    if max_length is not None and benchmark != "muse":
        raise MoxError(f"--max-length is for MUSE's privleak texts, not {benchmark}")
    if max_length is not None:  # before any model loads
        from mox_unlearn.evaluate.muse import check_max_length

        check_max_length(max_length)
    if benchmark == "lm-eval":
        return run_lm_eval(
            model_path,
            out,
            tasks=lm_eval_tasks,
            tasks_dir=tasks_dir,
            num_fewshot=num_fewshot,
            data=data,
            batch_size=batch_size,
            limit=limit,
            dtype=dtype,
            attn_implementation=attn_implementation,
            device_map=device_map,
            chat_template=fmt.chat_template if fmt is not None else "auto",
            metric=lm_eval_metric,
        )
    if lm_eval_metric is not None:
        raise MoxError(f"--metric chooses lm-eval's summary number, not {benchmark}'s")
    bench = get_benchmark(benchmark)
    if output_format not in OUTPUT_FORMATS:
        raise MoxError(f"unknown --format {output_format!r}; valid: {', '.join(OUTPUT_FORMATS)}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise MoxError(f"{out} exists (use --overwrite)")
    if output_format == "open-unlearning":
        if benchmark != "tofu":
            raise MoxError(f"--format open-unlearning writes TOFU_EVAL.json: TOFU only, not {benchmark}")
        if out.suffix == ".json":
            raise MoxError(f"--format open-unlearning writes a folder (TOFU_EVAL.json, ...): --out {out} ends in .json")
        if out.is_dir() and any(out.iterdir()) and not (out / RESULT_IN_FOLDER).is_file():
            raise MoxError(
                f"{out} exists and is not a folder `mox eval --format open-unlearning` wrote; choose another --out"
            )
        if out.exists() and not out.is_dir():
            raise MoxError(f"{out} exists and is not a folder")
    elif out.suffix != ".json":
        raise MoxError(f"--out must be a .json file, got {out}")
    inputs = {"--model": model_path, "--retain-result": retain_result}
    if data and Path(data).expanduser().is_dir():  # the files it reads; a result beside them is fine
        names = [n for name in bench.files(forget_split) for n in name.split("|")]
        inputs |= {f"--data file {name}": Path(data).expanduser() / name for name in names}
    check_not_an_input(out, inputs, replaces_folder=output_format == "open-unlearning")
    check_eval_inputs(benchmark, model_path, data, forget_split)
    check_attn_implementation(attn_implementation)
    if mia_reference is not None:
        check_model_folder_if_local(mia_reference, "--mia-reference")
    if bench.precheck is not None:  # e.g. a retain result of another split: known before the model loads
        bench.precheck(data=data or bench.hub_id, forget_split=forget_split, retain_result=retain_result, limit=limit)
    start = time.perf_counter()
    model, tokenizer = load_eval_model(
        model_path, dtype, fmt or PromptFormat(), attn_implementation=attn_implementation, device_map=device_map
    )
    extra = dict(mia_reference=_reference(mia_reference, tokenizer, dtype), mia_gradnorm=mia_gradnorm)
    if benchmark == "muse":
        extra["max_length"] = max_length
    result = bench.run(
        model,
        tokenizer,
        data=data or bench.hub_id,
        forget_split=forget_split,
        retain_result=retain_result,
        fmt=fmt,
        batch_size=batch_size,
        limit=limit,
        allow_convention_mismatch=allow_convention_mismatch,
        **extra,
    )
    result = {
        "benchmark": benchmark,
        "model": str(model_path),
        "data": data,
        **result,
        "seconds": round(time.perf_counter() - start, 2),
        "versions": versions(),
    }
    if output_format == "open-unlearning":
        write_open_unlearning(out, result, overwrite=overwrite, inputs=inputs)
    else:
        write_text_atomic(out, json.dumps(redact(result), indent=1) + "\n")
    return result


def write_open_unlearning(out: Path, result: dict, *, overwrite: bool, inputs=()) -> None:
    """The folder of `--format open-unlearning`: TOFU_EVAL.json, TOFU_SUMMARY.json, mox_result.json."""
    from mox_unlearn.evaluate import open_unlearning as OU
    from mox_unlearn.io.atomic import atomic_output_dir

    result = redact(result)
    ou_eval = OU.tofu_eval_json(result)  # before the folder exists: an old result fails with nothing written
    with atomic_output_dir(out, overwrite=overwrite, inputs=inputs) as tmp:
        (tmp / OU.EVAL_FILE).write_text(json.dumps(ou_eval, indent=4) + "\n")
        (tmp / OU.SUMMARY_FILE).write_text(json.dumps(OU.tofu_summary_json(ou_eval), indent=4) + "\n")
        (tmp / RESULT_IN_FOLDER).write_text(json.dumps(result, indent=1) + "\n")


def summary_table(result: dict) -> str:
    """The summary and every aggregate metric as an aligned two-column table."""
    rows = [(k, v) for k, v in result["summary"].items()]
    rows += [(k, m["value"]) for k, m in result["metrics"].items() if k not in result["summary"]]
    width = max(len(k) for k, _ in rows)
    fmt = lambda v: "missing" if v is None else f"{v:.4g}"  # noqa: E731
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{k:<{width}}  {fmt(v)}" for k, v in rows]
    return "\n".join(lines)
