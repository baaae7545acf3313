"""The shipped accelerate configs (configs/accelerate/*.yaml) parse the way `accelerate launch` reads them.

Offline and GPU-free: the YAML keys, accelerate's own config loader, the launch-argument names of the
FSDP section, and — as far as a CPU machine allows — the environment `accelerate launch` would hand to
the processes, turned back into accelerate's FSDP plugin. tests/test_fsdp.py trains under that
environment (2 CPU processes, FSDP2 over gloo).
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
    assert "deepspeed_config" not in cfg  # mox unlearn refuses DeepSpeed (sharding.check_backend)


def test_fsdp_section():
    fsdp = _load("fsdp.yaml")["fsdp_config"]
    assert (
        fsdp["fsdp_version"] == 2
    )  # accelerate swaps the optimizer's params; FSDP1 needs the optimizer after wrapping
    assert fsdp["fsdp_reshard_after_forward"] is True  # FSDP2's FULL_SHARD
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    assert fsdp["fsdp_state_dict_type"] in ("SHARDED_STATE_DICT", "FULL_STATE_DICT")
    # true: transformers loads real weights on rank 0 only; the frozen reference and WHP's reinforced model
    # are used (alternate targets) before they are sharded and broadcast, so they would lack weights there
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is False
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    assert LlamaDecoderLayer.__name__ == fsdp["fsdp_transformer_layer_cls_to_wrap"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_loads_the_file(name):
    """accelerate's own loader (the one `accelerate launch --config_file` uses) accepts every key, and the
    keys of the FSDP section are launch arguments (unknown ones would be silently ignored)."""
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    config = load_config_from_file(str(CONFIG_DIR / name))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type.value == EXPECTED[name]
    launch_args = launch_command_parser().parse_args(["x.py"])
    for key in config.fsdp_config:
        assert hasattr(launch_args, key), f"{name}: {key} is not an `accelerate launch` option"


def _launch_env(name: str):
    """(validated launch args, the environment `accelerate launch` would give each process) — no processes started."""
    launch = pytest.importorskip("accelerate.commands.launch")
    launch_utils = pytest.importorskip("accelerate.utils.launch")
    if not hasattr(launch, "_validate_launch_command"):
        pytest.skip("this accelerate version has no _validate_launch_command")
    args = launch.launch_command_parser().parse_args(["--config_file", str(CONFIG_DIR / name), "-m", "mox_unlearn.cli"])
    args, _, _ = launch._validate_launch_command(args)
    if args.use_fsdp or args.multi_gpu:
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
