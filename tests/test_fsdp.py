"""FSDP2 (full shard) with 2 CPU processes against 1 process: sharded θ_ref, Eq. 8 and Eq. 10 on local
shards, gathered saves, per-rank momentum checkpoints and --resume (src/mox_unlearn/sharding.py).

accelerate enables FSDP only on accelerators: on a CPU its state says MULTI_CPU even with
ACCELERATE_USE_FSDP=true. FSDP_LAUNCHER below turns that state into FSDP after accelerate built it (the
FSDP plugin it read from the environment is kept), so `accelerator.prepare` shards the model with
torch's `fully_shard` over gloo — the same code path `accelerate launch --config_file
configs/accelerate/fsdp.yaml` takes on GPUs, minus NCCL, with the FSDP settings that launch derives
from that file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_accelerate_configs import _launch_env
from test_multiprocess import (
    MAX_ABS_MEMORIZED,
    MAX_ABS_MODEL,
    MAX_RELATIVE,
    _difference,
    _equal_length_qa,
    _write_jsonl,
)

pytestmark = pytest.mark.slow  # trains, spawns processes or runs a miniature pipeline

FSDP_LAUNCHER = """
import os, sys
import accelerate.state as state
from accelerate.utils import DistributedType

built = state.AcceleratorState.__init__

def as_fsdp(self, *args, **kwargs):
    built(self, *args, **kwargs)
    plugin = kwargs.get("fsdp_plugin")
    if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = plugin
        state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP

state.AcceleratorState.__init__ = as_fsdp

from mox_unlearn.cli import main
from mox_unlearn.train import Callback

class DieAfter(Callback):
    def __init__(self, step):
        self.step = step
    def on_step_end(self, run):
        if run.progress.step == self.step:
            os._exit(9)  # like a SIGKILL: no cleanup, no checkpoint beyond the last one

