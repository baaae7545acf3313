"""Weight spaces: where the trained weights live, and everything that depends on it.

The loop never asks "LoRA or FSDP?": it asks its space. Each space owns the reference model θ_ref, the
choice of trainable weights, the momentum average (Eq. 10), extrapolation (Eq. 8) and the outputs.

  FullSpace     every weight in one process or replicated by DDP; θ_ref is a second, frozen copy
  ShardedSpace  FSDP2: the same, with every model sharded alike; each rank works on its own shards
                and rank 0 writes the gathered result
  LoraSpace     adapters on a frozen base: θ_ref is the same model with the adapter off (no copy),
                θ_mem = θ_ref + BA, and extrapolation and momentum are exact on the factors (lora.py)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mox_unlearn import lora, sharding
from mox_unlearn.errors import MoxError
from mox_unlearn.extrapolation import all_finite, extrapolate_tensor, extrapolate_variant
from mox_unlearn.forward import RefCache
from mox_unlearn.io.atomic import atomic_output_dir
from mox_unlearn.io.cards import write_model_card
from mox_unlearn.io.portable import relative_to
from mox_unlearn.io.shards import parse_size
from mox_unlearn.momentum import MomentumAverage
from mox_unlearn.redact import redact
from mox_unlearn.train.repair import repair
from mox_unlearn.train.setup import select_trainable
from mox_unlearn.variants import Variant, count_layers

if TYPE_CHECKING:
    from mox_unlearn.train.run import TrainingRun


def save_model(
    model,
    tokenizer,
    dest: Path,
    *,
    shard_size: str,
    card: dict[str, Any],
    title: str,
    state_dict: dict[str, torch.Tensor] | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write an ordinary HF folder atomically (temp folder beside `dest`, renamed at the end). `shard_size`
    is read by io.shards.parse_size, the grammar the config checked, and handed over in bytes (whose units
    save_pretrained would parse differently: it refuses 512MiB)."""
    with atomic_output_dir(dest, overwrite=True) as tmp:
        model.save_pretrained(tmp, max_shard_size=parse_size(shard_size), state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        write_model_card(tmp, title=title, fields=redact(card), **(meta or {}))


@torch.no_grad()
def extrapolate_in_place(model, ref, alpha: float, variant: Variant | None = None) -> str | None:
    """θ ← (1+α)θ_ref − αθ for every parameter (tied weights are visited once), computed in fp32; under
    FSDP on each rank's shards, which line up with the reference's (sharding.py). With a `variant`
    (variants.py), only its part of Δ moves (trimming needs whole tensors: not under FSDP, see
    check_variant). Returns the name of a parameter its dtype cannot hold afterwards (inf/NaN), None when
    all are finite (`agree_finite`)."""
    ref_params = sharding.local_parameters(ref)
    params = sharding.local_parameters(model)
    variant = variant or Variant()
    layers = count_layers(params)
    bad = None
    for name, param in params.items():
        if variant.plain:
            param.copy_(extrapolate_tensor(ref_params[name].float(), param.float(), alpha).to(param.dtype))
        else:
            r, m = ref_params[name].float(), param.float()
            param.copy_(extrapolate_variant(r, m, [alpha], variant, name, layers)[0].to(param.dtype))
        if bad is None and not all_finite(param):
            bad = name
    return bad


def check_variant(cfg, sharded: bool, extrapolates: bool = True) -> None:
    """Refuse an extrapolation variant where it cannot be applied exactly, in one line, before training:
    LoRA-MOX extrapolates the adapter's factors (θ_for = θ_ref − α·B·A), which a per-entry mask of the
    merged Δ is not; momentum averages whole θ_for^k (Eq. 10); FSDP ranks hold slices of each tensor, and
    keep_fraction / drop_rate need the whole tensor. only / skip / alpha_by_depth work under FSDP."""
    from mox_unlearn.alpha_selection.curve import auto_variants

    others = auto_variants(cfg)  # refused without alpha=auto
    variant = next((v for v in [cfg.extrapolation, *others] if not v.plain), cfg.extrapolation)
    if variant.plain:
        return
    what = ", ".join(f"{k}={v}" for k, v in variant.fields().items())
    if not extrapolates:
        raise MoxError(f"extrapolation.{what} is set, but method {cfg.method} does not extrapolate (mox and tv do)")
    if cfg.lora:
        raise MoxError(
            f"extrapolation.{what} is not supported with lora=true: extrapolate OUT/memorized with "
            "`mox extrapolate` and the same options instead"
        )
    if cfg.momentum:
        raise MoxError(f"extrapolation.{what} is not supported with momentum=true (Eq. 10 averages whole models)")
    if sharded and variant.trims():
        raise MoxError(
            f"extrapolation.{what} needs whole tensors and is not supported under FSDP; "
            "extrapolate OUT/memorized with `mox extrapolate` instead"
        )


def agree_finite(accelerator, bad: str | None, what: str, *, collective: bool = False) -> None:
    """Refuse to write weights when a non-finite one was found. `collective` (every process writes its
    shards, FSDP): one all-reduce, so that every process stops alike; otherwise only this process writes."""
    flag = torch.tensor([bad is not None], dtype=torch.float32, device=accelerator.device)
    if collective and accelerator.num_processes > 1:
        flag = accelerator.reduce(flag, reduction="sum")
    if flag.item():
        where = f"tensor {bad}" if bad else "a tensor on another process"
        raise MoxError(
            f"{what}: {where} is not finite after extrapolation (the values overflow its dtype); use a smaller α"
        )


@torch.no_grad()
def load_average_in_place(model, momentum: MomentumAverage) -> str | None:
    """The momentum average (Eq. 10) into the model; returns a parameter its dtype cannot hold, like
    extrapolate_in_place."""
    bad = None
    for name, param in sharding.local_parameters(model).items():
        param.copy_(momentum.avg[name].to(param.device, param.dtype))
        if bad is None and not all_finite(param):
            bad = name
    return bad


def frozen(model, device):
    model.to(device).eval().requires_grad_(False)
    return model


def space_for(cfg, accelerator) -> FullSpace:
    if cfg.lora:
        return LoraSpace(cfg, accelerator)
    return ShardedSpace(cfg, accelerator) if sharding.is_sharded(accelerator) else FullSpace(cfg, accelerator)


class FullSpace:
    """Every weight trainable (one process, or replicated by DDP); θ_ref is a second, frozen copy."""

    every_rank_writes = False  # the outputs are written by the main process alone

    def __init__(self, cfg, accelerator):
        self.cfg, self.accelerator = cfg, accelerator

    # ------------------------------------------------------------------ building

    def prepare_model(self, model):
        if self.cfg.gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        return model

    def reference(self, model, load):
        """θ_ref; `load()` reads another copy of the model."""
        return frozen(load(), self.accelerator.device)

    def generator(self, model, ref):
        """The model that generates as θ_ref does (AltPO's alternates)."""
        return ref

    def trainable(self, model, pattern: str | None, hidden_layer: int | None) -> int:
        return select_trainable(model, pattern, hidden_layer)

    def after_prepare(self, run: TrainingRun) -> None:
        """Once accelerate has prepared the policy (FSDP: shard the frozen models alike)."""

    # ------------------------------------------------------------------ momentum

    def new_momentum(self):
        return MomentumAverage(self.cfg.eta, self.cfg.alpha)

    def register_momentum(self, momentum) -> None:
        self.accelerator.register_for_checkpointing(momentum)

    def own_checkpoint_state(self, momentum) -> dict[str, Any]:
        """State each rank saves in a checkpoint for itself (file name -> state); none here."""
        return {}

    def load_own_checkpoint_state(self, checkpoint: Path, momentum) -> None:
        pass

    def update_momentum(self, momentum, model, ref) -> None:
        unwrapped = self.accelerator.unwrap_model(model)
        momentum.update(sharding.local_parameters(ref), sharding.local_parameters(unwrapped).items())

    # ------------------------------------------------------------------ outputs

    def snapshot(self, run: TrainingRun, dest: Path, title: str, card: dict[str, Any]) -> None:
        """The weights being trained as a plain HF folder (every rank gathers under FSDP; the main one writes)."""
        state = sharding.full_state_dict(self.accelerator, run.model)
        if run.main:
            self._save(run, self.accelerator.unwrap_model(run.model), dest, title, card, state)

    def _save(self, run, model, dest, title, card, state) -> None:
        save_model(
            model,
            run.tokenizer,
            dest,
            shard_size=self.cfg.shard_size,
            title=title,
            card=card,
            state_dict=state,
            meta=run.card_meta(),
        )

    def write_outputs(self, run: TrainingRun, card: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
        """OUT/memorized (extrapolating methods) and OUT/model; returns (outputs, extra run.json fields)."""
        cfg, method, out, main = self.cfg, run.method, run.folder.path, run.main
        outputs: dict[str, str] = {}
        extra: dict[str, Any] = {}
        if not (main or self.every_rank_writes):
            return outputs, extra
        unwrapped = self.accelerator.unwrap_model(run.model)
        if method.extrapolate and cfg.save_memorized:
            title = "Memorization model θ_mem" if method.name == "mox" else "Fine-tuned model θ_ft"
            role = "θ_mem (trained by gradient descent; extrapolate away from it)"
            self.snapshot(run, out / "memorized", title, {**card, "role": role})
            outputs["memorized"] = str(out / "memorized")
        if method.extrapolate:
            if run.momentum is not None:
                bad = load_average_in_place(unwrapped, run.momentum)
                agree_finite(
                    self.accelerator, bad, f"momentum average, α = {cfg.alpha:g}", collective=self.every_rank_writes
                )
                card["alpha"] = cfg.alpha
                card["momentum"] = f"eta={cfg.eta}, every {run.momentum_every} steps, {run.momentum.updates} updates"
            else:
                alpha, variant = cfg.alpha, cfg.extrapolation
                if alpha == "auto":
                    alpha, selection = choose_alpha(run, unwrapped)
                    variant = Variant(**selection["variant"]) if selection.get("variant") else variant
                    outputs["alpha_selection"] = selection["report"]
                    card["alpha selection"] = f"auto over {selection['grid']}: {selection['reason']}"
                    extra["alpha_selection"] = selection
                hint = (
                    f" ({out / 'memorized'} is written: `mox extrapolate` it with a smaller α)"
                    if "memorized" in outputs
                    else ""
                )
                bad = extrapolate_in_place(unwrapped, run.reference, alpha, variant)
                agree_finite(self.accelerator, bad, f"α = {alpha:g}{hint}", collective=self.every_rank_writes)
                card["alpha"] = alpha
                if not variant.plain:
                    card["variant"] = variant.fields()
                if cfg.repair_steps:  # training after Eq. 8, opt-in (train/repair.py)
                    info = repair(unwrapped, run.reference, run.retain_ex, run.tokenizer.pad_token_id, cfg)
                    extra["repair"] = info
                    bad = next((n for n, p in unwrapped.named_parameters() if not all_finite(p)), None)
                    agree_finite(self.accelerator, bad, f"repair_steps={cfg.repair_steps}")
                    card["repair"] = (
                        f"{info['steps']} steps of KL(p_ref ‖ p_θ) on the retain set after extrapolation "
                        f"(lr {cfg.lr:g}), {info['seconds']:.1f} s; loss {info['losses'][0]:.4g} -> {info['losses'][-1]:.4g}"
                    )
        self.snapshot(run, out / "model", f"Unlearned model ({method.name})", card)
        outputs["model"] = str(out / "model")
        return outputs, extra


class ShardedSpace(FullSpace):
    """FSDP2: the frozen models are sharded like the policy, and each rank keeps the momentum of its own
    shards (saved by that rank into every checkpoint); every rank gathers, rank 0 writes."""

    every_rank_writes = True  # each rank works on its own shards of the outputs (gathers are collectives)

    def after_prepare(self, run: TrainingRun) -> None:
        # no reference cache: ranks would differ in the forwards they run, and FSDP forwards are collective
        models = run.models
        models.ref = run.reference = sharding.shard_like_policy(self.accelerator, run.reference)
        models.reinforced = sharding.shard_like_policy(self.accelerator, models.reinforced)
        models.cache = RefCache(run.reference, enabled=False) if run.reference is not None else None

    def register_momentum(self, momentum) -> None:
        pass

    def own_checkpoint_state(self, momentum) -> dict[str, Any]:
        if momentum is None:
            return {}
        return {f"momentum-rank{self.accelerator.process_index}.pt": momentum.state_dict()}

    def load_own_checkpoint_state(self, checkpoint: Path, momentum) -> None:
        if momentum is not None:
            path = checkpoint / f"momentum-rank{self.accelerator.process_index}.pt"
            momentum.load_state_dict(torch.load(path, weights_only=True))


class LoraSpace(FullSpace):
    """Adapters on a frozen base (lora.py): θ_ref is the model with its adapter off, θ_mem = θ_ref + BA."""

    def prepare_model(self, model):
        model = super().prepare_model(model)
        if self.cfg.gradient_checkpointing:  # frozen embeddings: checkpointed blocks still need inputs with grad
            model.enable_input_require_grads()
        cfg = self.cfg
        return lora.wrap(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)

    def reference(self, model, load):
        return lora.AdapterOff(model)  # no second copy of the weights

    def generator(self, model, ref):
        return model.to(self.accelerator.device)  # B = 0 before training: still exactly θ_ref

    def trainable(self, model, pattern: str | None, hidden_layer: int | None) -> int:
        return lora.trainable_count(model.parameters())

    def new_momentum(self):
        return lora.LowRankMomentum(self.cfg.eta, self.cfg.alpha)

    def update_momentum(self, momentum, model, ref) -> None:
        momentum.update(self.accelerator.unwrap_model(model))

    def snapshot(self, run: TrainingRun, dest: Path, title: str, card: dict[str, Any]) -> None:
        if run.main:  # θ_ref + the adapter, merged
            model = self.accelerator.unwrap_model(run.model)
            state = lora.merged_state_dict(model, lora.memorized_factors(model))
            self._save(run, model.get_base_model(), dest, title, card, state)

    def write_outputs(self, run: TrainingRun, card: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
        """The adapters, and merged plain folders for θ_mem and the unlearned model."""
        outputs: dict[str, str] = {}
        if not run.main:
            return outputs, {}
        cfg, method, out = self.cfg, run.method, run.folder.path
        model = self.accelerator.unwrap_model(run.model)
        card = {**card, "lora": f"r={cfg.lora_r}, lora_alpha={cfg.lora_alpha}, targets={cfg.lora_targets}"}
        with atomic_output_dir(out / "memorized-adapter", overwrite=True) as tmp:
            model.save_pretrained(str(tmp))
            adapter_card(run, tmp, "Memorization adapter (LoRA): θ_mem = θ_ref + this adapter", card)
        outputs["memorized_adapter"] = str(out / "memorized-adapter")
        mem = lora.memorized_factors(model)
        forget = mem  # a method that is not extrapolated: the unlearned model is θ_ref + the adapter
        if method.extrapolate:
            if cfg.save_memorized:
                title, role = "Memorization model θ_mem (LoRA, merged)", "θ_mem = θ_ref + adapter"
                state = lora.merged_state_dict(model, mem)
                self._save(run, model.get_base_model(), out / "memorized", title, {**card, "role": role}, state)
                outputs["memorized"] = str(out / "memorized")
            if run.momentum is not None:
                forget = run.momentum.forget_factors()
                card["momentum"] = (
                    f"eta={cfg.eta}, {run.momentum.updates} updates, exact over B·A "
                    f"(rank {cfg.lora_r}×{run.momentum.updates})"
                )
            else:
                forget = lora.scaled(mem, -cfg.alpha)
            card["alpha"] = cfg.alpha
            with atomic_output_dir(out / "forget-adapter", overwrite=True) as tmp:
                lora.save_adapter(model, forget, tmp, cfg.model)
                adapter_card(run, tmp, "Unlearning adapter (LoRA): the unlearned model = θ_ref + this adapter", card)
            outputs["forget_adapter"] = str(out / "forget-adapter")
        title = f"Unlearned model ({method.name}, LoRA, merged)"
        state = lora.merged_state_dict(model, forget)
        bad = next((name for name, t in state.items() if not all_finite(t)), None)
        agree_finite(self.accelerator, bad, f"α = {cfg.alpha:g}")  # only the main process writes LoRA outputs
        self._save(run, model.get_base_model(), out / "model", title, card, state)
        outputs["model"] = str(out / "model")
        return outputs, {}


def adapter_card(run: TrainingRun, folder: Path, title: str, card: dict[str, Any]) -> None:
    """An adapter folder's card (library peft, relation adapter) in place of peft's template, and its
    adapter_config.json's base model named as the run's cards name it (a hub id, or relative to the run)."""
    config = folder / "adapter_config.json"
    settings = json.loads(config.read_text())
    settings["base_model_name_or_path"] = relative_to(run.cfg.model, run.folder.path)
    config.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    meta = {**run.card_meta(), "relation": "adapter", "library": "peft"}
    write_model_card(folder, title=title, fields=redact(card), **meta)


def choose_alpha(run: TrainingRun, model) -> tuple[float, dict[str, Any]]:
    """`alpha: auto`: pick α from the trained θ_mem (alpha_selection/); writes OUT/alpha-selection.{json,png}."""
    from mox_unlearn.alpha_selection import select_for_run

    cfg = run.cfg

    def save(m, tok, dest: Path) -> None:
        card = {"role": "scratch copy for alpha selection"}
        save_model(m, tok, dest, shard_size=cfg.shard_size, card=card, title="scratch")

    return select_for_run(cfg, run.folder.path, model, run.reference, run.tokenizer, save)
