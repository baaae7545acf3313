"""Numerical failure, collapse and safe outputs (issue 9) on the tiny model, in process: a non-finite loss
or gradient stops (or skips) with a checkpoint of the step before; the collapse guard fires on GA at a
high lr and not on MOX; a full disk while writing leaves the previous state usable; --overwrite never
deletes an input; a resume survives a cut log line and a half-written checkpoint."""

from __future__ import annotations

import errno
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_unlearn import StopAt, run, weights

from mox_unlearn import train
from mox_unlearn.cli import main
from mox_unlearn.train import spaces

MOMENTUM = ("--momentum", "momentum_every=1")


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _same_weights(a: Path, b: Path) -> None:
    for name in ("model", "memorized"):
        wa, wb = weights(a / name), weights(b / name)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name


class Poison(train.Callback):
    """Make the objective's value (how="loss") or only its gradient (how="grad") non-finite at the given
    optimizer steps (one micro-batch a step in these runs); the forward values stay those of a real run."""

    def __init__(self, steps: set[int], how: str = "loss"):
        self.steps, self.how, self.calls = steps, how, 0

    def on_train_begin(self, run) -> None:
        real = run.loss_fn

        def fn(inputs, **hp):
            loss, logs = real(inputs, **hp)
            self.calls += 1
            if self.calls in self.steps:
                if self.how == "loss":
                    loss = loss * math.nan
                else:  # d sqrt(x)/dx at x = 0 is inf: the value stays finite, the gradient does not
                    loss = loss + torch.sqrt(loss - loss.detach())
            return loss, logs

        run.loss_fn = fn