stop = int(os.environ.get("MOX_STOP_AFTER", "0"))
sys.exit(main(sys.argv[1:], callbacks=[DieAfter(stop)] if stop else []))
"""


def _fsdp_env() -> dict[str, str]:
    """The FSDP variables `accelerate launch --config_file configs/accelerate/fsdp.yaml` exports."""
    _, env = _launch_env("fsdp.yaml")
    fsdp = {k: v for k, v in env.items() if k.startswith("FSDP_") or k == "ACCELERATE_USE_FSDP"}
    assert fsdp["FSDP_VERSION"] == "2" and fsdp["ACCELERATE_USE_FSDP"] == "true", fsdp
    return fsdp


def _run(
    args: list[str], *, cwd: Path, fsdp: bool, env_extra: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    if fsdp:
        launcher = cwd / "fsdp_launch.py"
        launcher.write_text(FSDP_LAUNCHER)
        env.update(_fsdp_env(), ACCELERATE_USE_CPU="1")
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(launcher)]
    else:
        head = [sys.executable, "-m", "mox_unlearn.cli"]
    res = subprocess.run([*head, "unlearn", *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    if check and res.returncode != 0:
        raise RuntimeError(f"mox unlearn failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return res


@pytest.fixture
def equal_qa(tokenizer, tmp_path) -> list[str]:
    qa = _equal_length_qa(tokenizer, 16)
    forget = _write_jsonl(tmp_path / "forget.jsonl", qa[:8])
    retain = _write_jsonl(tmp_path / "retain.jsonl", qa[8:])
    return ["--forget", str(forget), "--retain", str(retain)]


def _assert_close(a: Path, b: Path, ref: Path, subs=("memorized", "model")) -> None:
    for sub in subs:
        bound = MAX_ABS_MODEL if sub == "model" else MAX_ABS_MEMORIZED
        max_abs, rel = _difference(a / sub, b / sub, ref)
        assert max_abs <= bound and rel <= MAX_RELATIVE, f"{sub}: max |Δ| {max_abs:.3g}, relative {rel:.3g}"


@pytest.mark.parametrize("method", ["mox", "npo"])
def test_fsdp_matches_one_process(tiny_model_dir, equal_qa, tmp_path, method):
    """mox: θ_mem gathered from shards, Eq. 8 on local shards of θ and θ_ref (a reference left whole
    while θ is sharded fails with a shape mismatch); npo: the sharded reference's forward in the loss
    (with the reference cache off). Per-epoch folders come from gathers too."""
    common = [
        "--model",
        str(tiny_model_dir),
        *equal_qa,
        "--method",
        method,
        "batch_size=4",
        "max_steps=4",
        "lr=1e-3",
        "seed=0",
        "epochs=2",
        "save_epochs=true",
    ]
    _run([*common, "--out", str(tmp_path / "fsdp"), "per_device_batch_size=2"], cwd=tmp_path, fsdp=True)
    _run([*common, "--out", str(tmp_path / "one"), "per_device_batch_size=4"], cwd=tmp_path, fsdp=False)
    _assert_close(
        tmp_path / "fsdp",
        tmp_path / "one",
        tiny_model_dir,
        subs=("memorized", "model") if method == "mox" else ("model",),
    )
    for k in (1, 2):
        max_abs, _ = _difference(
            tmp_path / "fsdp" / "epochs" / f"epoch-{k}", tmp_path / "one" / "epochs" / f"epoch-{k}", tiny_model_dir
        )
        assert max_abs <= MAX_ABS_MEMORIZED, f"epoch-{k}: max |Δ| {max_abs:.3g}"
    run = json.loads((tmp_path / "fsdp" / "run.json").read_text())
    if method == "npo":
        assert run["reference_cache"]["enabled"] is False


def test_fsdp_momentum_killed_and_resumed_matches_one_process(tiny_model_dir, equal_qa, tmp_path):
    """Momentum under FSDP: each rank averages its own shards and checkpoints them itself
    (momentum-rank{R}.pt). A run killed after step 3 (checkpoint at step 2) and resumed reaches what an
    uninterrupted 1-process run reaches."""
    common = [
        "--model",
        str(tiny_model_dir),
        *equal_qa,
        "--method",
        "mox",
        "momentum=true",
        "batch_size=4",
        "max_steps=4",
        "lr=1e-3",
        "seed=0",
        "epochs=2",
        "momentum_every=1",
        "checkpoint_every=2",
    ]
    out = tmp_path / "fsdp"
    killed = _run(
        [*common, "--out", str(out), "per_device_batch_size=2"],
        cwd=tmp_path,
        fsdp=True,
        env_extra={"MOX_STOP_AFTER": "3"},
        check=False,
    )
    assert killed.returncode != 0 and not (out / "model").exists()
    assert sorted(p.name for p in (out / "checkpoints" / "step-2").glob("momentum-rank*.pt")) == [
        "momentum-rank0.pt",
        "momentum-rank1.pt",
    ]
    _run(["--resume", "--out", str(out)], cwd=tmp_path, fsdp=True)
    _run([*common, "--out", str(tmp_path / "one"), "per_device_batch_size=4"], cwd=tmp_path, fsdp=False)
    _assert_close(out, tmp_path / "one", tiny_model_dir)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["lora=true"], "lora=true under FSDP is not supported"),
        (["alpha=auto", "holdout=HOLDOUT"], "alpha=auto under FSDP is not supported"),
    ],
)
def test_fsdp_refuses_what_it_does_not_handle(tiny_model_dir, equal_qa, tmp_path, extra, message):
    extra = [e.replace("HOLDOUT", equal_qa[3]) for e in extra]  # records the forget set does not hold
    res = _run(
        [
            "--model",
            str(tiny_model_dir),
            *equal_qa,
            "--method",
            "mox",
            "max_steps=1",
            "--out",
            str(tmp_path / "r"),
            *extra,
        ],
        cwd=tmp_path,
        fsdp=True,
        check=False,
    )
    assert res.returncode != 0 and message in res.stderr
    assert not (tmp_path / "r").exists()


def test_deepspeed_and_fsdp1_are_refused_with_one_line():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from mox_unlearn.errors import MoxError
    from mox_unlearn.sharding import check_backend

    deepspeed = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED)
    with pytest.raises(MoxError, match="DeepSpeed is not supported"):
        check_backend(deepspeed, lora=False, alpha_auto=False)
    fsdp1 = SimpleNamespace(
        distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=1))
    )
    with pytest.raises(MoxError, match="fsdp_version: 2"):
        check_backend(fsdp1, lora=False, alpha_auto=False)
    check_backend(SimpleNamespace(distributed_type=DistributedType.MULTI_GPU), lora=True, alpha_auto=True)
