"""Runs that stop (issue 9): a real `mox unlearn` process killed with SIGKILL or stopped with Ctrl-C
(SIGINT), then `--resume`d, reaches bitwise the weights of an uninterrupted run (CPU, fp32), with
momentum on so the momentum state, the data order and the RNG state are all carried by the checkpoint."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_unlearn import FAST, weights

from mox_unlearn.cli import main

pytestmark = pytest.mark.slow  # trains, spawns processes or runs a miniature pipeline

# The CLI, with every optimizer step slowed down so that a signal can land before the run ends
# (a tiny-model step takes milliseconds). The pause is after the step's checkpoint, so signals land
# in the pause as well as inside a step or a checkpoint write.
LAUNCHER = """
import os, sys, time
from mox_unlearn.cli import main
from mox_unlearn.train import Callback

class Pause(Callback):
    def on_step_end(self, run):
        time.sleep(float(os.environ.get("MOX_TEST_STEP_PAUSE", "0")))

sys.exit(main(sys.argv[1:], callbacks=[Pause()]))
"""

STEPS = 10
COMMON = ("--method", "mox", "--momentum", "momentum_every=1", "checkpoint_every=1", "--max-steps", str(STEPS))


def _args(tiny_model_dir, qa_files, out: Path, *extra: str) -> list[str]:
    forget, retain = qa_files
    return [
        "unlearn",
        "--model",
        str(tiny_model_dir),
        "--forget",
        str(forget),
        "--retain",
        str(retain),
        "--out",
        str(out),
        *FAST,
        *COMMON,
        *extra,
    ]


def _start(tmp_path: Path, args: list[str], pause: float) -> subprocess.Popen:
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    # the same thread count as this process, so the two runs do the same float reductions
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "MOX_TEST_STEP_PAUSE": str(pause)}
    return subprocess.Popen(
        [sys.executable, str(launcher), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _logged_steps(out: Path) -> list[int]:
    path = out / "log.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass  # a line being written
    return steps


def _wait_for_step(proc: subprocess.Popen, out: Path, step: int, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if step in _logged_steps(out):
            return
        assert proc.poll() is None, f"run ended before step {step}: {proc.stderr.read()[-2000:]}"
        time.sleep(0.002)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def _assert_same_outputs(a: Path, b: Path) -> None:
    for name in ("model", "memorized"):
        wa, wb = weights(a / name), weights(b / name)
        assert wa.keys() == wb.keys()
        different = [k for k in wa if not torch.equal(wa[k], wb[k])]
        assert not different, f"{name}: {len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, qa_files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("interrupt") / "full"
    assert main(_args(tiny_model_dir, qa_files, out)) == 0
    return out


def test_sigkill_at_a_random_step_then_resume_is_bitwise_equal(tiny_model_dir, qa_files, tmp_path, uninterrupted):
    rng = random.Random(9)
    kill_step, delay = rng.randint(2, STEPS - 3), rng.uniform(0.0, 0.06)
    out = tmp_path / "killed"
    proc = _start(tmp_path, _args(tiny_model_dir, qa_files, out), pause=0.03)
    _wait_for_step(proc, out, kill_step)
    time.sleep(delay)  # lands inside a step, a checkpoint write or the pause
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model").exists() and not (out / "run.json").exists()
    assert main(["unlearn", "--resume", "--out", str(out)]) == 0
    _assert_same_outputs(uninterrupted, out)
    assert _logged_steps(out) == list(range(1, STEPS + 1))
    assert not (out / "checkpoints").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_checkpoints_the_last_step_and_says_how_to_resume(
    tiny_model_dir, qa_files, tmp_path, uninterrupted, sig
):
    """checkpoint_every=0: the only checkpoint is the one the interruption writes."""
    out = tmp_path / "stopped"
    proc = _start(tmp_path, _args(tiny_model_dir, qa_files, out, "checkpoint_every=0"), pause=0.05)
    _wait_for_step(proc, out, 3)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    done = _logged_steps(out)[-1]
    assert 3 <= done < STEPS
    resume = f"mox unlearn --resume --out {out.resolve()}"
    assert stderr.count("mox: ") == 1 and f"interrupted after step {done} of {STEPS}" in stderr and resume in stderr
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step-{done}"]
    assert not (out / "model").exists() and not (out / "run.json").exists()
    assert main(resume.split()[1:]) == 0
    _assert_same_outputs(uninterrupted, out)
    assert _logged_steps(out) == list(range(1, STEPS + 1))


# ----------------------------------------------------------------------------- DDP: every process stops together

DDP_LAUNCHER = """
import math, os, signal, sys
from mox_unlearn.cli import main
from mox_unlearn.train import Callback
rank = int(os.environ["RANK"])

