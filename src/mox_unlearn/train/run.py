"""A training run as named phases; `TrainingRun.run()` reads top to bottom."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mox_unlearn import guards, hub, sharding, versions
from mox_unlearn.config import UnlearnConfig, check_config, to_dict
from mox_unlearn.data import collate, encode_records, epoch_plan
from mox_unlearn.errors import MoxError, one_line
from mox_unlearn.forward import Models, RefCache, StepBatch, build_inputs
from mox_unlearn.io.loading import (
    check_attn_implementation,
    check_fits,
    check_model_folder,
    load_model,
    load_tokenizer,
    looks_like_path,
    torch_dtype,
)
from mox_unlearn.io.portable import portable_config, relative_to
from mox_unlearn.methods.dual import DualAscent
from mox_unlearn.methods.targets import TargetAnswers
from mox_unlearn.redact import redact
from mox_unlearn.train import tracking
from mox_unlearn.train.folder import RunFolder, check_checkpoint, data_fingerprint
from mox_unlearn.train.plan import Progress, make_plan, slice_for_process, step_token_norms
from mox_unlearn.train.repair import check_repair
from mox_unlearn.train.setup import default_hidden_layer, load_data, mixed_precision, resolve
from mox_unlearn.train.spaces import check_variant, frozen, space_for

log = logging.getLogger(__name__)


class Callback:
    """Hooks into a run, each given the run itself (tools and tests; training needs none).

    on_train_begin   after the models, optimizer and any resumed state are ready; may wrap `run.loss_fn`
    on_micro_batch   with a global micro-batch's (forget, retain) index lists and this process's share
                     of each (retain only where the run has a retain set)
    on_step_end      after every optimizer step and its after-step work (`run.progress.step` is done)
    """

    def on_train_begin(self, run: TrainingRun) -> None:
        pass

    def on_micro_batch(self, run: TrainingRun, batch: tuple[list[int], ...], mine: tuple[list[int], ...]) -> None:
        pass

    def on_step_end(self, run: TrainingRun) -> None:
        pass


@dataclass
class StepResult:
    logs: dict[str, float]  # the step's loss terms, averaged over its micro-batches
    health: guards.StepHealth


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


class TrainingRun:
    """One `mox unlearn`: check, start, stage, build models, optimizer, restore, train, write outputs.

    The order of what consumes random numbers, what is registered for checkpointing and where processes
    wait for each other is part of the checkpoint format: a run folder written by an earlier version
    resumes to the same weights (tests/test_resume_fixture.py). Change it only on purpose."""

    def __init__(
        self,
        cfg: UnlearnConfig,
        *,
        resume: bool = False,
        overwrite: bool = False,
        argv: list[str] | None = None,
        callbacks: list[Callback] | tuple[Callback, ...] = (),
    ):
        self.cfg, self.resume, self.overwrite = cfg, resume, overwrite
        self.argv = list(argv if argv is not None else sys.argv)
        self.callbacks = list(callbacks)
        self.times: dict[str, float] = {}
        self.last_logs: dict[str, float] = {}
        self.targets: TargetAnswers | None = None

    def run(self) -> Path:
        self.times["start"] = time.perf_counter()
        self.check()
        self.folder: RunFolder | None = None
        try:
            self.start()
            self.run_stage()
            self.build_models()
            self.build_optimizer()
            self.restore()
            self.times["loaded"] = time.perf_counter()
            self.train()
            self.times["trained"] = time.perf_counter()
            self.write_outputs()
        except BaseException:
            if self.folder is not None:
                self.folder.remove_failed_start()  # only a folder this process made, with nothing done in it
            raise
        finally:
            if getattr(self, "trackers", None) is not None:
                self.trackers.close()
            if self.folder is not None:
                self.folder.lock.release()
        return self.folder.path

    # ------------------------------------------------------------------ phases before training

    def check(self) -> None:
        """Config, registries, data, the model folder, its tokenizer and the encoded data against the model's
        config: everything that can fail before OUT is touched."""
        cfg = self.cfg
        check_config(cfg)  # however it was built
        self.resolved = r = resolve(cfg)
        self.method, self.spec, self.hp, self.needs = r.method, r.spec, r.hp, r.needs
        self.loss_fn = r.spec.fn
        tracking.check_log_with(cfg.log_with)
        check_attn_implementation(cfg.attn_implementation)
        if cfg.push_to_hub:
            hub.check_can_push(cfg.push_to_hub)
        self.forget, self.retain = load_data(cfg, r)
        if cfg.model and looks_like_path(cfg.model):  # a bad local model folder fails here, before OUT exists
            check_model_folder(Path(cfg.model).expanduser())
        # the tokenizer and the encoded data, checked against the model's config before anything is written
        self.tokenizer = load_tokenizer(cfg.model)
        self.forget_ex = encode_records(self.tokenizer, self.forget, cfg.prompt, cfg.max_length)
        self.retain_ex = encode_records(self.tokenizer, self.retain, cfg.prompt, cfg.max_length) if self.retain else []
        check_fits(cfg.model, self.tokenizer, max(len(ex["input_ids"]) for ex in self.forget_ex + self.retain_ex))

    def start(self) -> None:
        """accelerate, the backend checks, and OUT claimed with its start files."""
        from accelerate import Accelerator

        cfg = self.cfg
        from accelerate.utils import ProjectConfiguration

        out = Path(cfg.out or ".").expanduser().resolve()
        self.accelerator = acc = Accelerator(
            mixed_precision=mixed_precision(cfg.mixed_precision),
            log_with=tracking.accelerate_log_with(cfg.log_with),
            project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / tracking.TRACKER_DIR)),
        )
        world_env = int(os.environ.get("WORLD_SIZE", "1"))
        if world_env > 1 and acc.num_processes != world_env:
            # Otherwise every launched process would train alone and all would write the same OUT.
            raise MoxError(
                f"launched as {world_env} processes but accelerate sees {acc.num_processes}; "
                "on CPU set ACCELERATE_USE_CPU=1 (torchrun) or use `accelerate launch --multi_gpu` on GPUs"
            )
        sharding.check_backend(acc, lora=cfg.lora, alpha_auto=cfg.alpha == "auto")
        check_variant(cfg, sharding.is_sharded(acc), self.method.extrapolate)
        if cfg.repair_steps and not self.method.extrapolate:
            raise MoxError(f"repair_steps follows extrapolation; method {cfg.method} does not extrapolate")
        check_repair(cfg, acc.num_processes)
        if cfg.collapse_probe_every and sharding.is_sharded(acc):
            # generation under FSDP is a collective per token: processes stopping at different lengths hang
            raise MoxError(
                "collapse_probe_every under FSDP is not supported; probe a saved model with `mox eval`, "
                "or train with DDP / one process"
            )
        self.main = acc.is_main_process
        self.rank, self.world = acc.process_index, acc.num_processes
        self.space = space_for(cfg, acc)
        self.folder = RunFolder.claim(cfg, resume=self.resume, overwrite=self.overwrite, main=self.main)
        acc.wait_for_everyone()
        data = data_fingerprint(forget=self.forget, retain=self.retain)
        if self.resume:
            self.folder.check_same_data(data)  # every process: all refuse alike
        if self.main and not self.resume:
            self.folder.write_start(cfg, self.argv, data)
        elif self.main:
            self.folder.remove_partial_checkpoints()
        self.trackers = tracking.Trackers(acc, cfg.log_with, self.folder.path)  # started after restore()

    def run_stage(self) -> None:
        """The method's step before training (WHP's reinforced model; skipped when it finished before)."""
        from accelerate.utils import set_seed

        stage = self.method.stage
        self.stage_output = stage.run(self) if stage is not None else None
        set_seed(self.cfg.seed)

    def build_models(self) -> None:
        """Tokenizer, data, the policy, θ_ref, the target answers, the trainable weights, extra inputs."""
        cfg, r, space, device = self.cfg, self.resolved, self.space, self.accelerator.device
        dtype = torch_dtype(cfg.dtype)
        self.plan = make_plan(cfg, len(self.forget_ex), self.world)
        self.model = space.prepare_model(load_model(cfg.model, dtype, attn_implementation=cfg.attn_implementation))
        if self.method.extrapolate:  # an only / skip that edits nothing, refused before any training
            from mox_unlearn.alpha_selection.curve import auto_variants

            floats = [n for n, p in self.model.named_parameters() if p.is_floating_point()]
            for variant in [cfg.extrapolation, *auto_variants(cfg)]:
                variant.check_edits(floats, cfg.model)
        needs_ref = (
            self.method.extrapolate
            or (r.targets is not None and r.targets.uses_reference)
            or any(n.startswith("ref_") for n in self.needs)
        )
        self.reference = (
            space.reference(
                self.model, lambda: load_model(cfg.model, dtype, attn_implementation=cfg.attn_implementation)
            )
            if needs_ref
            else None
        )
        if r.targets is not None:
            pool = r.targets.pool(self)
            self.targets = TargetAnswers(r.targets, pool, self.tokenizer, cfg, self.forget)
        uses_hidden = any(n.endswith("_hidden") for n in self.needs)
        hidden_layer = default_hidden_layer(self.model, cfg) if uses_hidden else None
        self.n_trainable = space.trainable(self.model, cfg.trainable or self.method.trainable, hidden_layer)
        extra = self.method.inputs(self) if self.method.inputs else {}
        stage_model = (
            frozen(load_model(str(self.stage_output), dtype, attn_implementation=cfg.attn_implementation), device)
            if self.stage_output
            else None
        )
        ref = self.reference
        self.models = Models(
            model=None,
            ref=ref,
            cache=RefCache(ref, cfg.cache_ref) if ref is not None else None,
            reinforced=stage_model,
            hidden_layer=hidden_layer,
            **extra,
        )

    def build_optimizer(self) -> None:
        """AdamW and its schedule, accelerate's prepare, the momentum, and what a checkpoint holds."""
        from transformers import get_scheduler

        cfg, acc, plan = self.cfg, self.accelerator, self.plan
        self.model.train()
        trained = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = get_scheduler(
            "linear", self.optimizer, num_warmup_steps=plan.warmup_steps, num_training_steps=plan.total_steps
        )
        # The scheduler is stepped by hand once per optimizer step (steps are counted globally), so it
        # is registered for checkpointing rather than prepared (a prepared one steps once per process).
        self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        self.models.model = self.model
        self.space.after_prepare(self)
        self.progress = Progress()
        self.momentum = self.space.new_momentum() if cfg.momentum else None
        acc.register_for_checkpointing(self.scheduler, self.progress)
        # an objective with a dual variable (PDU): its state, updated after each step and checkpointed
        self.dual = DualAscent.from_hp(self.hp, plan.steps_per_epoch) if "dual" in self.needs else None
        if self.dual is not None:
            acc.register_for_checkpointing(self.dual)
            self.models.dual = self.dual
        if self.momentum is not None:
            self.space.register_momentum(self.momentum)

    def restore(self) -> None:
        """--resume: the latest checkpoint's state, and the log cut back to it."""
        cfg, plan = self.cfg, self.plan
        self.saved_at = -1  # step of the checkpoint on disk that holds the current state, if any
        logged_through = None  # the last step the interrupted session logged (and sent to the trackers)
        if self.resume:
            checkpoint = self.folder.latest_checkpoint()
            check_checkpoint(checkpoint)
            try:
                self.accelerator.load_state(str(checkpoint))
                self.space.load_own_checkpoint_state(checkpoint, self.momentum)
            except Exception as e:  # accelerate and torch say it many ways (EOFError, RuntimeError, ...)
                raise MoxError(
                    f"checkpoint {checkpoint} is damaged ({one_line(e)[:160]}); it cannot be resumed: start again "
                    "with --overwrite"
                ) from e
            self.saved_at = self.progress.step
            if self.main:
                logged_through = self.folder.truncate_log(self.progress.step)
        config = portable_config(redact(to_dict(cfg)), self.folder.path)
        resumed_at = self.saved_at if self.resume else None
        self.trackers.start(self.folder.path.name, config, resumed_at=resumed_at, logged_through=logged_through)
        self.momentum_every = cfg.momentum_every or plan.steps_per_epoch
        self.checkpoint_every = plan.steps_per_epoch if cfg.checkpoint_every is None else cfg.checkpoint_every
        self.probes = (
            guards.probe_prompts(self.forget_ex, cfg.collapse_probe_prompts) if cfg.collapse_probe_every else []
        )

    # ------------------------------------------------------------------ the step loop

    def train(self) -> None:
        from tqdm.auto import tqdm

        cfg, plan, progress = self.cfg, self.plan, self.progress
        for cb in self.callbacks:
            cb.on_train_begin(self)
        desc = f"{self.method.name}:{self.resolved.objective}"
        bar = tqdm(total=plan.total_steps, initial=progress.step, desc=desc, disable=not self.main)
        self.bar = bar
        # the bar is closed however the loop ends, so a stop's message starts on a line of its own
        with open(self.folder.log_path, "a") as self.log_file, guards.StopRequest() as stop, bar:
            for epoch in range(plan.epochs):
                micro = epoch_plan(
                    len(self.forget_ex), len(self.retain_ex), plan.micro_batch * self.world, cfg.seed, epoch
                )
                choices = self.targets.choices(epoch) if self.targets is not None else None
                groups = [micro[i : i + plan.accumulation] for i in range(0, len(micro), plan.accumulation)]
                for g, group in enumerate(groups):
                    step = epoch * plan.steps_per_epoch + g
                    if step >= plan.total_steps:
                        break
                    if step < progress.step:  # already done before the interruption
                        continue
                    result = self.train_step(group, choices, stop)
                    self.after_step(result)
                    for cb in self.callbacks:
                        cb.on_step_end(self)

    def micro_batches(self, group, choices: list[int] | None) -> list[StepBatch]:
        """This process's part of each micro-batch of a step, collated on the device."""
        pad_id, device = self.tokenizer.pad_token_id, self.accelerator.device
        batches = []
        for f_all, r_all in group:
            f_idx = slice_for_process(f_all, self.rank, self.world)
            batch = StepBatch(
                forget=_to(collate([self.forget_ex[i] for i in f_idx], pad_id), device),
                forget_keys=[("forget", i) for i in f_idx],
            )
            if self.retain_ex:
                r_idx = slice_for_process(r_all, self.rank, self.world)
                batch.retain = _to(collate([self.retain_ex[i] for i in r_idx], pad_id), device)
            if choices is not None:
                examples = [self.targets.example(i, choices[i]) for i in f_idx]
                batch.target = _to(collate(examples, pad_id), device)
                batch.target_keys = [("target", i, choices[i]) for i in f_idx]
            for cb in self.callbacks:
                both = bool(self.retain_ex)
                cb.on_micro_batch(self, (f_all, r_all) if both else (f_all,), (f_idx, r_idx) if both else (f_idx,))
            batches.append(batch)
        return batches

    def train_step(self, group, choices: list[int] | None, stop: guards.StopRequest) -> StepResult:
        """Forward and backward over the step's micro-batches, then one optimizer step (or a skipped one)."""
        acc, model = self.accelerator, self.model
        rng_before = guards.rng_state()
        logs: dict[str, float] = {}
        batches = self.micro_batches(group, choices)
        norms = step_token_norms(batches, acc)
        bad_loss = None
        for k, batch in enumerate(batches):
            batch.norms = norms
            last = k == len(group) - 1
            with contextlib.nullcontext() if last else acc.no_sync(model):
                with acc.autocast():
                    loss, terms = self.loss_fn(build_inputs(self.needs, self.models, batch), **self.hp)
                if bad_loss is None and not torch.isfinite(loss):
                    bad_loss = loss.item()
                # backward even so: under DDP every process must run the same backward passes
                acc.backward(loss / len(group))
            for key, value in terms.items():
                logs[key] = logs.get(key, 0.0) + value / len(group)
        # the norm of the whole gradient (reduced over processes); max_norm=inf leaves it unchanged
        grad_norm = acc.clip_grad_norm_(model.parameters(), self.cfg.max_grad_norm or math.inf)
        health = guards.agree(acc, bad_loss, grad_norm, stop, check_grad=acc.scaler is None)
        if health.problem is None:
            self.optimizer.step()
            self.scheduler.step()
            if self.dual is not None:  # the step's retain NLL, the same on every process
                nll = acc.reduce(torch.tensor(logs["retain_nll"], device=acc.device), reduction="mean")
                self.dual.update(float(nll), self.progress.step + 1)
        else:
            self.skip_bad_step(health.problem, rng_before)
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.step += 1
        return StepResult(logs, health)

    def after_step(self, result: StepResult) -> None:
        """Momentum, the collapse probe, the log, epoch snapshots, checkpoints, and the stop checks."""
        cfg, plan, step = self.cfg, self.plan, self.progress.step
        self.last_logs = result.logs
        if self.momentum is not None and (step % self.momentum_every == 0 or step == plan.total_steps):
            self.space.update_momentum(self.momentum, self.model, self.reference)
        rate = self.probe() if self.probes and step % cfg.collapse_probe_every == 0 else None
        if self.main:
            self.log_step(result, rate)
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in result.logs.items()})
        self.bar.update(1)
        if cfg.save_epochs and plan.epoch_ends(step):
            k = math.ceil(step / plan.steps_per_epoch)
            card = {"method": self.method.name, "epoch": k, "step": step, **self.card_sources()}
            self.space.snapshot(
                self, self.folder.path / "epochs" / f"epoch-{k}", f"Trained weights after epoch {k}", card
            )
        if self.checkpoint_every and step % self.checkpoint_every == 0 and step < plan.total_steps:
            self.checkpoint_now()
        if rate is not None and rate >= cfg.collapse_threshold:
            self.collapse_alarm(rate)
        if result.health.stop_requested:
            self.checkpoint_now()
            raise guards.RunInterrupted(
                f"interrupted after step {step} of {plan.total_steps}; "
                f"checkpoint saved, resume with: {self.folder.resume_command()}"
            )

    def probe(self) -> float:
        cfg = self.cfg
        rate = guards.collapse_rate(
            self.accelerator.unwrap_model(self.model),
            self.tokenizer,
            self.probes,
            max_new_tokens=cfg.collapse_probe_tokens,
            rank=self.rank,
            world=self.world,
        )
        self.model.train()
        return rate

    def log_step(self, result: StepResult, rate: float | None) -> None:
        """One log.jsonl line every log_every steps, at the end, and at every probe or skipped step."""
        step, problem = self.progress.step, result.health.problem
        if not (step % self.cfg.log_every == 0 or step == self.plan.total_steps or rate is not None or problem):
            return
        record = {
            "step": step,
            "epoch": round(step / self.plan.steps_per_epoch, 4),
            "lr": self.scheduler.get_last_lr()[0],
            **{k: round(v, 6) for k, v in result.logs.items()},
        }
        if problem is not None:
            record["skipped"] = problem
        if rate is not None:
            record["collapse_top_token_rate"] = round(rate, 4)
        self.log_file.write(json.dumps(record) + "\n")
        self.log_file.flush()
        self.trackers.log(record, step)

    def checkpoint_now(self) -> None:
        """A checkpoint of the current state, unless the latest one already is it."""
        if self.saved_at != self.progress.step:
            own = self.space.own_checkpoint_state(self.momentum)
            self.folder.save_checkpoint(self.accelerator, self.progress.step, own)
            self.saved_at = self.progress.step

    def skip_bad_step(self, problem: str, rng_before: dict) -> None:
        """A step whose loss or gradient is not finite is never applied. on_nonfinite=skip drops it (no
        optimizer or scheduler step) up to max_skipped_steps times; otherwise the run stops with a
        checkpoint of the state before the step, RNG state included, so that resuming from it is exactly a
        run in which the step did not fail (an injected NaN in tests; a changed setting in real use)."""
        cfg, progress = self.cfg, self.progress
        step = progress.step + 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.accelerator.scaler is not None:  # fp16: clip_grad_norm_ unscaled the gradients; update the scaler
            self.accelerator.scaler.update()
        if cfg.on_nonfinite == "skip" and progress.skipped < cfg.max_skipped_steps:
            progress.skipped += 1
            if self.main:
                log.warning(
                    f"step {step}: {problem}; step skipped ({progress.skipped} of max_skipped_steps="
                    f"{cfg.max_skipped_steps})"
                )
            return
        guards.set_rng_state(rng_before)
        self.checkpoint_now()
        why = f"{cfg.max_skipped_steps} steps skipped already" if cfg.on_nonfinite == "skip" else "on_nonfinite=stop"
        raise MoxError(
            f"step {step}: {problem} ({why}); stopped with a checkpoint of step {progress.step} (the weights "
            f"before it) in {self.folder.path / 'checkpoints'}: lower lr and start again, or continue with "
            "--resume and on_nonfinite=skip max_skipped_steps=N"
        )

    def collapse_alarm(self, rate: float) -> None:
        """The collapse guard (paper Def. 2.2): greedy answers dominated by one token. GA-style objectives
        drive a model there while their loss keeps improving, so the loss alone does not show it."""
        cfg, step = self.cfg, self.progress.step
        what = (
            f"collapse guard: most-frequent-token rate {rate:.3f} >= collapse_threshold {cfg.collapse_threshold:g} "
            f"at step {step} (greedy answers to {len(self.probes)} forget prompts)"
        )
        if cfg.collapse_action == "warn":
            if self.main:
                log.warning(what)
            return
        self.checkpoint_now()
        raise MoxError(
            f"{what}; stopped with a checkpoint of step {step} in {self.folder.path / 'checkpoints'} "
            "(collapse_action=stop): lower lr or use another method"
        )

    # ------------------------------------------------------------------ outputs

    def write_outputs(self) -> None:
        """The space's outputs (model/, memorized/, adapters), then run.json; the checkpoints go last."""
        cfg, acc = self.cfg, self.accelerator
        acc.wait_for_everyone()
        card = {
            "method": self.method.name,
            "objective": self.resolved.objective,
            **self.card_sources(),
            "steps": self.plan.total_steps,
            "lr": cfg.lr,
            "seed": cfg.seed,
            **({f"loss.{k}": v for k, v in self.hp.items()}),
        }
        with self.folder.writing_outputs():
            outputs, extra = self.space.write_outputs(self, card)
            if self.main:
                self.folder.finish(self.summary(outputs, extra), keep_checkpoints=cfg.keep_checkpoints)
        chosen = (extra.get("alpha_selection") or {}).get("alpha")
        self.trackers.finish(
            {**self.last_logs, **({"alpha": chosen} if chosen is not None else {})}, self.progress.step
        )
        acc.wait_for_everyone()
        # only now: the folder is whole and run.json is written; and after the last barrier, so that other
        # processes neither wait on a long upload (a collective timeout) nor hang when it fails
        if cfg.push_to_hub and self.main:
            url = hub.push_folder(self.folder.path / "model", cfg.push_to_hub, private=not cfg.hub_public)
            log.info(f"pushed {self.folder.path / 'model'} to {url}")

    def card_sources(self) -> dict[str, Any]:
        """The card's source model and data, local ones named relative to the run folder (io/portable.py)."""
        cfg, base = self.cfg, self.folder.path
        rows = {"source model": cfg.model, "forget set": cfg.forget, "retain set": cfg.retain}
        rows = {k: relative_to(v, base) if isinstance(v, str) else v for k, v in rows.items()}
        return {**rows, "paths": "relative to the run folder"}

    def card_meta(self) -> dict[str, Any]:
        """What the cards' YAML header derives from: the source model, the data specs, the method."""
        cfg = self.cfg
        return {"source": cfg.model, "datasets": [cfg.forget, cfg.retain, cfg.holdout], "tags": [self.method.name]}

    def summary(self, outputs: dict[str, str], extra: dict[str, Any]) -> dict[str, Any]:
        """run.json's content."""
        t, end, cache = self.times, time.perf_counter(), self.models.cache
        return {
            "config": to_dict(self.cfg),
            "argv": self.argv,
            "versions": versions(),
            "plan": dataclasses.asdict(self.plan),
            "data": {"forget": len(self.forget_ex), "retain": len(self.retain_ex)},
            "trainable_parameters": self.n_trainable,
            "reference_cache": None
            if cache is None
            else {"enabled": cache.enabled, "hits": cache.hits, "misses": cache.misses},
            "timings_s": {
                "load": round(t["loaded"] - t["start"], 3),
                "train": round(t["trained"] - t["loaded"], 3),
                "save": round(end - t["trained"], 3),
                "total": round(end - t["start"], 3),
            },
            "final_logs": self.last_logs,
            "skipped_steps": self.progress.skipped,
            **extra,
            "outputs": outputs,
        }


def unlearn(
    cfg: UnlearnConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    argv: list[str] | None = None,
    callbacks: list[Callback] | tuple[Callback, ...] = (),
) -> Path:
    """Run an unlearning method end to end and return the run folder (train/folder.py lists its files).

    Args:
        cfg: the run's settings (config.py); checked before anything is loaded or written.
        resume: continue OUT from its latest checkpoint (the config must match the interrupted run's).
        overwrite: replace an existing run folder at OUT.
        argv: the command line recorded in OUT/command.txt (default: sys.argv).
        callbacks: hooks into the run (train.Callback).

    Returns:
        The run folder (OUT).
    """
    return TrainingRun(cfg, resume=resume, overwrite=overwrite, argv=argv, callbacks=callbacks).run()
