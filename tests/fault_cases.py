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
import signal
import time
from dataclasses import dataclass, replace
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
    interrupted: bool = False  # a stop (SIGTERM): exit 130 and one "mox: interrupted..." line instead
    fault: str = ""  # a fault of the environment while the command runs (see `injected`), not of its input
    klass: int = 0  # the class of issue 16's list it belongs to (0: the first round's bad inputs)


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


# ----------------------------------------------------------------------------- round 2 (issue 16's ten classes)

EVAL_OK = "eval --benchmark tofu --model {model} --data {tofu_full} --limit 1 --out {out}.json"
RESUME = "unlearn --resume --out {run_%s}"


def _classed(klass: int, faults: list[Fault]) -> list[Fault]:
    return [replace(f, klass=klass) for f in faults]


def _stopped(id: str, what: str, command: str, where: str, names: str = "interrupted", **kw) -> Fault:
    """SIGTERM when `where` is first called: exit 130, one line, nothing half-written."""
    return Fault(id, f"SIGTERM {what}", command, names, interrupted=True, fault=f"sigterm:{where}", **kw)


ROUND2: list[Fault] = [
    # 1. faults while writing: a file-size limit (EFBIG) stands for a full disk or a quota (ENOSPC, EDQUOT)
    *_classed(
        1,
        [
            Fault(
                "extrapolate-file-too-large",
                "file-size limit 20 kB while writing θ_for",
                EXTRAPOLATE,
                "writing {out} failed: File too large",
                fault="fsize:20000",
            ),
            Fault(
                "extrapolate-two-alphas-too-large",
                "file-size limit while writing two α",
                EXTRAPOLATE + " --alpha 4",
                "writing {out} failed",
                fault="fsize:20000",
            ),
            Fault(
                "unlearn-start-files-too-large",
                "file-size limit 16 bytes: config.yaml cannot be written",
                UNLEARN,
                "config.yaml failed: File too large",
                fault="fsize:16",
            ),
            Fault(
                "unlearn-outputs-too-large",
                "file-size limit 100 kB while writing the trained model",
                UNLEARN,
                "writing the outputs failed: File too large",
                fault="fsize:100000",
                keeps_out=True,
            ),
            Fault(
                "unlearn-checkpoint-too-large",
                "file-size limit 100 kB while checkpointing",
                swap(UNLEARN, "--max-steps 1", "--max-steps 2") + " checkpoint_every=1",
                "writing checkpoint step-1 failed (File too large)",
                fault="fsize:100000",
                keeps_out=True,
            ),
            Fault(
                "unlearn-checkpoint-torch-cut",
                "file-size limit 200 kB: torch.save's zip writer stops mid-file",
                swap(UNLEARN, "--max-steps 1", "--max-steps 2") + " checkpoint_every=1",
                "writing checkpoint step-1 failed",
                fault="fsize:200000",
                keeps_out=True,
            ),
            Fault(
                "eval-result-too-large",
                "file-size limit 64 bytes while writing the result",
                EVAL_OK,
                "writing {out}.json failed: File too large",
                fault="fsize:64",
            ),
            Fault(
                "select-report-too-large",
                "file-size limit 64 bytes while writing the selection",
                SELECT,
                "failed: File too large",
                fault="fsize:64",
            ),
            Fault(
                "report-too-large",
                "file-size limit 64 bytes while writing the tables",
                "report {eval_result} --out {out}",
                "writing {out} failed: File too large",
                fault="fsize:64",
            ),
            Fault(
                "models-tiny-too-large",
                "file-size limit 4 kB while writing a tiny model",
                "models tiny --data {forget} --out {out}",
                "writing {out} failed: File too large",
                fault="fsize:4096",
            ),
        ],
    ),
    # 2. signals outside the training loop: the temp output goes, one line says so, exit 130
    *_classed(
        2,
        [
            _stopped(
                "extrapolate-sigterm-reading",
                "while checking the models",
                EXTRAPOLATE,
                "mox_unlearn.extrapolation.check_same_tensors",
                "extrapolate wrote no output",
            ),
            _stopped(
                "extrapolate-sigterm-before-rename",
                "with θ_for written, before the rename",
                EXTRAPOLATE,
                "mox_unlearn.io.atomic.fsync_tree",
                "extrapolate wrote no output",
            ),
            _stopped(
                "select-sigterm-scoring",
                "while scoring θ_ref",
                SELECT,
                "mox_unlearn.alpha_selection.curve.score_folder",
                "select-alpha wrote no output",
            ),
            _stopped(
                "eval-sigterm-loading",
                "while loading the model",
                EVAL_OK,
                "mox_unlearn.evaluate.run.load_model",
                "eval wrote no output",
            ),
            _stopped(
                "eval-sigterm-writing",
                "just before the result is written",
                EVAL_OK,
                "mox_unlearn.evaluate.run.write_text_atomic",
                "eval wrote no output",
            ),
            _stopped(
                "report-sigterm-plotting",
                "while plotting, tables already staged",
                "report {eval_result} --out {out}",
                "mox_unlearn.report.plot_fq_mu",
                "report wrote no output",
            ),
            _stopped(
                "models-tiny-sigterm",
                "while building the tiny model",
                "models tiny --data {forget} --out {out}",
                "mox_unlearn.tiny.build_tiny_llama",
                "models wrote no output",
            ),
            _stopped(
                "unlearn-sigterm-loading",
                "while loading the model, before any step",
                UNLEARN,
                "mox_unlearn.train.run.load_model",
            ),
            _stopped(
                "unlearn-sigterm-training",
                "after a step with a checkpoint",
                swap(UNLEARN, "--max-steps 1", "--max-steps 2") + " checkpoint_every=1",
                "mox_unlearn.train.run.TrainingRun.after_step",
                "mox unlearn --resume --out {out}",
                keeps_out=True,
            ),
        ],
    ),
    # 3. outputs that would overwrite an input
    *_classed(
        3,
        [
            Fault(
                "unlearn-out-is-model",
                "--out is the --model folder",
                swap(UNLEARN, "--out {out}", "--out {model}"),
                "overlaps the input model folder",
            ),
            Fault(
                "unlearn-out-is-forget",
                "--out is the --forget file",
                swap(UNLEARN, "--out {out}", "--out {forget}"),
                "{forget}",
            ),
            Fault(
                "extrapolate-out-is-ref",
                "--out is the --ref folder (--overwrite)",
                swap(EXTRAPOLATE, "--out {out}", "--out {model} --overwrite"),
                "--ref",
            ),
            Fault(
                "extrapolate-out-inside-ref",
                "--out inside the --ref folder",
                swap(EXTRAPOLATE, "--out {out}", "--out {model}/theta"),
                "inside the --ref input",
            ),
            Fault(
                "eval-out-inside-model",
                "--out inside the --model folder",
                EVAL.replace("--out {out}.json", "--out {model}/result.json"),
                "--model",
            ),
            Fault(
                "select-out-is-ref",
                "--out is the --ref folder (--overwrite)",
                swap(SELECT, "--out {out}", "--out {model} --overwrite"),
                "--ref",
            ),
            Fault(
                "models-tiny-out-is-data",
                "--out is the --data file",
                "models tiny --data {forget} --out {forget}",
                "{forget}",
            ),
            Fault(
                "report-out-is-input-file",
                "--out is the result file it reads",
                "report {eval_result} --out {eval_result}",
                "{eval_result}",
            ),
        ],
    ),
    # 4. concurrency: a folder another running mox holds is neither replaced, resumed nor cleaned up
    *_classed(
        4,
        [
            Fault(
                "unlearn-out-in-use-overwrite",
                "--out --overwrite on a run another process is running",
                swap(UNLEARN, "--out {out}", "--out {run_busy} --overwrite"),
                "in use by another mox process",
                fault="held:run_busy",
            ),
            Fault(
                "unlearn-out-in-use-resume",
                "--resume of a run another process is running",
                RESUME % "busy",
                "in use by another mox process",
                fault="held:run_busy",
            ),
            Fault(
                "unlearn-out-in-use",
                "--out on a run another process is running (starting files only)",
                swap(UNLEARN, "--out {out}", "--out {run_busy}"),
                "in use by another mox process",
                fault="held:run_busy",
            ),
            Fault(
                "resume-in-use",
                "--resume of an interrupted run another process resumed first",
                RESUME % "base",
                "in use by another mox process",
                fault="held:run_base",
            ),
            Fault(
                "extrapolate-out-written-meanwhile",
                "another process writes --out while θ_for is written",
                EXTRAPOLATE,
                "written by another process meanwhile",
                fault="another-writer",
                keeps_out=True,
            ),
            Fault(
                "select-out-written-meanwhile",
                "another process writes --out while the selection is written",
                SELECT,
                "written by another process meanwhile",
                fault="another-writer",
                keeps_out=True,
            ),
        ],
    ),
    *_classed(
        4,
        [
            Fault(
                "experiment-workspace-in-use",
                "mox experiment into a workspace another process is using",
                "experiment table --out {ws_busy}",
                "workspace {ws_busy} is in use by another mox process",
                fault="held:ws_busy",
            ),
            Fault(
                "demo-folder-in-use",
                "mox demo into a folder another demo is using",
                "demo --fast --out {ws_busy} --cache-dir {out}-cache",
                "demo folder {ws_busy} is in use by another mox process",
                fault="held:ws_busy",
            ),
        ],
    ),
    # 5. metadata is checked, not trusted
    *_classed(
        5,
        [
            Fault(
                "unlearn-index-omits-tensor",
                "shard holds a tensor the index does not list",
                swap(UNLEARN, "{model}", "{m_idx_omits}"),
                "the index of {m_idx_omits} does not list it",
            ),
            Fault(
                "extrapolate-index-omits-tensor",
                "--mem shard holds a tensor its index does not list",
                swap(EXTRAPOLATE, "--mem {model}", "--mem {m_idx_omits}"),
                "does not list it",
            ),
            Fault(
                "extrapolate-index-wrong-shard",
                "--mem index places a tensor in the wrong shard",
                swap(EXTRAPOLATE, "--mem {model}", "--mem {m_idx_wrong}"),
                "places it in model-00001-of-00002",
            ),
            Fault(
                "extrapolate-shard-extra-tensor",
                "--ref shard holds an extra tensor the index omits",
                swap(EXTRAPOLATE, "--ref {model}", "--ref {m_idx_extra}"),
                "model.extra.weight",
            ),
            Fault(
                "eval-index-wrong-shard",
                "model index places a tensor in the wrong shard",
                swap(EVAL, "{model}", "{m_idx_wrong}"),
                "places it in",
            ),
            Fault(
                "select-index-omits-tensor",
                "--mem shard holds a tensor its index does not list",
                swap(SELECT, "--mem {model}", "--mem {m_idx_omits}"),
                "does not list it",
            ),
            Fault(
                "extrapolate-alpha-overflows-fp16",
                "α = 1e7 on a float16 model",
                "extrapolate --ref {m_fp16} --mem {m_fp16_other} --alpha 1e7 --out {out}",
                "1e+07",
            ),
            Fault(
                "extrapolate-index-torn",
                "--mem shard index cut mid-JSON",
                swap(EXTRAPOLATE, "--mem {model}", "--mem {m_index_torn}"),
                "bad shard index",
            ),
        ],
    ),
    # 6. checks before the expensive work: model, config, tokenizer and data against each other
    *_classed(
        6,
        [
            Fault(
                "unlearn-tokenizer-beyond-vocab",
                "tokenizer of 300 tokens, model vocab_size 200",
                swap(UNLEARN, "{model}", "{m_vocab_small}"),
                "vocab_size is 200",
            ),
            Fault(
                "eval-tokenizer-beyond-vocab",
                "tokenizer of 300 tokens, model vocab_size 200",
                swap(EVAL, "{model}", "{m_vocab_small}"),
                "vocab_size is 200",
            ),
            Fault(
                "select-tokenizer-beyond-vocab",
                "tokenizer of 300 tokens, model vocab_size 200",
                swap(swap(SELECT, "--ref {model}", "--ref {m_vocab_small}"), "--mem {model}", "--mem {m_vocab_small}"),
                "vocab_size is 200",
            ),
            Fault(
                "unlearn-config-more-layers",
                "config.json says 3 layers, weights hold 2",
                swap(UNLEARN, "{model}", "{m_cfg_more}"),
                "the weights lack (first: model.layers.2.",
            ),
            Fault(
                "unlearn-config-fewer-layers",
                "config.json says 1 layer, weights hold 2",
                swap(UNLEARN, "{model}", "{m_cfg_fewer}"),
                "its config.json does not use (first: model.layers.1.",
            ),
            Fault(
                "unlearn-config-hidden-size",
                "config.json hidden_size 64, weights 32",
                swap(UNLEARN, "{model}", "{m_cfg_hidden}"),
                "do not fit its config.json",
            ),
            Fault(
                "eval-config-hidden-size",
                "config.json hidden_size 64, weights 32",
                swap(EVAL, "{model}", "{m_cfg_hidden}"),
                "do not fit its config.json",
            ),
            Fault(
                "unlearn-beyond-positions",
                "examples longer than max_position_embeddings 8",
                swap(UNLEARN, "{model}", "{m_positions8}"),
                "beyond the 8 positions",
            ),
            Fault(
                "eval-retain-result-other-split",
                "--retain-result of forget01 for a forget10 evaluation",
                EVAL + " --retain-result {result_forget01}",
                "forget01",
            ),
            Fault(
                "eval-split-missing-field",
                "TOFU world_facts_perturbed.jsonl without perturbed_answer",
                swap(EVAL_OK, "{tofu_full}", "{tofu_no_field}"),
                "world_facts_perturbed",
            ),
        ],
    ),
    # 7. typed settings: every key=value is checked for type and range before anything loads
    *_classed(
        7,
        [
            Fault("seed-text", "seed=abc", UNLEARN + " seed=abc", "seed: expected an integer"),
            Fault("seed-negative", "seed=-1", UNLEARN + " seed=-1", "seed: must be >= 0"),
            Fault("epochs-fraction", "epochs=1.5", UNLEARN + " epochs=1.5", "epochs: expected an integer"),
            Fault("max-length-float", "max_length=1e3", UNLEARN + " max_length=1e3", "max_length: expected an integer"),
            Fault("lora-not-bool", "lora=maybe", UNLEARN + " lora=maybe", "lora: expected true/false"),
            Fault("dtype-list", "dtype=[1]", UNLEARN + " dtype=[1]", "dtype: must be one of"),
            Fault(
                "chat-template-mode",
                "prompt.chat_template=sometimes",
                UNLEARN + " prompt.chat_template=sometimes",
                "chat_template must be one of",
            ),
            Fault(
                "question-template-field",
                "prompt.question_template=Q:{nope}",
                UNLEARN + " prompt.question_template=Q:{{nope}}",
                "must use only the {{question}} field",
            ),
            Fault("loss-value-text", "loss.beta=high", UNLEARN + " loss.beta=high", "loss.beta: expected a number"),
            Fault("method-list", "method=[x]", UNLEARN + " method=[x]", "unknown method '[x]'"),
        ],
    ),
    *_classed(
        7,
        [
            Fault(
                "extrapolate-keep-fraction-zero",
                "--keep-fraction 0 (issue 17's variants)",
                EXTRAPOLATE + " --keep-fraction 0",
                "keep_fraction must be in (0, 1]",
            ),
            Fault(
                "extrapolate-depth-schedule",
                "--alpha-by-depth cosine:1,2",
                EXTRAPOLATE + " --alpha-by-depth cosine:1,2",
                "alpha_by_depth must be linear:A,B",
            ),
            Fault(
                "unlearn-variant-bad-regex",
                "extrapolation.only=( (not a regular expression)",
                UNLEARN + " extrapolation.only=(",
                "config extrapolation.only: only '(' is not a regular expression",
            ),
            Fault(
                "unlearn-variant-with-momentum",
                "extrapolation.keep_fraction=0.5 with momentum=true",
                UNLEARN + " extrapolation.keep_fraction=0.5 momentum=true",
                "not supported with momentum=true",
            ),
            Fault(
                "select-variant-unknown-setting",
                "--variant '{keep: 0.2}' (no such setting)",
                SELECT + " --variant {{keep:0.2}}",
                "unknown setting",
            ),
        ],
    ),
    # 8. third-party exceptions turned into one line naming the input
    *_classed(
        8,
        [
            Fault(
                "unlearn-chat-template-raises",
                "chat template calls raise_exception",
                swap(UNLEARN, "{model}", "{m_chat_raise}"),
                "the chat template of {m_chat_raise} fails: TemplateError",
            ),
            Fault(
                "unlearn-chat-template-syntax",
                "chat template that does not parse",
                swap(UNLEARN, "{model}", "{m_chat_syntax}"),
                "the chat template of {m_chat_syntax} fails: TemplateSyntaxError",
            ),
            Fault(
                "eval-chat-template-raises",
                "chat template calls raise_exception (before the model loads)",
                swap(EVAL, "{model}", "{m_chat_raise}"),
                "the chat template of {m_chat_raise} fails",
            ),
            Fault(
                "select-chat-template-raises",
                "chat template calls raise_exception",
                swap(swap(SELECT, "--ref {model}", "--ref {m_chat_raise}"), "--mem {model}", "--mem {m_chat_raise}"),
                "the chat template of {m_chat_raise} fails",
            ),
            Fault(
                "unlearn-no-eos",
                "tokenizer with neither EOS nor pad token",
                swap(UNLEARN, "{model}", "{m_no_eos}"),
                "the tokenizer of {m_no_eos} has neither a pad token nor an EOS token",
            ),
            Fault(
                "unlearn-tokenizer-config-latin1",
                "tokenizer_config.json with a Latin-1 byte",
                swap(UNLEARN, "{model}", "{m_tokcfg_latin1}"),
                "{m_tokcfg_latin1}",
            ),
            Fault(
                "unlearn-tokenizer-json-broken",
                "tokenizer.json cut mid-JSON",
                swap(UNLEARN, "{model}", "{m_tokjson_bad}"),
                "{m_tokjson_bad}",
            ),
            Fault(
                "unlearn-model-config-latin1",
                "model config.json with a Latin-1 byte",
                swap(UNLEARN, "{model}", "{m_config_latin1}"),
                "{m_config_latin1}/config.json",
            ),
            Fault(
                "config-yaml-latin1",
                "--config YAML with a Latin-1 byte on line 3",
                UNLEARN + " --config {cfg_latin1}",
                "{cfg_latin1}:3",
            ),
            Fault(
                "report-row-name-number",
                'result row with "name": 3',
                "report {rows_name_number} --out {out}",
                '{rows_name_number}: rows[0]: "name" must be text',
            ),
            Fault(
                "report-row-metric-text",
                'result row with "forget_quality": "high"',
                "report {rows_metric_text} --out {out}",
                '"forget_quality" must be a number',
            ),
            Fault(
                "report-row-not-object",
                "result rows that are numbers",
                "report {rows_not_object} --out {out}",
                "a row must be an object",
            ),
            Fault(
                "resume-config-broken",
                "run folder whose config.yaml is not YAML",
                RESUME % "config_bad",
                "config.yaml is damaged",
            ),
            Fault(
                "resume-data-json-broken",
                "run folder whose data.json is not JSON",
                RESUME % "data_bad",
                "data.json is damaged",
            ),
            Fault(
                "resume-checkpoint-garbage",
                "checkpoint optimizer.bin overwritten with bytes of the same length",
                RESUME % "ckpt_garbage",
                "checkpoints/step-1 is damaged",
            ),
            Fault(
                "resume-checkpoint-file-missing",
                "checkpoint without its model.safetensors",
                RESUME % "ckpt_missing",
                "model.safetensors is missing",
            ),
        ],
    ),
    # 9. durability: files a crash cut short are found before they are used
    *_classed(
        9,
        [
            Fault(
                "resume-checkpoint-torn",
                "checkpoint model.safetensors cut to 1000 bytes (a crash before it reached the disk)",
                RESUME % "ckpt_torn",
                "model.safetensors is 1000 bytes",
            ),
            Fault(
                "resume-checkpoint-emptied",
                "checkpoint optimizer.bin of 0 bytes",
                RESUME % "ckpt_empty",
                "optimizer.bin is 0 bytes",
            ),
            Fault(
                "resume-manifest-broken",
                "checkpoint manifest.json cut mid-JSON",
                RESUME % "manifest_bad",
                "manifest.json",
            ),
            Fault(
                "extrapolate-mem-zero-bytes",
                "--mem model.safetensors of 0 bytes",
                swap(EXTRAPOLATE, "--mem {model}", "--mem {m_zero}"),
                "{m_zero}/model.safetensors",
            ),
            Fault(
                "eval-model-zero-bytes",
                "model.safetensors of 0 bytes",
                swap(EVAL, "{model}", "{m_zero}"),
                "{m_zero}/model.safetensors",
            ),
        ],
    ),
    # 10. a success that would mean nothing
    *_classed(
        10,
        [
            Fault(
                "forget-one-tofu-record",
                "forget JSON that is one TOFU record (its perturbed_answer is a list)",
                swap(UNLEARN, "{forget}", "{tofu_object}"),
                "{tofu_object}: one record",
            ),
            Fault(
                "retain-one-tofu-record",
                "retain JSON that is one TOFU record",
                swap(UNLEARN, "{retain}", "{tofu_object}"),
                "{tofu_object}: one record",
            ),
            Fault(
                "select-holdout-one-record",
                "holdout JSON that is one TOFU record",
                swap(SELECT, "--holdout {holdout}", "--holdout {tofu_object}"),
                "{tofu_object}: one record",
            ),
            Fault(
                "resume-data-changed",
                "forget data edited since the run started",
                RESUME % "data_changed",
                "the forget data changed since the run started",
            ),
            Fault(
                "eval-retain-result-other-records",
                "--retain-result scored on 3 forget items, the split has 1",
                EVAL_OK + " --retain-result {result_3items}",
                "{result_3items}",
            ),
        ],
    ),
]
FAULTS += ROUND2

