"""`mox unlearn` end to end on a tiny random Llama: outputs, equations, momentum, resume, refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from mox_unlearn import train
from mox_unlearn.cli import main
from mox_unlearn.momentum import MomentumAverage

FAST = ["per_device_batch_size=2", "batch_size=2", "lr=1e-3", "warmup_epochs=0", "max_length=64"]


def weights(folder) -> dict[str, torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class StopAt(train.Callback):
    """Ctrl-C right after optimizer step `step` (after its checkpoint): an interrupted run."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, run) -> None:
        if run.progress.step == self.step:
            raise KeyboardInterrupt


def run(tiny_model_dir, qa_files, out, *extra: str, callbacks=()) -> int:
    forget, retain = qa_files
    return main(
        [
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
            *extra,
        ],
        callbacks=callbacks,
    )


@pytest.fixture(scope="module")
def three_steps(tiny_model_dir, qa_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "mox"
    assert run(tiny_model_dir, qa_files, out, "--max-steps", "3", "--alpha", "2") == 0
    return out


def test_three_step_run_writes_a_loadable_changed_model(three_steps, tiny_model_dir):
    ref, forget = weights(tiny_model_dir), weights(three_steps / "model")
    assert ref.keys() == forget.keys()
    assert any(not torch.equal(ref[k], forget[k]) for k in ref)
    assert (three_steps / "model" / "README.md").read_text().count("mox") >= 1
    assert (three_steps / "model" / "tokenizer.json").is_file()
    run_info = json.loads((three_steps / "run.json").read_text())
    assert run_info["plan"]["total_steps"] == 3 and run_info["config"]["alpha"] == 2.0
    assert set(run_info["final_logs"]) >= {"loss", "ce", "kl"}
    log = [json.loads(line) for line in (three_steps / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert (three_steps / "config.yaml").is_file() and "unlearn" in (three_steps / "command.txt").read_text()
    assert not (three_steps / "checkpoints").exists()  # removed after a finished run


def test_forget_model_is_the_extrapolation_of_the_memorized_model(three_steps, tiny_model_dir):
    ref, mem, forget = weights(tiny_model_dir), weights(three_steps / "memorized"), weights(three_steps / "model")
    for k in ref:
        assert torch.allclose(forget[k], 3 * ref[k] - 2 * mem[k], atol=1e-6), k  # α = 2: (1+α)ref − α·mem
    assert any(not torch.equal(ref[k], mem[k]) for k in ref)


def test_memorize_lowers_forget_loss_and_the_log_shows_it(tiny_model_dir, qa_files, tmp_path):
    out = tmp_path / "r"
    assert run(tiny_model_dir, qa_files, out, "--max-steps", "6", "loss.lambda_kl=0") == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["ce"] < log[0]["ce"]


def test_po_objective_targeted_and_momentum_run(tiny_model_dir, qa_files, tmp_path):
    out = tmp_path / "po"
    assert (
        run(
            tiny_model_dir,
            qa_files,
            out,
            "--objective",
            "memorize_po",
            "--targeted",
            "--momentum",
            "--max-steps",
            "2",
            "momentum_every=1",
        )
        == 0
    )
    info = json.loads((out / "run.json").read_text())
    assert {"po", "kl", "target"} <= set(info["final_logs"])
    assert "momentum" in (out / "model" / "README.md").read_text()


def test_momentum_with_eta_one_is_the_last_extrapolation(tiny_model_dir, qa_files, tmp_path):
    out = tmp_path / "m"
    assert run(tiny_model_dir, qa_files, out, "--momentum", "eta=1", "--max-steps", "2", "--alpha", "3") == 0
    ref, mem, forget = weights(tiny_model_dir), weights(out / "memorized"), weights(out / "model")
    for k in ref:
        assert torch.allclose(forget[k], 4 * ref[k] - 3 * mem[k], atol=1e-6), k


def test_momentum_average_hand_values():
    ref = {"w": torch.tensor([1.0, 1.0])}
    avg = MomentumAverage(eta=0.5, alpha=1.0)
    avg.update(ref, [("w", torch.tensor([0.0, 2.0]))])  # θ_for = 2·ref − θ = (2, 0): first update copies
    assert avg.avg["w"].tolist() == [2.0, 0.0]
    avg.update(ref, [("w", torch.tensor([1.0, 1.0]))])  # θ_for = (1, 1): ½(1,1) + ½(2,0)
    assert avg.avg["w"].tolist() == [1.5, 0.5] and avg.updates == 2
    restored = MomentumAverage()
    restored.load_state_dict(avg.state_dict())
    assert restored.eta == 0.5 and torch.equal(restored.avg["w"], avg.avg["w"])


@pytest.mark.slow
def test_resume_after_interruption_reaches_the_same_weights(tiny_model_dir, qa_files, tmp_path, monkeypatch):
    common = ("--max-steps", "4", "checkpoint_every=1", "--momentum", "momentum_every=2")
    assert run(tiny_model_dir, qa_files, tmp_path / "full", *common) == 0
    assert run(tiny_model_dir, qa_files, tmp_path / "cut", *common, callbacks=[StopAt(2)]) == 130
    assert not (tmp_path / "cut" / "model").exists() and not (tmp_path / "cut" / "run.json").exists()
    monkeypatch.undo()
    assert main(["unlearn", "--resume", "--out", str(tmp_path / "cut")]) == 0
    for name in ("model", "memorized"):
        a, b = weights(tmp_path / "full" / name), weights(tmp_path / "cut" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_resume_refuses_a_changed_config(tiny_model_dir, qa_files, tmp_path, monkeypatch, capsys):
    assert (
        run(tiny_model_dir, qa_files, tmp_path / "r", "--max-steps", "3", "checkpoint_every=1", callbacks=[StopAt(1)])
        == 130
    )
    assert (
        run(tiny_model_dir, qa_files, tmp_path / "r", "--max-steps", "3", "checkpoint_every=1", "lr=0.5", "--resume")
        == 2
    )
    assert "different config" in capsys.readouterr().err
    # the short form takes overrides too: they used to be dropped silently
    assert main(["unlearn", "--resume", "--out", str(tmp_path / "r"), "lr=0.5"]) == 2
    assert "different config" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, message",
    [
        (["--method", "forgetful"], "unknown method 'forgetful'; valid methods: altpo, ceu, dpo, finetune"),
        (["--objective", "npo"], "takes objectives memorize, memorize_po"),
        (["--alpha", "-1"], "alpha must be > 0"),
        (["loss.temperature=2"], "unknown loss settings"),
        (["batch_size=3"], "not a multiple of per_device_batch_size"),
    ],
)
def test_bad_settings_give_one_line_errors(tiny_model_dir, qa_files, tmp_path, capsys, change, message):
    assert run(tiny_model_dir, qa_files, tmp_path / "o", *change) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0
    assert not (tmp_path / "o" / "model").exists()


def test_empty_forget_set_fails_before_any_model_is_loaded(tmp_path, capsys):
    empty = tmp_path / "forget.jsonl"
    empty.write_text("")
    code = main(
        ["unlearn", "--model", str(tmp_path / "no-such-model"), "--forget", str(empty), "--out", str(tmp_path / "o")]
    )
    assert code == 2 and "forget set is empty" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_record_names_file_and_line(tiny_model_dir, qa_files, tmp_path, capsys):
    bad = tmp_path / "forget.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{"question": "q2"}\n')
    code = main(
        [
            "unlearn",
            "--model",
            str(tiny_model_dir),
            "--forget",
            str(bad),
            "--retain",
            str(qa_files[1]),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "forget.jsonl:2" in err and "answer" in err


def test_output_folder_rules(tiny_model_dir, qa_files, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert run(tiny_model_dir, qa_files, taken) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert run(tiny_model_dir, qa_files, taken, "--overwrite") == 2
    assert "not a mox run folder" in capsys.readouterr().err
    assert (taken / "notes.txt").read_text() == "mine"
    assert run(tiny_model_dir, qa_files, tiny_model_dir / "out") == 2
    assert "overlaps the input model" in capsys.readouterr().err
    assert main(["unlearn", "--resume", "--out", str(tmp_path / "never-ran")]) == 2


def test_overwrite_replaces_an_earlier_run(three_steps, tiny_model_dir, qa_files, tmp_path):
    out = tmp_path / "again"
    assert run(tiny_model_dir, qa_files, out, "--max-steps", "1", "--no-save-memorized") == 0
    assert not (out / "memorized").exists()
    assert run(tiny_model_dir, qa_files, out, "--max-steps", "1", "--overwrite") == 0
    assert (out / "memorized").is_dir()


def test_console_script_help_shows_examples():
    for args in ([], ["unlearn"], ["extrapolate"]):
        res = subprocess.run([sys.executable, "-m", "mox_unlearn.cli", *args, "--help"], capture_output=True, text=True)
        assert res.returncode == 0 and "example" in res.stdout


def test_models_tiny_builds_a_loadable_model(tmp_path):
    out = tmp_path / "tiny"
    assert (
        main(
            [
                "models",
                "tiny",
                "--data",
                "examples/forget.jsonl",
                "--data",
                "examples/retain.jsonl",
                "--out",
                str(out),
                "--vocab-size",
                "400",
                "--hidden-size",
                "32",
            ]
        )
        == 0
    )
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.hidden_size == 32 and (out / "tokenizer.json").is_file()
    assert main(["models", "tiny", "--data", "examples/forget.jsonl", "--out", str(out)]) == 2  # exists


@pytest.mark.slow
def test_two_process_data_parallel_run(tiny_model_dir, qa_files, tmp_path):
    """torchrun with 2 CPU processes (DDP over gloo) runs the same loop to the end."""
    forget, retain = qa_files
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "mox_unlearn.cli",
        "unlearn",
        "--model",
        str(tiny_model_dir),
        "--forget",
        str(forget),
        "--retain",
        str(retain),
        "--out",
        str(tmp_path / "ddp"),
        "per_device_batch_size=1",
        "batch_size=4",
        "epochs=2",
        "lr=1e-3",
        "log_with=tensorboard",  # closing the trackers must leave the process group to the last barrier
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1"}  # without it accelerate ignores torchrun's world on CPU
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert list((tmp_path / "ddp" / "trackers").rglob("events.out.tfevents.*"))  # written by the main process
    info = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert info["plan"]["accumulation"] == 2 and info["plan"]["total_steps"] == 2
    assert (tmp_path / "ddp" / "model" / "config.json").is_file()


@pytest.mark.slow
def test_shard_size_in_binary_units_trains_and_saves(tiny_model_dir, qa_files, tmp_path):
    """Issue 16: shard_size=512MiB passed the config check, then save_pretrained refused the unit after
    training. The config and every writer now read sizes with one parser and pass bytes on."""
    out = tmp_path / "mib"
    assert run(tiny_model_dir, qa_files, out, "--max-steps", "1", "shard_size=512MiB") == 0
    assert run(tiny_model_dir, qa_files, tmp_path / "small", "--max-steps", "1", "shard_size=20KiB") == 0
    shards = sorted((tmp_path / "small" / "model").glob("model-*.safetensors"))
    assert len(shards) > 1  # 20 KiB shards (a tensor larger than that gets one of its own)
    a, b = weights(out / "model"), weights(tmp_path / "small" / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_resume_refuses_data_edited_since_the_run_started(tiny_model_dir, qa_files, tmp_path, capsys):
    """Issue 16 class 10: the forget/retain records are fingerprinted in OUT/data.json at the start; a
    --resume on edited data would train one run on two data sets, so it is refused until restored."""
    forget, retain = qa_files
    mine = tmp_path / "forget.jsonl"
    mine.write_text(forget.read_text())
    out = tmp_path / "r"
    common = ("--max-steps", "3", "checkpoint_every=1")
    assert run(tiny_model_dir, (mine, retain), out, *common, callbacks=[StopAt(1)]) == 130
    assert json.loads((out / "data.json").read_text())["forget"]["records"] == 4
    original = mine.read_text()
    mine.write_text("".join(original.splitlines(keepends=True)[:3]))
    capsys.readouterr()
    assert main(["unlearn", "--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the forget data changed since the run started (4 records then, 3 now" in err
    mine.write_text(original)
    assert main(["unlearn", "--resume", "--out", str(out)]) == 0
