"""The shipped accelerate configs (configs/accelerate/*.yaml) parse the way `accelerate launch` reads them.

Offline and GPU-free: the YAML keys, accelerate's own config loader, the launch-argument names of the
FSDP / DeepSpeed sections, and — as far as a CPU machine allows — the environment `accelerate launch`
would hand to the processes, turned back into accelerate's FSDP / DeepSpeed plugins. Nothing here runs
a model under FSDP or DeepSpeed; docs/scaling.md says what is known to work and what is not.
"""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import pytest
import yaml

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
EXPECTED = {  # file -> distributed_type
    "single_gpu.yaml": "NO",
    "multi_gpu.yaml": "MULTI_GPU",
    "fsdp.yaml": "FSDP",
    "deepspeed_zero3.yaml": "DEEPSPEED",
}


def _load(name: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / name).read_text())


def test_every_shipped_config_is_checked():
    assert sorted(p.name for p in CONFIG_DIR.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_common_keys(name):
    cfg = _load(name)
    assert cfg["compute_environment"] == "LOCAL_MACHINE"
    assert cfg["distributed_type"] == EXPECTED[name]
    assert cfg["mixed_precision"] in ("no", "bf16", "fp16")
    assert isinstance(cfg["num_processes"], int) and cfg["num_processes"] >= 1
    assert cfg["use_cpu"] is False and cfg["num_machines"] == 1 and cfg["machine_rank"] == 0
    if cfg["distributed_type"] == "NO":
        assert cfg["num_processes"] == 1
    else:
        assert cfg["num_processes"] > 1
    assert ("fsdp_config" in cfg) == (cfg["distributed_type"] == "FSDP")
    assert ("deepspeed_config" in cfg) == (cfg["distributed_type"] == "DEEPSPEED")


def test_fsdp_section():
    fsdp = _load("fsdp.yaml")["fsdp_config"]
    assert fsdp["fsdp_version"] == 2  # accelerate swaps the optimizer's params; FSDP1 needs the optimizer after wrapping
    assert fsdp["fsdp_reshard_after_forward"] is True  # FSDP2's FULL_SHARD
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    assert fsdp["fsdp_state_dict_type"] in ("SHARDED_STATE_DICT", "FULL_STATE_DICT")
    # true would leave the (unprepared) frozen reference model without weights on ranks > 0
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is False
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    assert LlamaDecoderLayer.__name__ == fsdp["fsdp_transformer_layer_cls_to_wrap"]


def test_deepspeed_section():
    ds = _load("deepspeed_zero3.yaml")["deepspeed_config"]
    assert ds["zero_stage"] == 3
    assert ds["zero3_save_16bit_model"] is True  # accelerator.get_state_dict can then gather the weights
    assert ds["zero3_init_flag"] is False  # true would partition the frozen reference at load time too
    assert ds["gradient_accumulation_steps"] == 1
    assert ds["gradient_clipping"] == 1.0  # the loop's default max_grad_norm; DeepSpeed ignores clip_grad_norm_
    assert ds["offload_optimizer_device"] == ds["offload_param_device"] == "none"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_loads_the_file(name):
    """accelerate's own loader (the one `accelerate launch --config_file` uses) accepts every key, and the
    keys of the FSDP / DeepSpeed sections are launch arguments (unknown ones would be silently ignored)."""
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    config = load_config_from_file(str(CONFIG_DIR / name))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type.value == EXPECTED[name]
    launch_args = launch_command_parser().parse_args(["x.py"])
    for key in [*config.fsdp_config, *config.deepspeed_config]:
        assert hasattr(launch_args, key), f"{name}: {key} is not an `accelerate launch` option"


def _launch_env(name: str):
    """(validated launch args, the environment `accelerate launch` would give each process) — no processes started."""
    launch = pytest.importorskip("accelerate.commands.launch")
    launch_utils = pytest.importorskip("accelerate.utils.launch")
    if not hasattr(launch, "_validate_launch_command"):
        pytest.skip("this accelerate version has no _validate_launch_command")
    args = launch.launch_command_parser().parse_args(["--config_file", str(CONFIG_DIR / name), "-m", "mox_unlearn.cli"])
    args, defaults, mp_from_config = launch._validate_launch_command(args)
    if args.use_deepspeed:  # what launch_command() adds before the DeepSpeed launcher
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = launch_utils.prepare_deepspeed_cmd_env(args)
    elif args.use_fsdp or args.multi_gpu:
        env = launch_utils.prepare_multi_gpu_env(args)
    else:
        env = dict(os.environ)
    return args, env


def test_launch_reads_single_and_multi_gpu():
    args, _ = _launch_env("single_gpu.yaml")
    assert not (args.multi_gpu or args.use_fsdp or args.use_deepspeed) and args.num_processes == 1
    args, env = _launch_env("multi_gpu.yaml")
    assert args.multi_gpu and not (args.use_fsdp or args.use_deepspeed)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_launch_env_builds_the_fsdp_plugin():
    from accelerate.utils import FullyShardedDataParallelPlugin

    args, env = _launch_env("fsdp.yaml")
    assert args.use_fsdp and env["ACCELERATE_USE_FSDP"] == "true"
    with mock.patch.dict(os.environ, env, clear=True):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type.name == _load("fsdp.yaml")["fsdp_config"]["fsdp_state_dict_type"]
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert plugin.cpu_ram_efficient_loading is False


def test_launch_env_builds_the_deepspeed_plugin():
    """DeepSpeedPlugin is accelerate's; building it from the launch environment needs no deepspeed install."""
    from accelerate.utils import DeepSpeedPlugin

    args, env = _launch_env("deepspeed_zero3.yaml")
    assert args.use_deepspeed and env["ACCELERATE_USE_DEEPSPEED"] == "true"
    with mock.patch.dict(os.environ, env, clear=True):
        plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == 3 and plugin.zero3_init_flag is False
    assert plugin.gradient_accumulation_steps == 1 and plugin.gradient_clipping == 1.0
    assert plugin.deepspeed_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