@pytest.fixture(scope="module")
def five_steps(tiny_model_dir, qa_files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("guards") / "full"
    assert run(tiny_model_dir, qa_files, out, "--max-steps", "5", *MOMENTUM) == 0
    return out


# ----------------------------------------------------------------------------- non-finite loss / gradient


@pytest.mark.parametrize("how, problem", [("loss", "loss is nan"), ("grad", "gradient norm is ")])
def test_nonfinite_step_stops_with_a_checkpoint_of_the_step_before(
    tiny_model_dir, qa_files, tmp_path, monkeypatch, capsys, five_steps, how, problem
):
    out = tmp_path / "bad"
    poison = [Poison({3}, how)]
    assert (
        run(tiny_model_dir, qa_files, out, "--max-steps", "5", *MOMENTUM, "checkpoint_every=0", callbacks=poison) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("mox: error: step 3: " + problem) and "checkpoint of step 2 (the weights before it)" in err
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-2"]
    assert [r["step"] for r in _log(out)] == [1, 2] and not (out / "model").exists()

    # the checkpoint holds the weights after step 2, as a run interrupted right after step 2 saved them
    cut = tmp_path / "cut"
    assert (
        run(tiny_model_dir, qa_files, cut, "--max-steps", "5", *MOMENTUM, "checkpoint_every=1", callbacks=[StopAt(2)])
        == 130
    )
    a, b = (
        load_file(out / "checkpoints/step-2/model.safetensors"),
        load_file(cut / "checkpoints/step-2/model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # resuming it (the fault was one-off) is exactly the run in which step 3 never failed: RNG, optimizer,
    # scheduler and momentum state are those from before the step
    monkeypatch.undo()
    assert main(["unlearn", "--resume", "--out", str(out)]) == 0
    _same_weights(five_steps, out)


def test_skip_drops_the_step_up_to_max_skipped_steps_then_stops(
    tiny_model_dir, qa_files, tmp_path, monkeypatch, capsys, five_steps
):
    out = tmp_path / "skip"
    skip = ("on_nonfinite=skip", "max_skipped_steps=1")
    assert run(tiny_model_dir, qa_files, out, "--max-steps", "5", *MOMENTUM, *skip, callbacks=[Poison({3})]) == 0
    assert "mox: warning: step 3: loss is nan; step skipped (1 of max_skipped_steps=1)" in capsys.readouterr().err
    log = _log(out)
    assert log[2]["skipped"] == "loss is nan" and [r["step"] for r in log] == [1, 2, 3, 4, 5]
    assert log[2]["lr"] == log[1]["lr"]  # no scheduler step either
    assert json.loads((out / "run.json").read_text())["skipped_steps"] == 1
    assert not torch.equal(weights(out / "model")["lm_head.weight"], weights(five_steps / "model")["lm_head.weight"])

    assert run(tiny_model_dir, qa_files, tmp_path / "twice", "--max-steps", "5", *skip, callbacks=[Poison({2, 4})]) == 2
    err = capsys.readouterr().err
    assert "step 4: loss is nan (1 steps skipped already); stopped with a checkpoint of step 3" in err
    assert (tmp_path / "twice" / "checkpoints" / "step-3").is_dir()


# ----------------------------------------------------------------------------- collapse guard (Def. 2.2)


def test_collapse_guard_stops_gradient_ascent_at_a_high_lr(tiny_model_dir, qa_files, tmp_path, capsys):
    out = tmp_path / "ga"
    code = run(
        tiny_model_dir,
        qa_files,
        out,
        "--method",
        "ga",
        "lr=1e-2",
        "--max-steps",
        "10",
        "collapse_probe_every=1",
        "collapse_action=stop",
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "mox: error: collapse guard: most-frequent-token rate" in err and "collapse_action=stop" in err
    rates = [r["collapse_top_token_rate"] for r in _log(out)]
    stopped = len(rates)
    assert rates[-1] >= 0.5 and all(r < 0.5 for r in rates[:-1]) and stopped < 10
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step-{stopped}"]


def test_collapse_probe_is_logged_and_quiet_for_mox(tiny_model_dir, qa_files, tmp_path, capsys):
    out = tmp_path / "mox"
    assert (
        run(
            tiny_model_dir,
            qa_files,
            out,
            "--max-steps",
            "6",
            "collapse_probe_every=2",
            "log_every=3",
            "collapse_action=stop",
        )
        == 0
    )
    assert "collapse guard" not in capsys.readouterr().err
    log = _log(out)
    assert [r["step"] for r in log] == [2, 3, 4, 6]  # probe steps are logged whatever log_every says
    rates = [r["collapse_top_token_rate"] for r in log if "collapse_top_token_rate" in r]
    assert len(rates) == 3 and all(0 < r < 0.5 for r in rates)


def test_collapse_guard_warns_and_goes_on(tiny_model_dir, qa_files, tmp_path, capsys):
    out = tmp_path / "warn"
    assert (
        run(
            tiny_model_dir,
            qa_files,
            out,
            "--method",
            "ga",
            "lr=1e-2",
            "--max-steps",
            "3",
            "collapse_probe_every=1",
            "collapse_threshold=0.01",
        )
        == 0
    )
    assert capsys.readouterr().err.count("mox: warning: collapse guard: most-frequent-token rate") == 3
    assert (out / "model").is_dir()


# ----------------------------------------------------------------------------- safe outputs


def _full_disk_when(monkeypatch, target: str, what: str) -> None:
    """Raise ENOSPC from the model card writer (the last file of a folder) of the `target` folder."""
    real = spaces.write_model_card

    def write_model_card(tmp, **kw):
        if Path(tmp).name.startswith(f".{target}.tmp-"):
            (Path(tmp) / "partial.bin").write_bytes(b"\0" * 100)  # something half-written first
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
        return real(tmp, **kw)

    monkeypatch.setattr(spaces, what, write_model_card)


def test_full_disk_while_writing_the_model_keeps_the_checkpoint(
    tiny_model_dir, qa_files, tmp_path, monkeypatch, capsys, five_steps
):
    out = tmp_path / "full-disk"
    _full_disk_when(monkeypatch, "model", "write_model_card")
    assert run(tiny_model_dir, qa_files, out, "--max-steps", "5", *MOMENTUM, "checkpoint_every=1") == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith("mox: error: writing the outputs failed: No space left on device")
    assert f"checkpoint step-4 kept: free space and run `mox unlearn --resume --out {out}`" in err
    assert not (out / "model").exists() and not (out / "run.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    monkeypatch.undo()
    assert main(["unlearn", "--resume", "--out", str(out)]) == 0
    _same_weights(five_steps, out)


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(
    tiny_model_dir, qa_files, tmp_path, monkeypatch, capsys, five_steps
):
    from accelerate import Accelerator

    out = tmp_path / "full-disk"
    real = Accelerator.save_state

    def save_state(self, output_dir=None, **kw):
        path = real(self, output_dir, **kw)
        if Path(output_dir).name == ".tmp-step-3":
            raise OSError(errno.ENOSPC, "No space left on device")
        return path

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    assert run(tiny_model_dir, qa_files, out, "--max-steps", "5", *MOMENTUM, "checkpoint_every=1") == 2
    err = capsys.readouterr().err
    assert "writing checkpoint step-3 failed (No space left on device); the checkpoint step-2 is kept" in err
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-2"]
    monkeypatch.undo()
    assert main(["unlearn", "--resume", "--out", str(out)]) == 0
    _same_weights(five_steps, out)


def test_resume_survives_a_cut_log_line_and_a_half_written_checkpoint(
    tiny_model_dir, qa_files, tmp_path, monkeypatch, five_steps
):
    """What a kill can leave: the last log line cut short, a checkpoint temp folder never renamed."""
    out = tmp_path / "cut"
    assert (
        run(tiny_model_dir, qa_files, out, "--max-steps", "5", *MOMENTUM, "checkpoint_every=1", callbacks=[StopAt(2)])
        == 130
    )
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 3, "epoch": 1.5, "lo')
    (out / "checkpoints" / ".tmp-step-3").mkdir()
    (out / "checkpoints" / ".tmp-step-3" / "model.safetensors").write_bytes(b"\0" * 10)
    assert main(["unlearn", "--resume", "--out", str(out)]) == 0
    _same_weights(five_steps, out)
    assert [r["step"] for r in _log(out)] == [1, 2, 3, 4, 5]


def test_overwrite_never_deletes_an_input(tiny_model_dir, qa_files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert run(tiny_model_dir, qa_files, out, "--max-steps", "1") == 0
    forget = out / "forget.jsonl"
    forget.write_text(qa_files[0].read_text())
    code = main(
        [
            "unlearn",
            "--model",
            str(tiny_model_dir),
            "--forget",
            str(forget),
            "--retain",
            str(qa_files[1]),
            "--out",
            str(out),
            "--max-steps",
            "1",
            "--overwrite",
        ]
    )
    assert code == 2 and f"holds input {forget}, which --overwrite would delete" in capsys.readouterr().err
    assert forget.is_file() and (out / "model").is_dir()
    # the same input named from the home folder (as a YAML config or key=value leaves "~" unexpanded)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path / "run")  # where a "~" taken literally would appear
    home = ["--retain", str(qa_files[1]), "--max-steps", "1", "--overwrite"]
    code = main(["unlearn", "--model", str(tiny_model_dir), "--out", "~/run", *home, "forget=~/run/forget.jsonl"])
    assert code == 2 and "which --overwrite would delete" in capsys.readouterr().err
    assert forget.is_file() and not (tmp_path / "run" / "~").exists()
    for inside in (tiny_model_dir, tiny_model_dir / "sub"):
        assert run(tiny_model_dir, qa_files, inside, "--max-steps", "1", "--overwrite") == 2
        assert "overlaps the input model folder" in capsys.readouterr().err
    assert (tiny_model_dir / "config.json").is_file()


# ----------------------------------------------------------------------------- guards.py pieces


def test_stop_request_defers_the_first_signal_and_forces_on_a_late_second():
    import os
    import signal

    from mox_unlearn.guards import StopRequest

    before = signal.getsignal(signal.SIGINT)
    with StopRequest(force_after=60) as stop:
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: remembered for the step's end
        os.kill(os.getpid(), signal.SIGINT)  # torchrun's forwarded copy of the same Ctrl-C: ignored
        assert stop.requested and stop.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(KeyboardInterrupt), StopRequest(force_after=0):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # a second one later: interrupt at once


def test_probe_prompts_are_question_prefixes_or_text_beginnings():
    from mox_unlearn.guards import probe_prompts

    qa = {"input_ids": [1, 5, 6, 7, 8, 2], "labels": [-100, -100, -100, 7, 8, 2]}
    text = {"input_ids": list(range(1, 41)), "labels": list(range(1, 41))}
    assert probe_prompts([qa, text, qa], 2) == [[1, 5, 6], list(range(1, 17))]
