"""The one training loop, on Hugging Face `accelerate`.

Every step draws a forget micro-batch and a retain micro-batch (data/pairing.py), runs each forward
pass the objective needs exactly once (the trained model on forget / retain / refusal targets, the
frozen reference under `no_grad`), hands the tensors to the pure objective (losses/), and steps
AdamW with a linear warm-up/decay schedule. Methods that extrapolate (MOX) then turn the trained
model θ_mem into θ_for = θ_ref + α(θ_ref − θ_mem) (Eq. 8), or into the momentum average (Eq. 10).

Run folder (OUT):
  config.yaml, command.txt   the resolved config and the command line, written at the start
  log.jsonl                  one line per logged optimizer step
  checkpoints/step-N/        accelerate `save_state` (latest only), used by --resume
  memorized/                 θ_mem as an HF folder (unless save_memorized=false)
  model/                     the unlearned model as an HF folder
  run.json                   config, versions, timings, final losses; written last
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from mox_unlearn import __version__
from mox_unlearn.config import UnlearnConfig, to_dict
from mox_unlearn.data import (
    RecordSet,
    collate,
    encode_qa,
    encode_records,
    ensure_pad_token,
    epoch_plan,
    load_records,
    load_refusals,
    refusal_choices,
)
from mox_unlearn.errors import MoxError
from mox_unlearn.extrapolate import extrapolate_tensor
from mox_unlearn.losses import LossInputs, LossSpec, answer_logits, get_loss, sequence_stats
from mox_unlearn.methods import Method, get_method
from mox_unlearn.modelio import atomic_output_dir, write_model_card
from mox_unlearn.momentum import MomentumAverage

# Keys that may differ between an interrupted run and its --resume without changing the result.
RESUME_FREE_KEYS = {"out", "checkpoint_every", "keep_checkpoints", "log_every"}


@dataclass
class Progress:
    """Optimizer steps done; checkpointed with the run so --resume knows where to continue."""

    step: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


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


def prepare_run_dir(cfg: UnlearnConfig, *, resume: bool, overwrite: bool, main: bool = True) -> Path:
    """Check OUT before any model is loaded; never delete anything that is not a mox run folder.

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
        now = to_dict(cfg)
        changed = sorted(k for k in now if k not in RESUME_FREE_KEYS and saved.get(k) != now[k])
        if changed:
            raise MoxError(f"--resume with a different config than the interrupted run: {', '.join(changed)}")
        return out
    occupied = out.exists() and any(out.iterdir())
    if occupied and not overwrite:
        raise MoxError(f"output folder {out} exists and is not empty (use --overwrite or --resume)")
    if occupied and not _is_run_dir(out):
        raise MoxError(f"refusing to overwrite {out}: it is not a mox run folder")
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


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- data


@dataclass
class Data:
    forget: RecordSet
    retain: RecordSet | None
    forget_examples: list[dict]
    retain_examples: list[dict]
    refusals: list[str] | None


def load_data(cfg: UnlearnConfig, needs: frozenset[str]) -> tuple[RecordSet, RecordSet | None, list[str] | None]:
    """Read and validate the records (before any model is loaded, so bad data fails fast)."""
    forget = load_records(cfg.forget, name="forget")
    wants_retain = bool(needs & {"retain", "retain_logits", "ref_retain", "ref_retain_logits"})
    retain = load_records(cfg.retain, name="retain") if cfg.retain else None
    if wants_retain and retain is None and cfg.loss.get("lambda_kl", 1.0) != 0:
        raise MoxError(f"objective needs a retain set (--retain), or set loss.lambda_kl=0")
    refusals = None
    if cfg.targeted:
        if forget.kind != "qa":
            raise MoxError("--targeted needs a question/answer forget set (refusals answer its questions)")
        refusals = load_refusals(cfg.refusals)
    return forget, retain, refusals


# ----------------------------------------------------------------------------- forward passes


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _forward(model, batch: dict[str, torch.Tensor], logits_too: bool):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    stats = sequence_stats(logits, batch["labels"])
    return stats, (answer_logits(logits, batch["labels"]) if logits_too else None)


