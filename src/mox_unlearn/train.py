"""The one training loop, on Hugging Face `accelerate`.

Every step draws a forget micro-batch and a retain micro-batch (data/pairing.py), runs each forward
pass the objective needs exactly once (the trained model on forget / retain / refusal targets, the
frozen reference under `no_grad`), hands the tensors to the pure objective (losses/), and steps
AdamW with a linear warm-up/decay schedule. Methods that extrapolate (MOX) then turn the trained
model θ_mem into θ_for = θ_ref + α(θ_ref − θ_mem) (Eq. 8), or into the momentum average (Eq. 10).

Stopping safely (guards.py): Ctrl-C / SIGTERM, a non-finite loss or gradient norm (on_nonfinite) and
the collapse guard (collapse_probe_every) act at a step boundary, agreed by every process, and leave a
checkpoint that `mox unlearn --resume --out OUT` continues from; a kill (SIGKILL) loses at most the
steps since the latest checkpoint. Resuming reaches bitwise the weights of an uninterrupted run on CPU
(tests/test_interrupt.py): model, optimizer, scheduler, momentum, step counter and RNG states are
checkpointed, and the data order is a function of (seed, epoch).

Run folder (OUT); every file but the appended log is written whole (temp file or folder, then a rename),
with secrets redacted (redact.py):
  config.yaml, command.txt   the resolved config and the command line, written at the start
  log.jsonl                  one line per logged optimizer step (and per collapse probe or skipped step)
  checkpoints/step-N/        accelerate `save_state` (latest only), used by --resume; removed after run.json
  epochs/epoch-K/            the trained weights (θ_mem for MOX) after epoch K, with save_epochs=true
  memorized/                 θ_mem as an HF folder (unless save_memorized=false)
  model/                     the unlearned model as an HF folder
  memorized-adapter/,        with lora=true: the trained adapter (θ_mem = θ_ref + adapter) and the
  forget-adapter/            forget model's (θ_for = θ_ref + adapter, i.e. the first scaled by −α)
  run.json                   config, versions, timings, final losses; written last
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from mox_unlearn import guards, lora, sharding, versions
from mox_unlearn.config import UnlearnConfig, check_config, to_dict
from mox_unlearn.data import (
    RecordSet,
    collate,
    encode_qa,
    encode_records,
    epoch_plan,
    load_records,
    load_refusals,
    refusal_choices,
)
from mox_unlearn.data.records import check_overlap
from mox_unlearn.errors import MoxError
from mox_unlearn.extrapolate import extrapolate_tensor
from mox_unlearn.forward import Models, RefCache, StepBatch, answer_tokens, build_inputs
from mox_unlearn.io.atomic import atomic_output_dir, write_text_atomic
from mox_unlearn.io.cards import write_model_card
from mox_unlearn.io.loading import check_model_folder, load_model, load_tokenizer, looks_like_path, torch_dtype
from mox_unlearn.losses import LossSpec, get_loss
from mox_unlearn.methods import Method, get_method
from mox_unlearn.momentum import MomentumAverage
from mox_unlearn.redact import redact, redact_text

log = logging.getLogger(__name__)

# Keys that may differ between an interrupted run and its --resume without changing the result (the
# guards change it only where they fire: a run stopped by one can be resumed with another setting).
RESUME_FREE_KEYS = {
    "out",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "on_nonfinite",
    "max_skipped_steps",
    "collapse_probe_every",
    "collapse_threshold",
    "collapse_action",
    "collapse_probe_prompts",
    "collapse_probe_tokens",
}


@dataclass
class Progress:
    """Optimizer steps done (skipped ones included); checkpointed with the run so --resume knows where
    to continue and how many of its max_skipped_steps a run has used."""

    step: int = 0
    skipped: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.skipped = int(state["step"]), int(state.get("skipped", 0))


@dataclass
class Plan:
    """Step arithmetic of a run, derived from the data size and the batch settings."""

    micro_batch: int  # per process
    accumulation: int
    micro_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    epochs: int
    warmup_steps: int


def make_plan(cfg: UnlearnConfig, n_forget: int, num_processes: int) -> Plan:
    global_micro = cfg.per_device_batch_size * num_processes
    if cfg.batch_size % global_micro:
        raise MoxError(
            f"batch_size {cfg.batch_size} is not a multiple of per_device_batch_size × processes = {global_micro}"
        )
    accumulation = cfg.batch_size // global_micro
    micro_per_epoch = math.ceil(n_forget / global_micro)
    steps_per_epoch = math.ceil(micro_per_epoch / accumulation)
    if cfg.max_steps is not None:
        if cfg.max_steps < 1:
            raise MoxError(f"max_steps must be >= 1, got {cfg.max_steps}")
        total = cfg.max_steps
        epochs = math.ceil(total / steps_per_epoch)
    else:
        if cfg.epochs < 1:
            raise MoxError(f"epochs must be >= 1, got {cfg.epochs}")
        total, epochs = cfg.epochs * steps_per_epoch, cfg.epochs
    warmup = min(total, round(cfg.warmup_epochs * steps_per_epoch))
    return Plan(cfg.per_device_batch_size, accumulation, micro_per_epoch, steps_per_epoch, total, epochs, warmup)


# ----------------------------------------------------------------------------- run folder


def _is_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in ("config.yaml", "run.json", "checkpoints"))


def _latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return ckpts[-1] if ckpts else None


def _local_inputs(cfg: UnlearnConfig) -> list[Path]:
    """The files and folders a run reads that exist on this machine (hub ids and hf: specs are skipped)."""
    specs = [cfg.forget, cfg.retain, cfg.holdout, cfg.refusals]
    return [Path(s).resolve() for s in specs if s and not s.startswith("hf:") and Path(s).exists()]


def prepare_run_dir(cfg: UnlearnConfig, *, resume: bool, overwrite: bool, main: bool = True) -> Path:
    """Check OUT before any model is loaded; never delete anything that is not a mox run folder, and
    never write into or delete an input (the model folder, or data that --overwrite would remove).

    Every process checks; only the main process clears or creates the folder.
    """
    if not cfg.out:
        raise MoxError("no output folder given (--out)")
    out = Path(cfg.out).resolve()
    model_path = Path(cfg.model).resolve() if Path(cfg.model).exists() else None
    if model_path is not None and (out == model_path or model_path in out.parents or out in model_path.parents):
        raise MoxError(f"--out {out} overlaps the input model folder {model_path}")
    if resume:
        if _latest_checkpoint(out) is None:
            raise MoxError(f"nothing to resume: no checkpoint under {out / 'checkpoints'}")
        saved = yaml.safe_load((out / "config.yaml").read_text())
        now, defaults = redact(to_dict(cfg)), to_dict(UnlearnConfig())  # config.yaml was written redacted
        # a key the interrupted run's version did not have yet counts as its default
        changed = sorted(k for k in now if k not in RESUME_FREE_KEYS and saved.get(k, defaults[k]) != now[k])
        if changed:
            raise MoxError(f"--resume with a different config than the interrupted run: {', '.join(changed)}")
        return out
    occupied = out.exists() and any(out.iterdir())
    if occupied and not overwrite:
        raise MoxError(f"output folder {out} exists and is not empty (use --overwrite or --resume)")
    if occupied and not _is_run_dir(out):
        raise MoxError(f"refusing to overwrite {out}: it is not a mox run folder")
    inside = [str(p) for p in _local_inputs(cfg) if out == p or out in p.parents]
    if occupied and inside:
        raise MoxError(f"refusing to overwrite {out}: it holds input {inside[0]}, which --overwrite would delete")
    if main:
        if occupied:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
    return out


def saved_config(out: str | Path) -> dict[str, Any]:
    """The resolved config of an earlier run (for `mox unlearn --resume --out DIR`)."""
    path = Path(out) / "config.yaml"
    if not path.is_file():
        raise MoxError(f"nothing to resume: {path} not found")
    return yaml.safe_load(path.read_text())


# ----------------------------------------------------------------------------- data


@dataclass
class Resolved:
    """A config checked against the method and objective registries, before anything is loaded."""

    method: Method
    objective: str
    spec: LossSpec
    hp: dict[str, Any]
    needs: frozenset[str]
    target: str | None  # where target answers come from: refusal / alternate / retain_answer / None


def resolve(cfg: UnlearnConfig) -> Resolved:
    method = get_method(cfg.method)
    objective = cfg.objective or method.objectives[0]
    if objective not in method.objectives:
        raise MoxError(f"method {method.name!r} takes objectives {', '.join(method.objectives)}, not {objective!r}")
    spec = get_loss(objective)
    unknown_hp = set(cfg.loss) - set(spec.defaults)
    if unknown_hp:
        raise MoxError(
            f"unknown loss settings {sorted(unknown_hp)} for {objective}; valid: {', '.join(spec.defaults) or 'none'}"
        )
    hp = {**spec.defaults, **cfg.loss}
    if cfg.targeted and method.name != "mox":
        raise MoxError(f"--targeted is MOX's targeted variant (Eq. 9); method {method.name!r} does not take it")
    if cfg.momentum and not method.extrapolate:
        raise MoxError(f"--momentum needs an extrapolating method; {method.name!r} is not one")
    if cfg.alpha == "auto":
        from mox_unlearn.select_alpha import check_auto_config

        check_auto_config(cfg, method)
    elif method.extrapolate and cfg.alpha <= 0:
        raise MoxError(f"alpha must be > 0 for {method.name}, got {cfg.alpha}")
    if cfg.lora:
        lora.require_peft()
        if cfg.trainable or method.trainable:
            raise MoxError(
                f"lora=true trains adapters on {cfg.lora_targets}; {method.name} trains chosen weights "
                f"({cfg.trainable or method.trainable}): use one or the other"
            )
        if cfg.alpha == "auto":
            raise MoxError("alpha=auto with lora=true is not supported; run `mox select-alpha` on OUT/memorized")
    if cfg.momentum_every is not None and cfg.momentum_every < 1:
        raise MoxError(f"momentum_every must be >= 1, got {cfg.momentum_every}")
    if not cfg.model:
        raise MoxError("no model given (--model)")
    target = method.target or ("refusal" if cfg.targeted else None)
    return Resolved(method, objective, spec, hp, effective_needs(spec, hp, target is not None), target)


def load_data(cfg: UnlearnConfig, r: Resolved) -> tuple[RecordSet, RecordSet | None, list[str] | None]:
    """Read and validate the records (before any model is loaded, so bad data fails fast)."""
    forget = load_records(cfg.forget, name="forget")
    retain = load_records(cfg.retain, name="retain") if cfg.retain else None
    retain_terms = {"retain", "retain_logits", "ref_retain", "ref_retain_logits", "retain_hidden", "ref_retain_hidden"}
    if retain is None and (r.needs & retain_terms or r.target == "retain_answer"):
        raise MoxError(f"objective {r.objective!r} needs a retain set (--retain)")
    if r.target is not None and forget.kind != "qa":
        raise MoxError(f"{r.method.name} needs a question/answer forget set (its targets answer the forget questions)")
    if r.target == "retain_answer" and retain.kind != "qa":
        raise MoxError(f"{r.method.name} needs a question/answer retain set (its answers become targets)")
    check_overlap(forget, retain)  # a warning: the same items pulled both ways is almost always a mistake
    refusals = load_refusals(cfg.refusals) if r.target == "refusal" else None
    if cfg.alpha == "auto":  # the holdout set is read now, so a bad one fails before training
        from mox_unlearn.select_alpha import load_selection_data

        load_selection_data(forget, cfg.holdout, retain)
    return forget, retain, refusals


def effective_needs(spec: LossSpec, hp: dict[str, Any], has_target: bool) -> frozenset[str]:
    """Drop forward passes whose term is switched off (no KL when λ_kl = 0, no target without targets)."""
    needs = set(spec.needs)
    if hp.get("lambda_kl", 1.0) == 0:
        needs -= {"retain_logits", "ref_retain_logits"}
    if hp.get("alpha_r", 1.0) == 0:
        needs -= {"retain", "retain_hidden", "ref_retain_hidden"}
    if not has_target:
        needs -= {"target", "ref_target"}
    return frozenset(needs)


class Targets:
    """Target answers for forget prompts, by source, deterministic per (seed, epoch)."""

    def __init__(
        self,
        source: str | None,
        tokenizer,
        cfg: UnlearnConfig,
        forget: RecordSet,
        retain: RecordSet | None,
        refusals: list[str] | None,
        alternates: list[str] | None,
    ):
        self.source, self.tok, self.cfg = source, tokenizer, cfg
        self.questions = [r["question"] for r in forget.records] if source else []
        if source == "refusal":
            self.pool = refusals
        elif source == "retain_answer":
            self.pool = [r["answer"] for r in retain.records]
        elif source == "alternate":
            self.pool = alternates
        self.encoded: dict[tuple[int, int], dict] = {}

    def choices(self, epoch: int) -> list[int] | None:
        """Index into the pool for each forget item this epoch (alternates are per item)."""
        if self.source is None:
            return None
        if self.source == "alternate":
            return list(range(len(self.questions)))
        return refusal_choices(len(self.questions), len(self.pool), self.cfg.seed, epoch)

    def example(self, item: int, choice: int) -> dict:
        key = (item, choice)
        if key not in self.encoded:
            self.encoded[key] = encode_qa(
                self.tok, self.questions[item], self.pool[choice], self.cfg.prompt, self.cfg.max_length
            )
        return self.encoded[key]


# ----------------------------------------------------------------------------- models


def _mixed_precision(setting: str) -> str:
    if setting != "auto":
        if setting not in ("no", "bf16", "fp16"):
            raise MoxError(f"mixed_precision must be auto, no, bf16 or fp16, got {setting!r}")
        return setting
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def save_model(
    model,
    tokenizer,
    dest: Path,
    *,
    shard_size: str,
    card: dict[str, Any],
    title: str,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write an ordinary HF folder atomically (temp folder beside `dest`, renamed at the end)."""
    with atomic_output_dir(dest, overwrite=True) as tmp:
        model.save_pretrained(tmp, max_shard_size=shard_size, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        write_model_card(tmp, title=title, fields=redact(card))


@torch.no_grad()
def extrapolate_in_place(model, ref, alpha: float) -> None:
    """θ ← (1+α)θ_ref − αθ for every parameter (tied weights are visited once), computed in fp32; under
    FSDP on each rank's shards, which line up with the reference's (sharding.py)."""
    ref_params = sharding.local_parameters(ref)
    for name, param in sharding.local_parameters(model).items():
        param.copy_(extrapolate_tensor(ref_params[name].float(), param.float(), alpha).to(param.dtype))


@torch.no_grad()
def load_average_in_place(model, momentum: MomentumAverage) -> None:
    for name, param in sharding.local_parameters(model).items():
        param.copy_(momentum.avg[name].to(param.device, param.dtype))


# ----------------------------------------------------------------------------- the loop


def _slice_for_process(indices: list[int], rank: int, world: int) -> list[int]:
    """This process's share of a global micro-batch; a process left empty by a short last batch
    reuses the first item, so every process runs the same number of backward passes (DDP needs it)."""
    mine = indices[rank::world]
    return mine or indices[:1]


def step_token_norms(batches: list[StepBatch], accelerator) -> dict[str, float]:
    """Answer tokens of the whole step (every micro-batch of every process) per kind, divided by
    processes × micro-batches: with it as the divisor of token means, the average that gradient
    accumulation and DDP take over per-batch losses equals the mean over all the step's tokens, so the
    result does not depend on how the batch is split (tests/test_multiprocess.py). One tiny all-reduce."""
    kinds = ("forget", "retain", "target")
    counts = torch.tensor(
        [sum(answer_tokens(getattr(b, kind)) for b in batches) for kind in kinds],
        dtype=torch.float64,
        device=accelerator.device,
    )
    if accelerator.num_processes > 1:
        counts = accelerator.reduce(counts, reduction="sum")
    parts = accelerator.num_processes * len(batches)
    return {kind: max(float(c), 1.0) / parts for kind, c in zip(kinds, counts.tolist())}


def _on_step_end(step: int) -> None:
    """Hook called after every optimizer step (tests use it to simulate an interrupted run)."""


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _frozen(model, device):
    model.to(device).eval().requires_grad_(False)
    return model


def select_trainable(model, pattern: str | None, hidden_layer: int | None) -> int:
    """Freeze every parameter whose name does not match `pattern` (None: train all); returns the count trained."""
    if pattern is None:
        return sum(p.numel() for p in model.parameters())
    if hidden_layer is not None:
        pattern = pattern.format(layer=hidden_layer, layer_m1=hidden_layer - 1, layer_m2=hidden_layer - 2)
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise MoxError(f"trainable pattern {pattern!r} is not a valid regular expression: {e}") from None
    count = 0
    for name, param in model.named_parameters():
        param.requires_grad_(bool(regex.search(name)))
        count += param.numel() if param.requires_grad else 0
    if count == 0:
        raise MoxError(f"trainable pattern {pattern!r} matches no parameter of the model")
    return count


def default_hidden_layer(model, cfg: UnlearnConfig) -> int:
    """RMU's layer: configured, else the one at 7/32 of the depth (layer 7 of Zephyr-7B's 32 in WMDP)."""
    n = model.config.num_hidden_layers
    layer = cfg.hidden_layer if cfg.hidden_layer is not None else round(7 * n / 32)
    if not 0 <= layer < n:
        raise MoxError(f"hidden_layer {layer} outside the model's {n} layers")
    return layer


def unlearn(
    cfg: UnlearnConfig, *, resume: bool = False, overwrite: bool = False, argv: list[str] | None = None
) -> Path:
    """Run an unlearning method end to end and return the run folder (see the module docstring)."""
    t_start = time.perf_counter()
    check_config(cfg)  # however it was built; before anything is loaded or written
    r = resolve(cfg)
    method, objective, spec, hp, needs = r.method, r.objective, r.spec, r.hp, r.needs
    forget_rs, retain_rs, refusals = load_data(cfg, r)
    if cfg.model and looks_like_path(cfg.model):  # a bad local model folder fails here, before OUT is created
        check_model_folder(Path(cfg.model).expanduser())

    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    accelerator = Accelerator(mixed_precision=_mixed_precision(cfg.mixed_precision))
    world_env = int(os.environ.get("WORLD_SIZE", "1"))
    if world_env > 1 and accelerator.num_processes != world_env:
        # Otherwise every launched process would train alone and all would write the same OUT.
        raise MoxError(
            f"launched as {world_env} processes but accelerate sees {accelerator.num_processes}; "
            "on CPU set ACCELERATE_USE_CPU=1 (torchrun) or use `accelerate launch --multi_gpu` on GPUs"
        )
    sharding.check_backend(accelerator, lora=cfg.lora, alpha_auto=cfg.alpha == "auto")
    if cfg.collapse_probe_every and sharding.is_sharded(accelerator):
        # generation under FSDP is a collective per token: processes stopping at different lengths hang
        raise MoxError(
            "collapse_probe_every under FSDP is not supported; probe a saved model with `mox eval`, "
            "or train with DDP / one process"
        )
    main = accelerator.is_main_process
    out = prepare_run_dir(cfg, resume=resume, overwrite=overwrite, main=main)
    accelerator.wait_for_everyone()
    if main and not resume:
        write_text_atomic(out / "config.yaml", yaml.safe_dump(redact(to_dict(cfg)), sort_keys=False))
        write_text_atomic(out / "command.txt", redact_text(shlex.join(argv if argv is not None else sys.argv)) + "\n")
    elif main:
        _remove_partial_checkpoints(out)

    # --- stages that come before training (each skipped when its output already exists)
    reinforced_dir = run_reinforce_stage(cfg, out) if method.stage == "reinforce" else None
    set_seed(cfg.seed)

    # --- models and data
    dtype = torch_dtype(cfg.dtype)
    tokenizer = load_tokenizer(cfg.model)
    forget_ex = encode_records(tokenizer, forget_rs, cfg.prompt, cfg.max_length)
    retain_ex = encode_records(tokenizer, retain_rs, cfg.prompt, cfg.max_length) if retain_rs else []
    plan = make_plan(cfg, len(forget_ex), accelerator.num_processes)
    model = load_model(cfg.model, dtype)
    if cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        if cfg.lora:  # frozen embeddings: checkpointed blocks still need inputs that require grad
            model.enable_input_require_grads()
    if cfg.lora:
        model = lora.wrap(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    needs_ref = method.extrapolate or r.target == "alternate" or any(n.startswith("ref_") for n in needs)
    if cfg.lora:  # θ_ref is the same model with the adapter off: no second copy of the weights
        ref = lora.AdapterOff(model) if needs_ref else None
    else:
        ref = _frozen(load_model(cfg.model, dtype), accelerator.device) if needs_ref else None
    alternates = None
    if r.target == "alternate":
        generator = model.to(accelerator.device) if cfg.lora else ref  # B = 0: still exactly θ_ref
        alternates = load_or_generate_alternates(cfg, out, generator, tokenizer, forget_rs, main)
        accelerator.wait_for_everyone()
        if not main:
            alternates = load_or_generate_alternates(cfg, out, generator, tokenizer, forget_rs, main)
    targets = Targets(r.target, tokenizer, cfg, forget_rs, retain_rs, refusals, alternates)
    uses_hidden = any(n.endswith("_hidden") for n in needs)
    hidden_layer = default_hidden_layer(model, cfg) if uses_hidden else None
    if cfg.lora:
        n_trainable = lora.trainable_count(model.parameters())
    else:
        n_trainable = select_trainable(model, cfg.trainable or method.trainable, hidden_layer)
    control = None
    if "control" in needs:
        g = torch.Generator().manual_seed(cfg.seed)
        u = torch.rand(model.config.hidden_size, generator=g)  # WMDP: uniform [0, 1), then normalised
        control = (u / u.norm()).to(accelerator.device)
    models = Models(
        model=None,
        ref=ref,
        cache=RefCache(ref, cfg.cache_ref) if ref is not None else None,
        reinforced=_frozen(load_model(str(reinforced_dir), dtype), accelerator.device) if reinforced_dir else None,
        hidden_layer=hidden_layer,
        control=control,
    )
    t_loaded = time.perf_counter()

    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    scheduler = get_scheduler(
        "linear", optimizer, num_warmup_steps=plan.warmup_steps, num_training_steps=plan.total_steps
    )
    # The scheduler is stepped by hand once per optimizer step (steps are counted globally), so it
    # is registered for checkpointing rather than prepared (a prepared one steps once per process).
    model, optimizer = accelerator.prepare(model, optimizer)
    models.model = model
    sharded = sharding.is_sharded(accelerator)
    if sharded:  # frozen models sharded like the policy; no reference cache (ranks would differ in forwards)
        models.ref = ref = sharding.shard_like_policy(accelerator, ref)
        models.reinforced = sharding.shard_like_policy(accelerator, models.reinforced)
        models.cache = RefCache(ref, enabled=False) if ref is not None else None
    progress = Progress()
    momentum = None
    if cfg.momentum:
        momentum = lora.LowRankMomentum(cfg.eta, cfg.alpha) if cfg.lora else MomentumAverage(cfg.eta, cfg.alpha)
    accelerator.register_for_checkpointing(scheduler, progress)
    if momentum is not None and not sharded:  # sharded: each rank checkpoints its own shards (_checkpoint)
        accelerator.register_for_checkpointing(momentum)
    saved_at = -1  # step of the checkpoint on disk that holds the current state, if any
    if resume:
        checkpoint = _latest_checkpoint(out)
        accelerator.load_state(str(checkpoint))
        if momentum is not None and sharded:
            momentum.load_state_dict(
                torch.load(checkpoint / f"momentum-rank{accelerator.process_index}.pt", weights_only=True)
            )
        saved_at = progress.step
        if main:
            _truncate_log(out / "log.jsonl", progress.step)
    momentum_every = cfg.momentum_every or plan.steps_per_epoch
    checkpoint_every = plan.steps_per_epoch if cfg.checkpoint_every is None else cfg.checkpoint_every
    probes = guards.probe_prompts(forget_ex, cfg.collapse_probe_prompts) if cfg.collapse_probe_every else []
    own_momentum = momentum if sharded else None

    def checkpoint_now() -> None:
        """A checkpoint of the current state, unless the latest one already is it."""
        nonlocal saved_at
        if saved_at != progress.step:
            _checkpoint(accelerator, out, progress.step, own_momentum)
            saved_at = progress.step

    pad_id = tokenizer.pad_token_id
    device = accelerator.device
    rank, world = accelerator.process_index, accelerator.num_processes
    last_logs: dict[str, float] = {}

    from tqdm.auto import tqdm

    bar = tqdm(total=plan.total_steps, initial=progress.step, desc=f"{method.name}:{objective}", disable=not main)
    # the bar is closed however the loop ends, so a stop's message starts on a line of its own
    with open(out / "log.jsonl", "a") as log_file, guards.StopRequest() as stop, bar:
        for epoch in range(plan.epochs):
            micro = epoch_plan(len(forget_ex), len(retain_ex), plan.micro_batch * world, cfg.seed, epoch)
            choices = targets.choices(epoch)
            groups = [micro[i : i + plan.accumulation] for i in range(0, len(micro), plan.accumulation)]
            for g, group in enumerate(groups):
                step = epoch * plan.steps_per_epoch + g
                if step >= plan.total_steps:
                    break
                if step < progress.step:  # already done before the interruption
                    continue
                rng_before = guards.rng_state()
                sums: dict[str, float] = {}
                batches = []
                for f_idx, r_idx in group:
                    f_idx = _slice_for_process(f_idx, rank, world)
                    batch = StepBatch(
                        forget=_to(collate([forget_ex[i] for i in f_idx], pad_id), device),
                        forget_keys=[("forget", i) for i in f_idx],
                    )
                    if retain_ex:
                        r_idx = _slice_for_process(r_idx, rank, world)
                        batch.retain = _to(collate([retain_ex[i] for i in r_idx], pad_id), device)
                    if choices is not None:
                        batch.target = _to(collate([targets.example(i, choices[i]) for i in f_idx], pad_id), device)
                        batch.target_keys = [("target", i, choices[i]) for i in f_idx]
                    batches.append(batch)
                norms = step_token_norms(batches, accelerator)
                bad_loss = None
                for k, batch in enumerate(batches):
                    batch.norms = norms
                    last = k == len(group) - 1
                    with contextlib.nullcontext() if last else accelerator.no_sync(model):
                        with accelerator.autocast():
                            loss, logs = spec.fn(build_inputs(needs, models, batch), **hp)
                        if bad_loss is None and not torch.isfinite(loss):
                            bad_loss = loss.item()
                        # backward even so: under DDP every process must run the same backward passes
                        accelerator.backward(loss / len(group))
                    for key, value in logs.items():
                        sums[key] = sums.get(key, 0.0) + value / len(group)
                # the norm of the whole gradient (reduced over processes); max_norm=inf leaves it unchanged
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or math.inf)
                health = guards.agree(accelerator, bad_loss, grad_norm, stop, check_grad=accelerator.scaler is None)
                if health.problem is None:
                    optimizer.step()
                    scheduler.step()
                else:
                    _skip_bad_step(
                        cfg, accelerator, optimizer, progress, health.problem, rng_before, checkpoint_now, out, main
                    )
                optimizer.zero_grad(set_to_none=True)
                progress.step += 1
                last_logs = sums
                if momentum is not None and (progress.step % momentum_every == 0 or progress.step == plan.total_steps):
                    if cfg.lora:
                        momentum.update(accelerator.unwrap_model(model))
                    else:
                        momentum.update(
                            sharding.local_parameters(ref),
                            sharding.local_parameters(accelerator.unwrap_model(model)).items(),
                        )
                rate = None
                if probes and progress.step % cfg.collapse_probe_every == 0:
                    rate = guards.collapse_rate(
                        accelerator.unwrap_model(model),
                        tokenizer,
                        probes,
                        max_new_tokens=cfg.collapse_probe_tokens,
                        rank=rank,
                        world=world,
                    )
                    model.train()
                if main and (
                    progress.step % cfg.log_every == 0
                    or progress.step == plan.total_steps
                    or rate is not None
                    or health.problem is not None
                ):
                    record = {
                        "step": progress.step,
                        "epoch": round(progress.step / plan.steps_per_epoch, 4),
                        "lr": scheduler.get_last_lr()[0],
                        **{k: round(v, 6) for k, v in sums.items()},
                    }
                    if health.problem is not None:
                        record["skipped"] = health.problem
                    if rate is not None:
                        record["collapse_top_token_rate"] = round(rate, 4)
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                bar.set_postfix({k: f"{v:.4g}" for k, v in sums.items()})
                bar.update(1)
                if cfg.save_epochs and (progress.step % plan.steps_per_epoch == 0 or progress.step == plan.total_steps):
                    k = math.ceil(progress.step / plan.steps_per_epoch)
                    state = sharding.full_state_dict(accelerator, model)  # every rank gathers under FSDP
                    if main:
                        save_trained(
                            cfg,
                            accelerator.unwrap_model(model),
                            tokenizer,
                            out / "epochs" / f"epoch-{k}",
                            title=f"Trained weights after epoch {k}",
                            state_dict=state,
                            card={"method": method.name, "epoch": k, "step": progress.step, "source model": cfg.model},
                        )
                if checkpoint_every and progress.step % checkpoint_every == 0 and progress.step < plan.total_steps:
                    checkpoint_now()
                if rate is not None and rate >= cfg.collapse_threshold:
                    _collapse_alarm(cfg, rate, progress.step, len(probes), checkpoint_now, out, main)
                if health.stop_requested:
                    checkpoint_now()
                    raise guards.RunInterrupted(
                        f"interrupted after step {progress.step} of {plan.total_steps}; "
                        f"checkpoint saved, resume with: {_resume_command(out)}"
                    )
                _on_step_end(progress.step)
    t_trained = time.perf_counter()

    # --- outputs
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    outputs: dict[str, str] = {}
    extra_info: dict[str, Any] = {}  # e.g. the α chosen by alpha=auto, for run.json
    card = {
        "method": method.name,
        "objective": objective,
        "source model": cfg.model,
        "forget set": cfg.forget,
        "retain set": cfg.retain,
        "steps": plan.total_steps,
        "lr": cfg.lr,
        "seed": cfg.seed,
        **({f"loss.{k}": v for k, v in hp.items()}),
    }
    with _writing_outputs(out):
        if main and cfg.lora:
            save_lora_outputs(cfg, method, unwrapped, momentum, tokenizer, out, card, outputs)
        elif not cfg.lora and (main or sharded):  # FSDP: every rank gathers and works on its shards; rank 0 writes
            if method.extrapolate and cfg.save_memorized:
                role = "θ_mem (trained by gradient descent; extrapolate away from it)"
                state = sharding.full_state_dict(accelerator, model)
                if main:
                    save_model(
                        unwrapped,
                        tokenizer,
                        out / "memorized",
                        shard_size=cfg.shard_size,
                        title="Memorization model θ_mem" if method.name == "mox" else "Fine-tuned model θ_ft",
                        card={**card, "role": role},
                        state_dict=state,
                    )
                outputs["memorized"] = str(out / "memorized")
            if method.extrapolate:
                if momentum is not None:
                    load_average_in_place(unwrapped, momentum)
                    card.update(
                        {
                            "alpha": cfg.alpha,
                            "momentum": f"eta={cfg.eta}, every {momentum_every} steps, {momentum.updates} updates",
                        }
                    )
                else:
                    alpha = cfg.alpha
                    if alpha == "auto":
                        alpha, selection = choose_alpha(cfg, out, unwrapped, ref, tokenizer)
                        outputs["alpha_selection"] = selection["report"]
                        card["alpha selection"] = f"auto over {selection['grid']}: {selection['reason']}"
                        extra_info["alpha_selection"] = selection
                    extrapolate_in_place(unwrapped, ref, alpha)
                    card["alpha"] = alpha
            state = sharding.full_state_dict(accelerator, model)
            if main:
                save_model(
                    unwrapped,
                    tokenizer,
                    out / "model",
                    shard_size=cfg.shard_size,
                    title=f"Unlearned model ({method.name})",
                    card=card,
                    state_dict=state,
                )
            outputs["model"] = str(out / "model")
        if main:
            t_end = time.perf_counter()
            cache = models.cache
            write_text_atomic(
                out / "run.json",
                json.dumps(
                    redact(
                        {
                            "config": to_dict(cfg),
                            "argv": argv if argv is not None else sys.argv,
                            "versions": versions(),
                            "plan": dataclasses.asdict(plan),
                            "data": {"forget": len(forget_ex), "retain": len(retain_ex)},
                            "trainable_parameters": n_trainable,
                            "reference_cache": None
                            if cache is None
                            else {"enabled": cache.enabled, "hits": cache.hits, "misses": cache.misses},
                            "timings_s": {
                                "load": round(t_loaded - t_start, 3),
                                "train": round(t_trained - t_loaded, 3),
                                "save": round(t_end - t_trained, 3),
                                "total": round(t_end - t_start, 3),
                            },
                            "final_logs": last_logs,
                            "skipped_steps": progress.skipped,
                            **extra_info,
                            "outputs": outputs,
                        }
                    ),
                    indent=2,
                    default=str,
                )
                + "\n",
            )
            if not cfg.keep_checkpoints:  # only now: until run.json is written, --resume may need them
                shutil.rmtree(out / "checkpoints", ignore_errors=True)
    accelerator.wait_for_everyone()
    return out


@contextlib.contextmanager
def _writing_outputs(out: Path):
    """A failed write of the outputs (full disk, quota) becomes one line saying what is kept: every
    folder is written to a temp folder and renamed whole (nothing half-written), and the checkpoints
    are removed only after run.json, so --resume continues from the latest one."""
    try:
        yield
    except OSError as e:
        ckpt = _latest_checkpoint(out)
        kept = (
            f"checkpoint {ckpt.name} kept: free space and run `{_resume_command(out)}`"
            if ckpt
            else "no checkpoint to resume from (checkpoint_every=0): run again"
        )
        where = f" ({e.filename})" if e.filename else ""
        raise MoxError(f"writing the outputs failed: {e.strerror or e}{where}; {kept}") from e


def save_trained(
    cfg: UnlearnConfig,
    model,
    tokenizer,
    dest: Path,
    *,
    title: str,
    card: dict[str, Any],
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """The weights being trained as a plain HF folder (with LoRA: θ_ref + the adapter, merged)."""
    state = lora.merged_state_dict(model, lora.memorized_factors(model)) if cfg.lora else state_dict
    save_model(
        model.get_base_model() if cfg.lora else model,
        tokenizer,
        dest,
        shard_size=cfg.shard_size,
        title=title,
        card=card,
        state_dict=state,
    )


def save_lora_outputs(
    cfg: UnlearnConfig,
    method: Method,
    model,
    momentum,
    tokenizer,
    out: Path,
    card: dict[str, Any],
    outputs: dict[str, str],
) -> None:
    """LoRA runs: the adapters, and merged plain folders for θ_mem and the unlearned model (lora.py)."""
    card = {**card, "lora": f"r={cfg.lora_r}, lora_alpha={cfg.lora_alpha}, targets={cfg.lora_targets}"}
    with atomic_output_dir(out / "memorized-adapter", overwrite=True) as tmp:
        model.save_pretrained(str(tmp))
    outputs["memorized_adapter"] = str(out / "memorized-adapter")
    mem = lora.memorized_factors(model)
    forget = mem  # a method that is not extrapolated: the unlearned model is θ_ref + the adapter
    if method.extrapolate:
        if cfg.save_memorized:
            save_model(
                model.get_base_model(),
                tokenizer,
                out / "memorized",
                shard_size=cfg.shard_size,
                title="Memorization model θ_mem (LoRA, merged)",
                card={**card, "role": "θ_mem = θ_ref + adapter"},
                state_dict=lora.merged_state_dict(model, mem),
            )
            outputs["memorized"] = str(out / "memorized")
        if momentum is not None:
            forget = momentum.forget_factors()
            card["momentum"] = (
                f"eta={cfg.eta}, {momentum.updates} updates, exact over B·A (rank {cfg.lora_r}×{momentum.updates})"
            )
        else:
            forget = lora.scaled(mem, -cfg.alpha)
        card["alpha"] = cfg.alpha
        with atomic_output_dir(out / "forget-adapter", overwrite=True) as tmp:
            lora.save_adapter(model, forget, tmp, cfg.model)
        outputs["forget_adapter"] = str(out / "forget-adapter")
    save_model(
        model.get_base_model(),
        tokenizer,
        out / "model",
        shard_size=cfg.shard_size,
        title=f"Unlearned model ({method.name}, LoRA, merged)",
        card=card,
        state_dict=lora.merged_state_dict(model, forget),
    )
    outputs["model"] = str(out / "model")


def choose_alpha(cfg: UnlearnConfig, out: Path, model, ref, tokenizer) -> tuple[float, dict[str, Any]]:
    """`alpha: auto`: pick α from the trained θ_mem (select_alpha.py); writes OUT/alpha-selection.{json,png}."""
    from mox_unlearn.select_alpha import select_for_run

    def save(m, tok, dest: Path) -> None:
        save_model(
            m, tok, dest, shard_size=cfg.shard_size, card={"role": "scratch copy for alpha selection"}, title="scratch"
        )

    return select_for_run(cfg, out, model, ref, tokenizer, save)


# ----------------------------------------------------------------------------- stages before training


def run_reinforce_stage(cfg: UnlearnConfig, out: Path) -> Path:
    """WHP's reinforced model: the reference fine-tuned further on the forget set (plain NLL).

    Runs the same loop as a nested run in OUT/reinforce (reused when it finished before)."""
    stage_out = out / "reinforce"
    if (stage_out / "run.json").is_file():
        return stage_out / "model"
    sub = dataclasses.replace(
        cfg,
        method="finetune",
        objective=None,
        loss={},
        out=str(stage_out),
        retain=None,
        momentum=False,
        targeted=False,
        trainable=None,
        epochs=cfg.reinforce_epochs or cfg.epochs,
        lr=cfg.reinforce_lr or cfg.lr,
        max_steps=cfg.reinforce_max_steps,
        save_memorized=False,
        prompt=dataclasses.replace(cfg.prompt),
    )
    resume = _latest_checkpoint(stage_out) is not None
    try:
        unlearn(sub, resume=resume, overwrite=not resume, argv=["(reinforce stage)"])
    except guards.RunInterrupted:  # the stage resumes with its run: name the run's folder, not the stage's
        raise guards.RunInterrupted(
            f"interrupted in the reinforce stage; checkpoint saved, resume with: {_resume_command(out)}"
        ) from None
    return stage_out / "model"


def load_or_generate_alternates(
    cfg: UnlearnConfig, out: Path, ref, tokenizer, forget: RecordSet, main: bool
) -> list[str]:
    """AltPO's alternate answers: θ_ref's greedy answer to each forget question under an instruction to
    answer differently from the true answer; cached in OUT/alternates.jsonl (and reused on --resume)."""
    path = out / "alternates.jsonl"
    if not path.is_file():
        if not main:
            raise MoxError(f"{path} missing on a non-main process")
        from mox_unlearn.evaluate.stats import generate_answers

        prompts = [
            cfg.alternates_prompt.format(question=rec["question"], answer=rec["answer"]) for rec in forget.records
        ]
        answers = generate_answers(
            ref,
            tokenizer,
            prompts,
            cfg.prompt,
            max_new_tokens=cfg.alternates_max_new_tokens,
            batch_size=cfg.per_device_batch_size,
            desc="altpo: alternates",
        )
        rows = [
            {"question": rec["question"], "answer": rec["answer"], "alternate": alt}
            for rec, alt in zip(forget.records, answers)
        ]
        write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if [row["question"] for row in rows] != [rec["question"] for rec in forget.records]:
        raise MoxError(f"{path} does not match the forget set; delete it to generate the alternates again")
    return [row["alternate"] for row in rows]


def _logged_step(line: str) -> int | None:
    """The step of a log line; None for a line cut short (a kill or a full disk mid-write)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (those steps run again), and any line
    cut short; rewritten atomically, so a second interruption here loses nothing."""
    if path.is_file():
        keep = [line for line in path.read_text().splitlines() if (s := _logged_step(line)) is not None and s <= step]
        write_text_atomic(path, "".join(line + "\n" for line in keep))


def _resume_command(out: Path) -> str:
    return f"mox unlearn --resume --out {shlex.quote(str(out))}"


def _skip_bad_step(
    cfg: UnlearnConfig,
    accelerator,
    optimizer,
    progress: Progress,
    problem: str,
    rng_before: dict,
    checkpoint_now,
    out: Path,
    main: bool,
) -> None:
    """A step whose loss or gradient is not finite is never applied. on_nonfinite=skip drops it (no
    optimizer or scheduler step) up to max_skipped_steps times; otherwise the run stops with a
    checkpoint of the state before the step, RNG state included, so that resuming from it is exactly a
    run in which the step did not fail (an injected NaN in tests; a changed setting in real use)."""
    step = progress.step + 1
    optimizer.zero_grad(set_to_none=True)
    if accelerator.scaler is not None:  # fp16: clip_grad_norm_ unscaled the gradients; the scaler needs an update
        accelerator.scaler.update()
    if cfg.on_nonfinite == "skip" and progress.skipped < cfg.max_skipped_steps:
        progress.skipped += 1
        if main:
            log.warning(
                f"step {step}: {problem}; step skipped ({progress.skipped} of max_skipped_steps="
                f"{cfg.max_skipped_steps})"
            )
        return
    guards.set_rng_state(rng_before)
    checkpoint_now()
    why = f"{cfg.max_skipped_steps} steps skipped already" if cfg.on_nonfinite == "skip" else "on_nonfinite=stop"
    raise MoxError(
        f"step {step}: {problem} ({why}); stopped with a checkpoint of step {progress.step} (the weights "
        f"before it) in {out / 'checkpoints'}: lower lr and start again, or continue with --resume and "
        "on_nonfinite=skip max_skipped_steps=N"
    )


def _collapse_alarm(
    cfg: UnlearnConfig, rate: float, step: int, n_prompts: int, checkpoint_now, out: Path, main: bool
) -> None:
    """The collapse guard (paper Def. 2.2): greedy answers dominated by one token. GA-style objectives
    drive a model there while their loss keeps improving, so the loss alone does not show it."""
    what = (
        f"collapse guard: most-frequent-token rate {rate:.3f} >= collapse_threshold {cfg.collapse_threshold:g} "
        f"at step {step} (greedy answers to {n_prompts} forget prompts)"
    )
    if cfg.collapse_action == "warn":
        if main:
            log.warning(what)
        return
    checkpoint_now()
    raise MoxError(
        f"{what}; stopped with a checkpoint of step {step} in {out / 'checkpoints'} "
        "(collapse_action=stop): lower lr or use another method"
    )


def _remove_partial_checkpoints(out: Path) -> None:
    """Temp folders of checkpoints a kill interrupted mid-write (never renamed, so never resumed from)."""
    for tmp in (out / "checkpoints").glob(".tmp-step-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def _checkpoint(accelerator, out: Path, step: int, own_momentum: MomentumAverage | None = None) -> None:
    """save_state into a temp folder, rename, then drop older checkpoints (only the latest is kept).
    `own_momentum`: under FSDP each rank's momentum holds its own shards, saved by that rank.

    A write that fails (full disk) removes its temp folder and leaves the previous checkpoint as it was."""
    ckdir = out / "checkpoints"
    tmp = ckdir / f".tmp-step-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if own_momentum is not None:
            torch.save(own_momentum.state_dict(), tmp / f"momentum-rank{accelerator.process_index}.pt")
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = _latest_checkpoint(out)
        kept = f"the checkpoint {previous.name} is kept" if previous else "no earlier checkpoint"
        raise MoxError(f"writing checkpoint step-{step} failed ({e.strerror or e}); {kept}") from e
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = ckdir / f"step-{step}"
        shutil.rmtree(final, ignore_errors=True)  # a stale one of the same step (same state)
        os.replace(tmp, final)
        for old in ckdir.glob("step-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
