"""The fault-injection cases: one bad input each, and what `mox` must answer.

Shared by tests/test_faults.py, which asserts every case, and scripts/reliability_report.py, which runs
the same cases and writes docs/reliability.md, so the document lists exactly what the tests check.

Every case is a command line with {placeholders} for the inputs `build_inputs` makes (a tiny model
folder, QA files, and broken variants of each) and a text the message must contain: the offending
input. `run_case` runs the real CLI in-process and returns what it printed and left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

FAST = "per_device_batch_size=2 batch_size=2 max_length=64 lr=1e-3 warmup_epochs=0 --max-steps 1"
UNLEARN = "unlearn --model {model} --forget {forget} --retain {retain} --out {out} " + FAST
EXTRAPOLATE = "extrapolate --ref {model} --mem {model} --alpha 2 --out {out}"
EVAL = "eval --benchmark tofu --model {model} --data {tofu} --out {out}.json"
SELECT = "select-alpha --ref {model} --mem {model} --forget {forget} --holdout {holdout} --retain {retain} --out {out}"


@dataclass(frozen=True)
class Fault:
    """One bad input: `command` (without the leading `mox`) fails with one line naming `names`."""

    id: str
    input: str  # what is wrong, in words
    command: str  # {placeholders}: the paths of `build_inputs`, {out} the case's output path
    names: str  # text the stderr line must contain (formatted like `command`)
    warning: bool = False  # the run continues after one warning line and exits 0
    needs_non_root: bool = False  # chmod 000 does not stop root from reading
    keeps_out: bool = False  # the output stays on purpose: a trained run's θ_mem, for the command the message names


def swap(command: str, old: str, new: str) -> str:
    """`command` with one placeholder replaced: the way a case differs from the good command line."""
    assert old in command, (old, command)
    return command.replace(old, new, 1)


FAULTS: list[Fault] = [
    # --- files and records
    Fault(
        "forget-missing", "forget file does not exist", swap(UNLEARN, "{forget}", "{missing_jsonl}"), "{missing_jsonl}"
    ),
    Fault("forget-is-folder", "forget path is a folder", swap(UNLEARN, "{forget}", "{dir_jsonl}"), "{dir_jsonl}"),
    Fault(
        "retain-unreadable",
        "retain file without read permission (chmod 000)",
        swap(UNLEARN, "{retain}", "{unreadable_json}"),
        "{unreadable_json}",
        needs_non_root=True,
    ),
    Fault(
        "forget-bad-jsonl",
        "forget JSONL with a broken line 3",
        swap(UNLEARN, "{forget}", "{bad_jsonl}"),
        "{bad_jsonl}:3",
    ),
    Fault(
        "retain-bad-json", "retain JSON list broken on line 4", swap(UNLEARN, "{retain}", "{bad_json}"), "{bad_json}:4"
    ),
    Fault(
        "forget-not-utf8",
        "forget JSONL with a Latin-1 byte on line 2",
        swap(UNLEARN, "{forget}", "{latin1_jsonl}"),
        "{latin1_jsonl}:2",
    ),
    Fault(
        "forget-missing-field",
        'forget record on line 2 without "answer"',
        swap(UNLEARN, "{forget}", "{no_answer_jsonl}"),
        "{no_answer_jsonl}:2",
    ),
    Fault(
        "retain-non-string-field",
        'retain record [1] with "question": 7',
        swap(UNLEARN, "{retain}", "{int_question_json}"),
        "{int_question_json}[1]",
    ),
    Fault(
        "forget-list-answer",
        'forget record with "answer": ["a", "b"]',
        swap(UNLEARN, "{forget}", "{list_answer_jsonl}"),
        "{list_answer_jsonl}:1",
    ),
    Fault(
        "forget-not-object",
        "forget JSONL line that is a number",
        swap(UNLEARN, "{forget}", "{number_jsonl}"),
        "{number_jsonl}:1",
    ),
    Fault(
        "forget-lone-surrogate",
        'forget answer "\\ud800" (not valid Unicode)',
        swap(UNLEARN, "{forget}", "{surrogate_jsonl}"),
        "{surrogate_jsonl}:1",
    ),
    Fault(
        "retain-deep-nesting",
        "retain JSON nested 100000 levels deep",
        swap(UNLEARN, "{retain}", "{deep_json}"),
        "{deep_json}:1",
    ),
    Fault("forget-empty", "empty forget file", swap(UNLEARN, "{forget}", "{empty_jsonl}"), "{empty_jsonl}"),
    Fault("retain-empty", "retain JSON []", swap(UNLEARN, "{retain}", "{empty_json}"), "{empty_json}"),
    Fault("forget-unknown-extension", "forget file forget.csv", swap(UNLEARN, "{forget}", "{csv}"), "{csv}"),
    Fault(
        "forget-equals-retain",
        "the retain set holds every forget record (same file)",
        swap(UNLEARN, "{retain}", "{forget}"),
        "{forget}",
        warning=True,
    ),
    Fault("config-missing", "--config file does not exist", UNLEARN + " --config {missing_yaml}", "{missing_yaml}"),
    Fault("config-bad-yaml", "--config file with broken YAML", UNLEARN + " --config {bad_yaml}", "{bad_yaml}"),
    # --- model folders
    Fault("model-missing", "model folder does not exist", swap(UNLEARN, "{model}", "{no_model}"), "{no_model}"),
    Fault("model-is-file", "model path is a file", swap(UNLEARN, "{model}", "{model_file}"), "{model_file}"),
    Fault(
        "model-no-config", "model folder without config.json", swap(UNLEARN, "{model}", "{m_noconfig}"), "{m_noconfig}"
    ),
    Fault(
        "model-bad-config",
        "model config.json is not valid JSON",
        swap(UNLEARN, "{model}", "{m_badconfig}"),
        "{m_badconfig}/config.json:1",
    ),
    Fault(
        "model-no-weights", "model folder without weights", swap(UNLEARN, "{model}", "{m_noweights}"), "{m_noweights}"
    ),
    Fault(
        "model-truncated",
        "model.safetensors cut to half its size",
        swap(UNLEARN, "{model}", "{m_trunc}"),
        "{m_trunc}/model.safetensors",
    ),
    Fault(
        "model-corrupted",
        "model.safetensors with its header bytes overwritten",
        swap(UNLEARN, "{model}", "{m_corrupt}"),
        "{m_corrupt}/model.safetensors",
    ),
    Fault(
        "model-missing-shard",
        "shard index lists a shard that is missing",
        swap(UNLEARN, "{model}", "{m_lost_shard}"),
        "model-00002-of-00002.safetensors",
    ),
    Fault(
        "model-pickle-only",
        "only pytorch_model.bin (pickle), no --allow-pickle",
        swap(UNLEARN, "{model}", "{m_bin}"),
        "{m_bin}",
    ),
    # --- names and numbers
    Fault("unknown-method", "--method nope", UNLEARN + " --method nope", "'nope'; valid methods: altpo"),
    Fault("unknown-objective", "--objective nope", UNLEARN + " --objective nope", "'nope'"),
    Fault(
        "unknown-config-key",
        "learning_rate=1 (no such key)",
        UNLEARN + " learning_rate=1",
        "'learning_rate'; valid keys",
    ),
    Fault("alpha-nan", "--alpha nan", UNLEARN + " --alpha nan", "alpha"),
    Fault("lr-negative", "lr=-1e-5", UNLEARN + " lr=-1e-5", "lr"),
    Fault("batch-size-zero", "batch_size=0", UNLEARN + " batch_size=0", "batch_size"),
    Fault(
        "per-device-batch-zero",
        "per_device_batch_size=0",
        UNLEARN + " per_device_batch_size=0",
        "per_device_batch_size",
    ),
    Fault("batch-not-multiple", "batch_size=3 with per_device_batch_size=2", UNLEARN + " batch_size=3", "batch_size 3"),
    Fault("max-steps-zero", "--max-steps 0", UNLEARN + " --max-steps 0", "max_steps"),
    Fault("eta-above-one", "eta=7", UNLEARN + " eta=7", "eta"),
    Fault("beta-infinite", "loss.beta=inf", UNLEARN + " loss.beta=inf", "beta"),
    Fault("dtype-unknown", "dtype=float33", UNLEARN + " dtype=float33", "float33"),
    Fault("max-length-one", "max_length=1", UNLEARN + " max_length=1", "max_length"),
    Fault("shard-size-nonsense", "shard_size=2XB", UNLEARN + " shard_size=2XB", "2XB"),
    Fault("unknown-option", "--bogus", UNLEARN + " --bogus", "--bogus"),
    Fault(
        "unknown-demo-method",
        "demo preset with methods=[nope]",
        "demo --fast --out {out} --cache-dir {out}-cache methods=[nope]",
        "['nope']; valid",
    ),
    Fault("unknown-experiment", "experiment name nope", "experiment nope --out {out}", "'nope'; valid: table"),
    # --- extrapolate
    Fault(
        "extrapolate-architecture",
        "--mem with 3 layers, --ref with 2",
        swap(EXTRAPOLATE, "--mem {model}", "--mem {m_layers3}"),
        "{m_layers3}",
    ),
    Fault(
        "extrapolate-model-type",
        "--mem config says mistral (same tensors)",
        swap(EXTRAPOLATE, "--mem {model}", "--mem {m_mistral}"),
        "{m_mistral}",
    ),
    Fault(
        "extrapolate-vocab",
        "--mem with a larger vocabulary",
        swap(EXTRAPOLATE, "--mem {model}", "--mem {m_vocab}"),
        "{m_vocab}",
    ),
    Fault(
        "extrapolate-dtype",
        "--mem in bfloat16, --ref in float32",
        swap(EXTRAPOLATE, "--mem {model}", "--mem {m_bf16}"),
        "BF16 in mem",
    ),
    Fault(
        "extrapolate-truncated",
        "--mem shard cut to half",
        swap(EXTRAPOLATE, "--mem {model}", "--mem {m_trunc}"),
        "{m_trunc}/model.safetensors",
    ),
    Fault(
        "extrapolate-corrupted",
        "--mem shard header overwritten",
        swap(EXTRAPOLATE, "--mem {model}", "--mem {m_corrupt}"),
        "{m_corrupt}/model.safetensors",
    ),
    Fault(
        "extrapolate-no-weights",
        "--mem folder without weights",
        swap(EXTRAPOLATE, "--mem {model}", "--mem {m_noweights}"),
        "{m_noweights}",
    ),
    Fault(
        "extrapolate-ref-missing",
        "--ref folder does not exist",
        swap(EXTRAPOLATE, "--ref {model}", "--ref {no_model}"),
        "{no_model}",
    ),
    Fault("extrapolate-alpha-nan", "--alpha nan", swap(EXTRAPOLATE, "--alpha 2", "--alpha nan"), "alpha nan"),
    Fault("extrapolate-alpha-text", "--alpha four", swap(EXTRAPOLATE, "--alpha 2", "--alpha four"), "'four'"),
    Fault("extrapolate-shard-size", "--shard-size 2XB", EXTRAPOLATE + " --shard-size 2XB", "'2XB'"),
    Fault(
        "extrapolate-escaping-symlink",
        "--ref tokenizer_config.json links outside the folder",
        swap(EXTRAPOLATE, "--ref {model}", "--ref {m_symlink}"),
        "{m_symlink}/tokenizer_config.json",
    ),
    # --- eval
    Fault(
        "eval-truncated", "model shard cut to half", swap(EVAL, "{model}", "{m_trunc}"), "{m_trunc}/model.safetensors"
    ),
    Fault("eval-no-config", "model folder without config.json", swap(EVAL, "{model}", "{m_noconfig}"), "{m_noconfig}"),
    Fault(
        "eval-pickle-only",
        "only pytorch_model.bin (pickle), no --allow-pickle",
        swap(EVAL, "{model}", "{m_bin}"),
        "{m_bin}",
    ),
    Fault(
        "eval-split-missing",
        "TOFU folder without forget10_perturbed.jsonl",
        swap(EVAL, "{tofu}", "{tofu_empty}"),
        "{tofu_empty}",
    ),
    Fault(
        "eval-split-bad-jsonl",
        "TOFU forget10_perturbed.jsonl broken on line 2",
        swap(EVAL, "{tofu}", "{tofu_bad}"),
        "{tofu_bad}/forget10_perturbed.jsonl:2",
    ),
    Fault("eval-unknown-benchmark", "--benchmark nope", swap(EVAL, "tofu", "nope"), "'nope'"),
    Fault("eval-unknown-split", "--forget-split forget99", EVAL + " --forget-split forget99", "'forget99'; valid"),
    Fault(
        "eval-bad-retain-result",
        "--retain-result that is not JSON",
        EVAL + " --retain-result {bad_json}",
        "{bad_json}:4",
    ),
    Fault("eval-batch-zero", "--batch-size 0", EVAL + " --batch-size 0", "--batch-size"),
    # --- select-alpha
    Fault(
        "select-holdout-bad",
        "holdout JSONL broken on line 3",
        swap(SELECT, "--holdout {holdout}", "--holdout {bad_jsonl}"),
        "{bad_jsonl}:3",
    ),
    Fault("select-unknown-score", "--score nope (metric name)", SELECT + " --score nope", "'nope'; valid: min_k"),
    Fault("select-alpha-nan", "--alpha nan", SELECT + " --alpha nan", "nan"),
    Fault("select-tolerance-negative", "--tolerance -1", SELECT + " --tolerance -1", "tolerance"),
    Fault(
        "select-truncated",
        "--mem shard cut to half",
        swap(SELECT, "--mem {model}", "--mem {m_trunc}"),
        "{m_trunc}/model.safetensors",
    ),
    Fault(
        "select-vocab", "--mem with a larger vocabulary", swap(SELECT, "--mem {model}", "--mem {m_vocab}"), "{m_vocab}"
    ),
    Fault(
        "select-retain-missing",
        "retain file does not exist",
        swap(SELECT, "{retain}", "{missing_jsonl}"),
        "{missing_jsonl}",
    ),
    # --- outputs that would overwrite an input (issue 16 class 3)
    Fault(
        "eval-out-is-retain-result",
        "--out is the --retain-result file it reads",
        EVAL.replace("--out {out}.json", "--retain-result {result_json} --out {result_json}"),
        "--retain-result",
    ),
    Fault(
        "select-out-holds-forget",
        "--out is the folder that holds the --forget file",
        "select-alpha --ref {model} --mem {model} --forget {data_forget} --holdout {holdout} "
        "--retain {retain} --out {data_dir} --overwrite",
        "--forget",
    ),
    Fault(
        "report-out-overwrites-input",
        "--out folder whose results.json is the input",
        "report {result_rows} --out {report_dir}",
        "results.json",
    ),
    Fault(
        "extrapolate-out-holds-mem",
        "--out is the folder that holds --mem",
        "extrapolate --ref {model} --mem {nested_mem} --alpha 2 --out {nested_dir} --overwrite",
        "--mem",
    ),
    # --- values the weight dtype cannot hold (issue 16 class 5): refused, never written as a NaN model
    Fault(
        "extrapolate-alpha-overflows-bf16",
        "α = 1e39 on a bfloat16 model",
        "extrapolate --ref {m_bf16} --mem {m_bf16} --alpha 1e39 --out {out}",
        "1e+39",
    ),
    Fault(
        "extrapolate-alpha-overflows-fp32",
        "α = 1e39 (beyond float32) among good α",
        "extrapolate --ref {model} --mem {model} --alpha 2 --alpha 1e39 --out {out}",
        "1e+39",
    ),
    Fault(
        "unlearn-alpha-overflows",
        "alpha=1e39 after training",
        UNLEARN + " alpha=1e39",
        "memorized is written: `mox extrapolate` it with a smaller α",
        keeps_out=True,
    ),
    # --- a success that would mean nothing (issue 16 class 10)
    Fault(
        "select-holdout-is-forget",
        "--holdout is the --forget file (the KS test compares a set with itself)",
        swap(SELECT, "--holdout {holdout}", "--holdout {forget}"),
        "holdout",
    ),
    Fault(
        "select-holdout-shares-forget",
        "--holdout holds a forget record",
        swap(SELECT, "--holdout {holdout}", "--holdout {holdout_mixed}"),
        "1 of 3 holdout records",
    ),
    # --- report and models
    Fault("report-bad-result", "result file that is not JSON", "report {bad_json} --out {out}", "{bad_json}:4"),
    Fault("report-not-a-result", "result file of another kind", "report {retain} --out {out}", "{retain}"),
    Fault(
        "models-tiny-bad-data",
        "tokenizer data broken on line 3",
        "models tiny --data {bad_jsonl} --out {out}",
        "{bad_jsonl}:3",
    ),
]


# ----------------------------------------------------------------------------- inputs


def _write_model_variant(base: Path, out: Path, *, dtype=None, **changes) -> None:
    """A random model like `base` with config changes (layers, vocabulary, dtype), plus its tokenizer files."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base)
    for key, value in changes.items():
        setattr(config, key, value)
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(out)
    for f in base.glob("tokenizer*"):
        shutil.copy(f, out / f.name)