def build_inputs(
    needs: frozenset[str], model, ref, forget: dict, retain: dict | None, target: dict | None
) -> LossInputs:
    """Run each forward pass the objective needs once and collect the tensors it reads."""
    inputs = LossInputs()
    inputs.forget, _ = _forward(model, forget, False)
    if retain is not None and needs & {"retain", "retain_logits"}:
        inputs.retain, inputs.retain_logits = _forward(model, retain, "retain_logits" in needs)
    if target is not None and "target" in needs:
        inputs.target, _ = _forward(model, target, False)
    with torch.no_grad():
        if "ref_forget" in needs:
            inputs.ref_forget, _ = _forward(ref, forget, False)
        if retain is not None and needs & {"ref_retain", "ref_retain_logits"}:
            inputs.ref_retain, inputs.ref_retain_logits = _forward(ref, retain, "ref_retain_logits" in needs)
    return inputs


def effective_needs(spec: LossSpec, hp: dict[str, Any], targeted: bool) -> frozenset[str]:
    """Drop forward passes whose term is switched off (no KL when λ_kl = 0, no target unless targeted)."""
    needs = set(spec.needs)
    if hp.get("lambda_kl", 1.0) == 0:
        needs -= {"retain_logits", "ref_retain_logits"}
    if not targeted:
        needs.discard("target")
    return frozenset(needs)


# ----------------------------------------------------------------------------- models


def _load_model(name: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per run is ours; the per-load weight bars are noise
    try:
        return AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        raise MoxError(f"cannot load model {name!r}: {str(e).strip().splitlines()[0]}") from None


def _load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, KeyError) as e:
        raise MoxError(f"cannot load tokenizer of {name!r}: {str(e).strip().splitlines()[0]}") from None
    ensure_pad_token(tok)
    return tok


def _dtype(name: str) -> torch.dtype:
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise MoxError(f"unknown dtype {name!r}; valid: {', '.join(table)}")
    return table[name]


def _mixed_precision(setting: str) -> str:
    if setting != "auto":
        if setting not in ("no", "bf16", "fp16"):
            raise MoxError(f"mixed_precision must be auto, no, bf16 or fp16, got {setting!r}")
        return setting
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def save_model(model, tokenizer, dest: Path, *, shard_size: str, card: dict[str, Any], title: str) -> None:
    """Write an ordinary HF folder atomically (temp folder beside `dest`, renamed at the end)."""
    with atomic_output_dir(dest, overwrite=True) as tmp:
        model.save_pretrained(tmp, max_shard_size=shard_size)
        tokenizer.save_pretrained(tmp)
        write_model_card(tmp, title=title, fields=card)


@torch.no_grad()
def extrapolate_in_place(model, ref, alpha: float) -> None:
    """θ ← (1+α)θ_ref − αθ for every parameter (tied weights are visited once), computed in fp32."""
    ref_params = dict(ref.named_parameters())
    for name, param in model.named_parameters():
        param.copy_(extrapolate_tensor(ref_params[name].float(), param.float(), alpha).to(param.dtype))


@torch.no_grad()
def load_average_in_place(model, momentum: MomentumAverage) -> None:
    for name, param in model.named_parameters():
        param.copy_(momentum.avg[name].to(param.device, param.dtype))


# ----------------------------------------------------------------------------- the loop


def _slice_for_process(indices: list[int], rank: int, world: int) -> list[int]:
    """This process's share of a global micro-batch; a process left empty by a short last batch
    reuses the first item, so every process runs the same number of backward passes (DDP needs it)."""
    mine = indices[rank::world]
    return mine or indices[:1]


def _on_step_end(step: int) -> None:
    """Hook called after every optimizer step (tests use it to simulate an interrupted run)."""


