"""Sharded training under FSDP2: the frozen reference sharded like the policy, Eq. 8 / Eq. 10 on local
shards, and HF folders written from a gathered state dict.

Under FSDP2 (`accelerate launch --config_file configs/accelerate/fsdp.yaml`) every parameter of the
prepared model is a DTensor holding this rank's rows. The reference goes through the same
`fsdp2_prepare_model`, so θ_ref and θ have equal placements on the same mesh: row k of a rank's θ
shard meets row k of its θ_ref shard, and the elementwise Eq. 8 and the momentum average (Eq. 10)
run on each rank's shards with no communication and no full copy anywhere. Only writing a folder
gathers: every rank takes part in `accelerator.get_state_dict`, rank 0 writes.

Without sharding (one process, DDP) every function here is the identity or the plain call.
"""

from __future__ import annotations

import torch

from mox_unlearn.errors import MoxError


def is_sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def check_backend(accelerator, *, lora: bool, alpha_auto: bool) -> None:
    """Refuse the distributed setups the loop does not handle, before anything is loaded or written."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise MoxError(
            "DeepSpeed is not supported by mox unlearn; shard with FSDP2 instead "
            "(configs/accelerate/fsdp.yaml: the same full sharding as ZeRO-3, see docs/scaling.md)"
        )
    if not is_sharded(accelerator):
        return
    if accelerator.state.fsdp_plugin.fsdp_version != 2:
        raise MoxError(
            "FSDP1 is not supported: set fsdp_version: 2 in the accelerate config (configs/accelerate/fsdp.yaml)"
        )
    if lora:
        raise MoxError(
            "lora=true under FSDP is not supported: a LoRA run fits where its base model fits, "
            "use DDP (configs/accelerate/multi_gpu.yaml) or one GPU"
        )
    if alpha_auto:
        raise MoxError(
            "alpha=auto under FSDP is not supported: train with a fixed alpha and save_memorized=true, "
            "then run `mox select-alpha` on OUT/memorized"
        )


def shard_like_policy(accelerator, frozen):
    """A frozen model (θ_ref, WHP's reinforced model) sharded exactly as the policy was; unchanged without FSDP."""
    if frozen is None or not is_sharded(accelerator):
        return frozen
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    return fsdp2_prepare_model(accelerator, frozen).eval()


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a view: writing into it writes the parameter), else the tensor."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def local_parameters(model) -> dict[str, torch.Tensor]:
    """name → this rank's shard of every parameter. FSDP2 keeps a unit that is not resharded after
    forward (accelerate's tail: final norm + lm_head) gathered until a backward, which a frozen model
    never runs, so every unit is resharded first: otherwise θ_ref's tail would be whole and θ's a shard."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
    return {name: local(p) for name, p in model.named_parameters()}


def full_state_dict(accelerator, model) -> dict[str, torch.Tensor] | None:
    """The whole state dict gathered to rank 0's CPU under FSDP (every rank must call this; others get
    an empty dict); None without sharding, where `save_pretrained` reads the model itself."""
    if not is_sharded(accelerator):
        return None
    return accelerator.get_state_dict(model)