# the first cases of three classes, written before the list above grew
_EARLIER = {
    **dict.fromkeys(
        (
            "eval-out-is-retain-result",
            "select-out-holds-forget",
            "report-out-overwrites-input",
            "extrapolate-out-holds-mem",
        ),
        3,
    ),
    **dict.fromkeys(
        ("extrapolate-alpha-overflows-bf16", "extrapolate-alpha-overflows-fp32", "unlearn-alpha-overflows"), 5
    ),
    **dict.fromkeys(("select-holdout-is-forget", "select-holdout-shares-forget"), 10),
}
FAULTS = [replace(f, klass=_EARLIER.get(f.id, f.klass)) for f in FAULTS]


# ----------------------------------------------------------------------------- inputs


def _write_model_variant(base: Path, out: Path, *, dtype=None, seed: int = 1, **changes) -> None:
    """A random model like `base` with config changes (layers, vocabulary, dtype), plus its tokenizer files."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base)
    for key, value in changes.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
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
    _build_round2(d, p, good)
    return p


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _build_round2(d: Path, p: dict[str, Path], good: list[str]) -> None:
    """The inputs of the round-2 cases: models whose parts disagree, damaged run folders, TOFU data, results."""
    import torch
    from safetensors.torch import load_file, save_file

    base = p["model"]
    config = json.loads((base / "config.json").read_text())
    tok_config = json.loads((base / "tokenizer_config.json").read_text())

    # models whose config, weights, index or tokenizer disagree
    for key, changes in {
        "m_cfg_more": {"num_hidden_layers": 3},
        "m_cfg_fewer": {"num_hidden_layers": 1},
        "m_cfg_hidden": {"hidden_size": 64},
        "m_positions8": {"max_position_embeddings": 8},
    }.items():
        p[key] = _copy_model(base, d / key.replace("_", "-"))
        _edit_json(p[key] / "config.json", **changes)
    p["m_vocab_small"] = d / "m-vocab-small"
    _write_model_variant(base, p["m_vocab_small"], vocab_size=200)
    p["m_fp16"], p["m_fp16_other"] = d / "m-fp16", d / "m-fp16-other"
    _write_model_variant(base, p["m_fp16"], dtype=torch.float16)
    _write_model_variant(base, p["m_fp16_other"], dtype=torch.float16, seed=2)
    weights = load_file(base / "model.safetensors")
    names = sorted(weights)
    first, second = names[: len(names) // 2], names[len(names) // 2 :]
    shards = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    for key in ("m_idx_omits", "m_idx_wrong", "m_idx_extra", "m_index_torn"):
        p[key] = _copy_model(base, d / key.replace("_", "-"))
        (p[key] / "model.safetensors").unlink()
        extra = {"model.extra.weight": torch.zeros(2)} if key == "m_idx_extra" else {}
        save_file({k: weights[k] for k in first}, p[key] / shards[0], metadata={"format": "pt"})
        save_file({**{k: weights[k] for k in second}, **extra}, p[key] / shards[1], metadata={"format": "pt"})
        weight_map = {k: shards[0] for k in first} | {k: shards[1] for k in second}
        if key == "m_idx_omits":
            del weight_map[second[0]]
        if key == "m_idx_wrong":
            weight_map[second[0]] = shards[0]
        index = json.dumps({"metadata": {}, "weight_map": weight_map})
        (p[key] / "model.safetensors.index.json").write_text(
            index[: len(index) // 2] if key == "m_index_torn" else index
        )
    p["m_zero"] = _copy_model(base, d / "m-zero")
    (p["m_zero"] / "model.safetensors").write_bytes(b"")

    # tokenizers and configs that third-party code fails on
    for key, change in {
        "m_chat_raise": {"chat_template": "{{ raise_exception('no system role') }}"},
        "m_chat_syntax": {"chat_template": "{% for %}"},
        "m_no_eos": {"eos_token": None, "pad_token": None},
    }.items():
        p[key] = _copy_model(base, d / key.replace("_", "-"))
        cfg = {k: v for k, v in {**tok_config, **change}.items() if v is not None}
        (p[key] / "tokenizer_config.json").write_text(json.dumps(cfg))
    p["m_tokcfg_latin1"] = _copy_model(base, d / "m-tokcfg-latin1")
    blob = (base / "tokenizer_config.json").read_bytes().replace(b'"<unk>"', b'"<unk\xe9>"')
    (p["m_tokcfg_latin1"] / "tokenizer_config.json").write_bytes(blob)
    p["m_tokjson_bad"] = _copy_model(base, d / "m-tokjson-bad")
    (p["m_tokjson_bad"] / "tokenizer.json").write_text('{"version": "1.0", ')
    p["m_config_latin1"] = _copy_model(base, d / "m-config-latin1")
    (p["m_config_latin1"] / "config.json").write_bytes(
        json.dumps({**config, "name": "X"}).encode().replace(b'"X"', b'"caf\xe9"')
    )
    p["cfg_latin1"] = d / "latin1.yaml"
    p["cfg_latin1"].write_bytes(b"lr: 1.0e-5\nprompt:\n  system_prompt: caf\xe9\n")

    # TOFU data a full evaluation runs on (two items a split), and one with a field missing in a later split
    item = json.loads(good[0])
    tofu = {**item, "paraphrased_answer": item["answer"], "perturbed_answer": ["In Osk.", "In Brell.", "In 1970."]}
    splits = ("forget10_perturbed", "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed", "holdout10")
    for key, broken in (("tofu_full", None), ("tofu_no_field", "world_facts_perturbed")):
        p[key] = d / key.replace("_", "-")
        p[key].mkdir()
        for name in splits:
            rows = [tofu, {**tofu, "question": "Who is Alia Vorn?"}]
            if name == broken:
                rows = [{k: v for k, v in r.items() if k != "perturbed_answer"} for r in rows]
            (p[key] / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    p["tofu_object"] = d / "tofu-object.json"
    p["tofu_object"].write_text(json.dumps(tofu))

    # results: a TOFU result for mox report, retain results of another split and of other items, bad rows
    p["eval_result"] = d / "eval-result.json"
    p["eval_result"].write_text(json.dumps({"benchmark": "tofu", "summary": {"forget_quality": 0.5}, "metrics": {}}))
    for key, split, n in (("result_forget01", "forget01", 1), ("result_3items", "forget10", 3)):
        p[key] = d / f"{key.replace('_', '-')}.json"
        per_item = {"forget_truth_ratio": {"per_item": [0.5] * n, "value": 0.5}}
        p[key].write_text(json.dumps({"benchmark": "tofu", "forget_split": split, "limit": None, "metrics": per_item}))
    for key, rows in {
        "rows_name_number": [{"name": 3}],
        "rows_metric_text": [{"name": "a", "forget_quality": "high"}],
        "rows_not_object": [1, 2],
    }.items():
        p[key] = d / f"{key.replace('_', '-')}.json"
        p[key].write_text(json.dumps({"rows": rows}))

    # run folders: one interrupted after step 1 (a checkpoint, no outputs), damaged copies, a busy one
    from mox_unlearn.cli import main

    run = d / "run-base"
    argv = [
        "unlearn",
        "--model",
        str(base),
        "--forget",
        str(p["forget"]),
        "--retain",
        str(p["retain"]),
        "--out",
        str(run),
    ]
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        code = main(
            [
                *argv,
                *FAST.replace("--max-steps 1", "--max-steps 2").split(),
                "checkpoint_every=1",
                "keep_checkpoints=true",
            ]
        )
    assert code == 0, "the base run folder of the resume cases could not be made"
    for name in ("run.json", "memorized", "model"):
        shutil.rmtree(run / name) if (run / name).is_dir() else (run / name).unlink()
    p["run_base"] = run
    ckpt = Path("checkpoints") / "step-1"
    damage = {
        "config_bad": lambda r: (r / "config.yaml").write_text("lr: [\n"),
        "data_bad": lambda r: (r / "data.json").write_text("{\n"),
        "ckpt_garbage": lambda r: (r / ckpt / "optimizer.bin").write_bytes(
            b"x" * (r / ckpt / "optimizer.bin").stat().st_size
        ),
        "ckpt_missing": lambda r: (r / ckpt / "model.safetensors").unlink(),
        "ckpt_torn": lambda r: os.truncate(r / ckpt / "model.safetensors", 1000),
        "ckpt_empty": lambda r: os.truncate(r / ckpt / "optimizer.bin", 0),
        "manifest_bad": lambda r: (r / ckpt / "manifest.json").write_text('{"sizes": {'),
        "data_changed": lambda r: _edit_json(
            r / "data.json",
            forget={**json.loads((r / "data.json").read_text())["forget"], "records": 99, "sha256": "0" * 64},
        ),
    }
    for key, edit in damage.items():
        p[f"run_{key}"] = d / f"run-{key.replace('_', '-')}"
        shutil.copytree(run, p[f"run_{key}"])
        edit(p[f"run_{key}"])
    p["ws_busy"] = d / "workspace-busy"  # an experiments workspace with one cached result
    p["ws_busy"].mkdir()
    (p["ws_busy"] / "results.json").write_text('{"rows": []}\n')
    p["run_busy"] = d / "run-busy"  # a run that has only started: its start files, an empty log
    p["run_busy"].mkdir()
    for name in ("config.yaml", "command.txt", "data.json"):
        shutil.copy(run / name, p["run_busy"] / name)
    (p["run_busy"] / "log.jsonl").write_text("")


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
        with injected(fault.fault, paths, out):
            try:
                code = main(command_argv(fault, paths, out))
            except SystemExit as e:  # argparse usage errors
                code = e.code if isinstance(e.code, int) else 2
    seconds = time.perf_counter() - start
    after = snapshot(root / "in")
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return Outcome(code, err.getvalue(), seconds, bool(left_behind(out)), changed)


@contextlib.contextmanager
def injected(spec: str, paths: dict[str, Path], out: Path):
    """The environment fault of a case, for the duration of the command:

    fsize:N          a file-size limit of N bytes (RLIMIT_FSIZE, soft limit only, restored after): every
                     write beyond it fails with EFBIG, like a full disk or a quota does
    sigterm:MOD.NAME SIGTERM to this process when MOD.NAME (a function or method) is first called
    held:KEY         another mox process holds the folder paths[KEY] (its flock), as a running run does
    another-writer   another process writes the output while this one is writing it
    """
    if not spec:
        yield
        return
    kind, _, arg = spec.partition(":")
    if kind == "fsize":
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(arg), hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    elif kind == "sigterm":
        owner, attr = _resolve(arg)
        real = getattr(owner, attr)

        def stop(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
            return real(*args, **kwargs)

        setattr(owner, attr, stop)
        try:
            yield
        finally:
            setattr(owner, attr, real)
    elif kind == "held":
        from mox_unlearn.io.atomic import FolderLock

        lock = FolderLock(paths[arg]).acquire()
        try:
            yield
        finally:
            lock.release()
    elif kind == "another-writer":
        from mox_unlearn.io import atomic

        real = atomic.fsync_tree

        def theirs_first(folder):
            if Path(folder).name.startswith(f".{out.name}.tmp-") and not out.exists():
                out.mkdir()
                (out / "theirs.txt").write_text("written by another process\n")
            return real(folder)

        atomic.fsync_tree = theirs_first
        try:
            yield
        finally:
            atomic.fsync_tree = real
    else:
        raise ValueError(f"unknown fault {spec!r}")


def _resolve(dotted: str):
    """(object, attribute) for "package.module.Class.method" or "package.module.function"."""
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:-1]:
            owner = getattr(owner, name)
        return owner, parts[-1]
    raise ValueError(f"cannot resolve {dotted}")


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0