def unlearn(cfg: UnlearnConfig, *, resume: bool = False, overwrite: bool = False, argv: list[str] | None = None) -> Path:
    """Run an unlearning method end to end and return the run folder (see the module docstring)."""
    t_start = time.perf_counter()
    method: Method = get_method(cfg.method)
    objective = cfg.objective or method.objectives[0]
    if objective not in method.objectives:
        raise MoxError(f"method {method.name!r} takes objectives {', '.join(method.objectives)}, not {objective!r}")
    spec = get_loss(objective)
    unknown_hp = set(cfg.loss) - set(spec.defaults)
    if unknown_hp:
        raise MoxError(f"unknown loss settings {sorted(unknown_hp)} for {objective}; valid: {', '.join(spec.defaults)}")
    hp = {**spec.defaults, **cfg.loss}
    if cfg.momentum and not method.extrapolate:
        raise MoxError(f"--momentum needs an extrapolating method; {method.name!r} is not one")
    if method.extrapolate and cfg.alpha <= 0:
        raise MoxError(f"alpha must be > 0 for {method.name}, got {cfg.alpha}")
    if cfg.momentum_every is not None and cfg.momentum_every < 1:
        raise MoxError(f"momentum_every must be >= 1, got {cfg.momentum_every}")
    if not cfg.model:
        raise MoxError("no model given (--model)")
    needs = effective_needs(spec, hp, cfg.targeted)
    forget_rs, retain_rs, refusals = load_data(cfg, needs)

    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    accelerator = Accelerator(mixed_precision=_mixed_precision(cfg.mixed_precision))
    world_env = int(os.environ.get("WORLD_SIZE", "1"))
    if world_env > 1 and accelerator.num_processes != world_env:
        # Otherwise every launched process would train alone and all would write the same OUT.
        raise MoxError(f"launched as {world_env} processes but accelerate sees {accelerator.num_processes}; "
                       "on CPU set ACCELERATE_USE_CPU=1 (torchrun) or use `accelerate launch --multi_gpu` on GPUs")
    main = accelerator.is_main_process
    out = prepare_run_dir(cfg, resume=resume, overwrite=overwrite, main=main)
    accelerator.wait_for_everyone()
    set_seed(cfg.seed)
    if main and not resume:
        (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        (out / "command.txt").write_text(" ".join(argv if argv is not None else sys.argv) + "\n")

    # --- models and data
    dtype = _dtype(cfg.dtype)
    tokenizer = _load_tokenizer(cfg.model)
    forget_ex = encode_records(tokenizer, forget_rs, cfg.prompt, cfg.max_length)
    retain_ex = encode_records(tokenizer, retain_rs, cfg.prompt, cfg.max_length) if retain_rs else []
    plan = make_plan(cfg, len(forget_ex), accelerator.num_processes)
    model = _load_model(cfg.model, dtype)
    needs_ref = method.extrapolate or bool(needs & {"ref_forget", "ref_retain", "ref_retain_logits"})
    ref = None
    if needs_ref:
        ref = _load_model(cfg.model, dtype).to(accelerator.device)
        ref.eval().requires_grad_(False)
    t_loaded = time.perf_counter()

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=plan.warmup_steps, num_training_steps=plan.total_steps)
    # The scheduler is stepped by hand once per optimizer step (steps are counted globally), so it
    # is registered for checkpointing rather than prepared (a prepared one steps once per process).
    model, optimizer = accelerator.prepare(model, optimizer)
    progress = Progress()
    momentum = MomentumAverage(cfg.eta, cfg.alpha) if cfg.momentum else None
    accelerator.register_for_checkpointing(scheduler, progress)
    if momentum is not None:
        accelerator.register_for_checkpointing(momentum)
    if resume:
        accelerator.load_state(str(_latest_checkpoint(out)))
        if main:
            _truncate_log(out / "log.jsonl", progress.step)
    momentum_every = cfg.momentum_every or plan.steps_per_epoch
    checkpoint_every = plan.steps_per_epoch if cfg.checkpoint_every is None else cfg.checkpoint_every

    pad_id = tokenizer.pad_token_id
    device = accelerator.device
    rank, world = accelerator.process_index, accelerator.num_processes
    log_path = out / "log.jsonl"
    last_logs: dict[str, float] = {}

    from tqdm.auto import tqdm

    bar = tqdm(total=plan.total_steps, initial=progress.step, desc=f"{method.name}:{objective}", disable=not main)
    with open(log_path, "a") as log_file:
        for epoch in range(plan.epochs):
            micro = epoch_plan(len(forget_ex), len(retain_ex), plan.micro_batch * world, cfg.seed, epoch)
            choices = refusal_choices(len(forget_ex), len(refusals), cfg.seed, epoch) if refusals else None
            groups = [micro[i : i + plan.accumulation] for i in range(0, len(micro), plan.accumulation)]
            for g, group in enumerate(groups):
                step = epoch * plan.steps_per_epoch + g
                if step >= plan.total_steps:
                    break
                if step < progress.step:  # already done before the interruption
                    continue
                sums: dict[str, float] = {}
                for k, (f_idx, r_idx) in enumerate(group):
                    f_idx = _slice_for_process(f_idx, rank, world)
                    forget_b = _to(collate([forget_ex[i] for i in f_idx], pad_id), device)
                    retain_b = None
                    if retain_ex:
                        r_idx = _slice_for_process(r_idx, rank, world)
                        retain_b = _to(collate([retain_ex[i] for i in r_idx], pad_id), device)
                    target_b = None
                    if choices is not None:
                        target_ex = [
                            encode_qa(tokenizer, forget_rs.records[i]["question"], refusals[choices[i]], cfg.prompt, cfg.max_length)
                            for i in f_idx
                        ]
                        target_b = _to(collate(target_ex, pad_id), device)
                    last = k == len(group) - 1
                    with contextlib.nullcontext() if last else accelerator.no_sync(model):
                        with accelerator.autocast():
                            inputs = build_inputs(needs, model, ref, forget_b, retain_b, target_b)
                            loss, logs = spec.fn(inputs, **hp)
                        if not torch.isfinite(loss):
                            raise MoxError(f"loss is {loss.item()} at step {step + 1}; lower lr or check the data")
                        accelerator.backward(loss / len(group))
                    for key, value in logs.items():
                        sums[key] = sums.get(key, 0.0) + value / len(group)
                if cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                progress.step += 1
                last_logs = sums
                if momentum is not None and (progress.step % momentum_every == 0 or progress.step == plan.total_steps):
                    momentum.update(dict(ref.named_parameters()), accelerator.unwrap_model(model).named_parameters())
                if main and (progress.step % cfg.log_every == 0 or progress.step == plan.total_steps):
                    record = {"step": progress.step, "epoch": round(progress.step / plan.steps_per_epoch, 4),
                              "lr": scheduler.get_last_lr()[0], **{k: round(v, 6) for k, v in sums.items()}}
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                bar.set_postfix({k: f"{v:.4g}" for k, v in sums.items()})
                bar.update(1)
                if checkpoint_every and progress.step % checkpoint_every == 0 and progress.step < plan.total_steps:
                    _checkpoint(accelerator, out, progress.step)
                _on_step_end(progress.step)
    bar.close()
    t_trained = time.perf_counter()

    # --- outputs
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    outputs: dict[str, str] = {}
    card = {
        "method": method.name, "objective": objective, "source model": cfg.model, "forget set": cfg.forget,
        "retain set": cfg.retain, "steps": plan.total_steps, "lr": cfg.lr, "seed": cfg.seed,
        **({f"loss.{k}": v for k, v in hp.items()}),
    }
    if main:
        if method.extrapolate and cfg.save_memorized:
            save_model(unwrapped, tokenizer, out / "memorized", shard_size=cfg.shard_size, title="Memorization model θ_mem",
                       card={**card, "role": "θ_mem (trained by gradient descent; extrapolate away from it)"})
            outputs["memorized"] = str(out / "memorized")
        if method.extrapolate:
            if momentum is not None:
                load_average_in_place(unwrapped, momentum)
                card.update({"alpha": cfg.alpha, "momentum": f"eta={cfg.eta}, every {momentum_every} steps, {momentum.updates} updates"})
            else:
                extrapolate_in_place(unwrapped, ref, cfg.alpha)
                card["alpha"] = cfg.alpha
        save_model(unwrapped, tokenizer, out / "model", shard_size=cfg.shard_size, title=f"Unlearned model ({method.name})", card=card)
        outputs["model"] = str(out / "model")
        if not cfg.keep_checkpoints:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
        t_end = time.perf_counter()
        _write_json_atomic(out / "run.json", {
            "config": to_dict(cfg),
            "argv": argv if argv is not None else sys.argv,
            "versions": _versions(),
            "plan": dataclasses.asdict(plan),
            "data": {"forget": len(forget_ex), "retain": len(retain_ex)},
            "timings_s": {"load": round(t_loaded - t_start, 3), "train": round(t_trained - t_loaded, 3),
                          "save": round(t_end - t_trained, 3), "total": round(t_end - t_start, 3)},
            "final_logs": last_logs,
            "outputs": outputs,
        })
    accelerator.wait_for_everyone()
    return out


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (those steps run again)."""
    if path.is_file():
        keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in keep))


def _checkpoint(accelerator, out: Path, step: int) -> None:
    """save_state into a temp folder, rename, then drop older checkpoints (only the latest is kept)."""
    ckdir = out / "checkpoints"
    tmp = ckdir / f".tmp-step-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = ckdir / f"step-{step}"
        os.replace(tmp, final)
        for old in ckdir.glob("step-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _versions() -> dict[str, str]:
    import accelerate
    import transformers

    return {"mox-unlearn": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "python": sys.version.split()[0]}