class NanAtStep2(Callback):  # a NaN loss at step 2 on this process only
    def on_train_begin(self, run):
        real, calls = run.loss_fn, [0]
        def fn(inputs, **hp):
            loss, logs = real(inputs, **hp)
            calls[0] += 1
            return (loss * math.nan if calls[0] == 2 else loss), logs
        run.loss_fn = fn

class SigintAfterStep2(Callback):  # Ctrl-C reaches this process only, after step 2
    def on_step_end(self, run):
        if run.progress.step == 2:
            os.kill(os.getpid(), signal.SIGINT)

callbacks = []
if os.environ.get("MOX_TEST_NAN") == str(rank):
    callbacks.append(NanAtStep2())
if os.environ.get("MOX_TEST_SIGINT") == str(rank):
    callbacks.append(SigintAfterStep2())
sys.exit(main(sys.argv[1:], callbacks=callbacks))
"""


@pytest.mark.parametrize(
    "case, env, extra, message, checkpoint",
    [
        ("nan", {"MOX_TEST_NAN": "1"}, [], "step 2: loss is nan", "step-1"),
        ("sigint", {"MOX_TEST_SIGINT": "1"}, [], "interrupted after step 3 of 6", "step-3"),
        (
            "collapse",
            {},
            ["--method", "ga", "lr=1e-2", "collapse_probe_every=1", "collapse_action=stop", "collapse_probe_prompts=3"],
            "collapse guard",
            None,
        ),
    ],
    ids=["nan-on-one-process", "sigint-on-one-process", "collapse-probe"],
)
def test_two_processes_take_every_stop_decision_together(
    tiny_model_dir, qa_files, tmp_path, case, env, extra, message, checkpoint
):
    """A NaN, a signal on one process only, or a collapse probe split unevenly (3 prompts, 2 processes):
    both processes stop at the same step with a checkpoint instead of one waiting forever in a collective."""
    forget, retain = qa_files
    launcher = tmp_path / "ddp_launch.py"
    launcher.write_text(DDP_LAUNCHER)
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(launcher),
        "unlearn",
        "--model",
        str(tiny_model_dir),
        "--forget",
        str(forget),
        "--retain",
        str(retain),
        "--out",
        str(out),
        "per_device_batch_size=1",
        "batch_size=2",
        "lr=1e-3",
        "warmup_epochs=0",
        "max_length=64",
        "--max-steps",
        "6",
        "checkpoint_every=0",
        *extra,
    ]
    res = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", **env},
    )
    assert res.returncode != 0 and res.stderr.count(message) == 2, res.stderr[-3000:]
    steps = _logged_steps(out)
    assert [p.name for p in (out / "checkpoints").iterdir()] == [checkpoint or f"step-{steps[-1]}"]
    if case == "collapse":
        assert len(steps) < 6 and all(
            "collapse_top_token_rate" in json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()
        )


def test_collapse_probe_is_refused_under_fsdp(tiny_model_dir, qa_files, tmp_path):
    """Generation under FSDP is a collective per token; processes that stop at different lengths would hang."""
    from test_fsdp import _run

    forget, retain = qa_files
    res = _run(
        [
            "--model",
            str(tiny_model_dir),
            "--forget",
            str(forget),
            "--retain",
            str(retain),
            "--max-steps",
            "1",
            "--out",
            str(tmp_path / "r"),
            "collapse_probe_every=1",
        ],
        cwd=tmp_path,
        fsdp=True,
        check=False,
    )
    assert res.returncode != 0 and "collapse_probe_every under FSDP is not supported" in res.stderr
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- signals outside the training loop

SLOW_EXTRAPOLATE = """
import sys, time
import mox_unlearn.extrapolation as ex
real = ex._extrapolate_one
def slow(*a, **k):
    time.sleep(0.2)  # a tiny model extrapolates in milliseconds: leave time for the signal to land mid-write
    return real(*a, **k)
ex._extrapolate_one = slow
from mox_unlearn.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_extrapolate_says_so_and_leaves_no_temp_folder(tiny_model_dir, tmp_path, sig):
    """Issue 16 class 2: SIGTERM used to kill `mox extrapolate` silently and leave a hidden temp folder of
    model size behind; both signals now unwind like Ctrl-C: one line, exit 130, nothing left."""
    launcher = tmp_path / "launch.py"
    launcher.write_text(SLOW_EXTRAPOLATE)
    out = tmp_path / "sweep"
    argv = ["extrapolate", "--ref", str(tiny_model_dir), "--mem", str(tiny_model_dir), "--alpha", "1", "--alpha", "2"]
    proc = subprocess.Popen(
        [sys.executable, str(launcher), *argv, "--out", str(out)], stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 60
    while not any(p.name.startswith(".sweep.tmp-") for p in tmp_path.iterdir()) and time.time() < deadline:
        time.sleep(0.05)  # the temp folder exists: the signal lands while outputs are being written
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.startswith("mox: ")]
    assert proc.returncode == 130 and lines == ["mox: interrupted; extrapolate wrote no output"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["launch.py"]