def _copy_model(base: Path, out: Path) -> Path:
    shutil.copytree(base, out)
    return out


def build_inputs(root: Path, model: Path, forget: Path, retain: Path) -> dict[str, Path]:
    """Every input the cases name, made under `root/in` from a good model folder and QA files."""
    import torch
    from safetensors.torch import load_file

    d = root / "in"
    d.mkdir(parents=True)
    p = {"model": _copy_model(model, d / "model"), "forget": d / forget.name, "retain": d / retain.name}
    shutil.copy(forget, p["forget"])
    shutil.copy(retain, p["retain"])
    good = p["forget"].read_text().splitlines()
    text = {
        "bad_jsonl": "\n".join(good[:2] + ['{"question": "Who?", "answer": ']) + "\n",
        "bad_json": '[\n  {"question": "a", "answer": "b"},\n  {"question": "c",\n   "answer" "d"}\n]\n',
        "no_answer_jsonl": good[0] + '\n{"question": "Who?"}\n',
        "int_question_json": '[{"question": "a", "answer": "b"}, {"question": 7, "answer": "b"}]',
        "list_answer_jsonl": '{"question": "a", "answer": ["a", "b"]}\n',
        "number_jsonl": "42\n",
        "surrogate_jsonl": '{"question": "a", "answer": "\\ud800"}\n',
        "deep_json": "[" * 100_000 + "]" * 100_000,
        "empty_jsonl": "",
        "empty_json": "[]",
        "csv": "question,answer\na,b\n",
        "bad_yaml": "lr: [1e-5\n",
    }
    names = {"csv": "forget.csv", "bad_yaml": "bad.yaml"}
    for key, content in text.items():
        p[key] = d / names.get(key, key.replace("_jsonl", ".jsonl").replace("_json", ".json"))
        p[key].write_text(content, encoding="utf-8")
    p["latin1_jsonl"] = d / "latin1.jsonl"
    p["latin1_jsonl"].write_bytes((good[0] + '\n{"question": "Caf\xe9?", "answer": "b"}\n').encode("latin-1"))
    p["unreadable_json"] = d / "unreadable.json"
    shutil.copy(retain, p["unreadable_json"])
    os.chmod(p["unreadable_json"], 0)
    p["dir_jsonl"] = d / "folder.jsonl"
    p["dir_jsonl"].mkdir()
    p["missing_jsonl"], p["missing_yaml"], p["no_model"] = d / "missing.jsonl", d / "missing.yaml", d / "no-model"
    p["model_file"] = p["model"] / "model.safetensors"

    base = p["model"]
    p["m_noconfig"] = _copy_model(base, d / "m-noconfig")
    (p["m_noconfig"] / "config.json").unlink()
    p["m_badconfig"] = _copy_model(base, d / "m-badconfig")
    (p["m_badconfig"] / "config.json").write_text('{"model_type": "llama",,}')
    p["m_noweights"] = _copy_model(base, d / "m-noweights")
    (p["m_noweights"] / "model.safetensors").unlink()
    weights = base / "model.safetensors"
    blob = weights.read_bytes()
    p["m_trunc"] = _copy_model(base, d / "m-trunc")
    (p["m_trunc"] / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    p["m_corrupt"] = _copy_model(base, d / "m-corrupt")
    (p["m_corrupt"] / "model.safetensors").write_bytes(blob[:8] + b"\xff" * 32 + blob[40:])
    p["m_lost_shard"] = _copy_model(base, d / "m-lost-shard")
    (p["m_lost_shard"] / "model.safetensors").rename(p["m_lost_shard"] / "model-00001-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in load_file(weights)}
    index = {"metadata": {}, "weight_map": {**weight_map, "lm_head.weight": "model-00002-of-00002.safetensors"}}
    (p["m_lost_shard"] / "model.safetensors.index.json").write_text(json.dumps(index))
    p["m_bin"] = _copy_model(base, d / "m-bin")
    (p["m_bin"] / "model.safetensors").unlink()
    torch.save(load_file(weights), p["m_bin"] / "pytorch_model.bin")
    p["m_symlink"] = _copy_model(base, d / "m-symlink")
    (root / "secret.txt").write_text("not for sharing\n")
    (p["m_symlink"] / "tokenizer_config.json").unlink()
    (p["m_symlink"] / "tokenizer_config.json").symlink_to(root / "secret.txt")
    config = json.loads((base / "config.json").read_text())
    p["m_layers3"] = d / "m-layers3"
    _write_model_variant(base, p["m_layers3"], num_hidden_layers=config["num_hidden_layers"] + 1)
    p["m_vocab"] = d / "m-vocab"
    _write_model_variant(base, p["m_vocab"], vocab_size=config["vocab_size"] + 8)
    p["m_bf16"] = d / "m-bf16"
    _write_model_variant(base, p["m_bf16"], dtype=torch.bfloat16)
    p["m_mistral"] = _copy_model(base, d / "m-mistral")
    (p["m_mistral"] / "config.json").write_text(
        json.dumps({**config, "model_type": "mistral", "architectures": ["MistralForCausalLM"]})
    )

    # every file `mox eval` checks for before loading the model (evaluate/run.py), one good record each: the
    # eval cases fail on the model, the retain result or the one broken file, not on a missing split
    splits = ("forget10_perturbed", "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed", "holdout10")
    p["tofu"] = d / "tofu"
    p["tofu"].mkdir()
    p["tofu_empty"] = d / "tofu-empty"
    p["tofu_empty"].mkdir()
    p["tofu_bad"] = d / "tofu-bad"
    p["tofu_bad"].mkdir()
    for name in splits:
        (p["tofu"] / f"{name}.jsonl").write_text(good[0] + "\n")
        (p["tofu_bad"] / f"{name}.jsonl").write_text(good[0] + "\n")
    (p["tofu_bad"] / "forget10_perturbed.jsonl").write_text(good[0] + "\n{not json\n")

    # a holdout set like the forget set (never trained on), and one that repeats a forget record
    holdout = [{"question": f"Where was Nessa Vorn {i} born?", "answer": f"In Brell {i}."} for i in range(2)]
    p["holdout"] = d / "holdout.jsonl"
    p["holdout"].write_text("".join(json.dumps(r) + "\n" for r in holdout))
    p["holdout_mixed"] = d / "holdout-mixed.jsonl"
    p["holdout_mixed"].write_text("".join(json.dumps(r) + "\n" for r in holdout) + good[0] + "\n")

    # outputs over inputs: a result file, a data folder, a report folder, a model inside another folder
    p["result_json"] = d / "retain-result.json"
    p["result_json"].write_text(json.dumps({"benchmark": "tofu", "summary": {}, "metrics": {}}))
    p["data_dir"] = d / "data"
    p["data_dir"].mkdir()
    p["data_forget"] = p["data_dir"] / forget.name
    shutil.copy(forget, p["data_forget"])
    p["report_dir"] = d / "report"
    p["report_dir"].mkdir()
    p["result_rows"] = p["report_dir"] / "results.json"
    p["result_rows"].write_text(json.dumps({"rows": [{"name": "a", "method": "a", "alpha": None}]}))
    p["nested_dir"] = d / "nested"
    p["nested_mem"] = _copy_model(base, p["nested_dir"] / "mem")
    return p


# ----------------------------------------------------------------------------- running


@dataclass
class Outcome:
    """What one case did: exit status, stderr, whether it left its output behind or changed an input."""

    exit_code: int
    stderr: str
    seconds: float
    out_left: bool
    inputs_changed: list[str]

    def lines(self) -> list[str]:
        """The stderr lines that mox printed (progress bars of a run that continues are not ours)."""
        return [line for line in self.stderr.splitlines() if line.startswith("mox: ")]


def fill(template: str, paths: dict[str, Path], out: Path) -> str:
    return template.format(out=out, **{k: str(v) for k, v in paths.items()})


def command_argv(fault: Fault, paths: dict[str, Path], out: Path) -> list[str]:
    return fill(fault.command, paths, out).split()


def case_out(root: Path, fault: Fault) -> Path:
    return root / "out" / fault.id


def snapshot(folder: Path) -> dict[str, str]:
    """Path -> digest of every file and link under `folder`, to prove that no input changed."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            st = path.stat()
            try:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            except PermissionError:
                out[rel] = f"unreadable:{st.st_size}:{st.st_mtime_ns}"
        else:
            out[rel] = "dir"
    return out


def left_behind(out: Path) -> list[str]:
    """What a case left beside its output path: the output itself, or a temp folder or file of it."""
    if not out.parent.is_dir():
        return []
    own = {out.name, f"{out.name}.json", f"{out.name}-cache"}
    return sorted(p.name for p in out.parent.iterdir() if p.name in own or p.name.startswith(f".{out.name}."))


def run_case(fault: Fault, root: Path, paths: dict[str, Path]) -> Outcome:
    """Run one case through the real CLI in-process, capturing what it prints."""
    from mox_unlearn.cli import main

    out = case_out(root, fault)
    out.parent.mkdir(parents=True, exist_ok=True)
    before = snapshot(root / "in")
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(command_argv(fault, paths, out))
        except SystemExit as e:  # argparse usage errors
            code = e.code if isinstance(e.code, int) else 2
    seconds = time.perf_counter() - start
    after = snapshot(root / "in")
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return Outcome(code, err.getvalue(), seconds, bool(left_behind(out)), changed)


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0
