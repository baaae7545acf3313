"""Fault injection over the real CLI: every bad input gets one line naming it, a non-zero exit, no
traceback, no output left behind and its input untouched (the cases: tests/fault_cases.py).

Also: --debug shows the traceback, an unexpected exception is still one line, and the untrusted-file
rules (pickle weights, trust_remote_code, symlinks out of a model folder).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from fault_cases import FAULTS, Fault, build_inputs, fill, is_root, left_behind, run_case

from mox_unlearn.cli import main
from mox_unlearn.errors import MoxError
from mox_unlearn.io import folders, loading


@pytest.fixture(scope="module")
def fault_root(tmp_path_factory, tiny_model_dir, qa_files):
    root = tmp_path_factory.mktemp("faults")
    return root, build_inputs(root, tiny_model_dir, *qa_files)


@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
def test_fault(fault: Fault, fault_root):
    root, paths = fault_root
    if fault.needs_non_root and is_root():
        pytest.skip("chmod 000 does not stop root from reading (the folder-as-file case fails for root too)")
    result = run_case(fault, root, paths)
    lines = result.lines()
    names = fill(fault.names, paths, root / "out" / fault.id)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.inputs_changed == [], result.inputs_changed
    if fault.warning:
        assert result.exit_code == 0, result.stderr
        assert len(lines) == 1 and lines[0].startswith("mox: warning:"), lines
        assert left_behind(root / "out" / fault.id) == [fault.id]  # the run went on and finished
    elif fault.interrupted:  # a stop: exit 130, one line that says what was kept (nothing, or a checkpoint)
        assert result.exit_code == 130, result.stderr
        assert len(lines) == 1 and lines[0].startswith("mox: ") and "error" not in lines[0], lines
        assert result.out_left == fault.keeps_out
    else:
        assert result.exit_code == 2, result.stderr
        # nothing else but the progress bars of work that ran before the fault showed (extrapolation, training)
        others = [line for line in result.stderr.splitlines() if line.strip() and line not in lines]
        assert all("%|" in line for line in others), result.stderr
        assert len(lines) == 1 and lines[0].startswith("mox: error:"), lines
        assert result.out_left == fault.keeps_out
    assert names in lines[0], (names, lines[0])


def test_unreadable_file_even_as_root(fault_root, monkeypatch, capsys):
    """The chmod 000 case cannot fail for root (CI): the same refusal from a read that raises EACCES."""
    root, paths = fault_root
    real = Path.read_bytes

    def deny(self):
        if self == paths["retain"]:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", deny)
    out = root / "out" / "eacces"
    assert (
        main(
            [
                "unlearn",
                "--model",
                str(paths["model"]),
                "--forget",
                str(paths["forget"]),
                "--retain",
                str(paths["retain"]),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        err.startswith(f"mox: error: cannot read retain file {paths['retain']}: PermissionError")
        and err.count("\n") == 1
    )
    assert not out.exists()


def test_fault_ids_are_unique():
    assert len({f.id for f in FAULTS}) == len(FAULTS)


# ----------------------------------------------------------------------------- --debug and the last resort


def test_debug_prints_the_traceback_and_the_line(fault_root, capsys):
    root, paths = fault_root
    assert (
        main(
            [
                "--debug",
                "extrapolate",
                "--ref",
                str(paths["model"]),
                "--mem",
                str(paths["m_trunc"]),
                "--alpha",
                "2",
                "--out",
                str(root / "out" / "debug"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("mox: error: corrupted or truncated")
    # also accepted after the subcommand
    assert (
        main(
            [
                "extrapolate",
                "--ref",
                str(paths["model"]),
                "--mem",
                str(paths["m_trunc"]),
                "--alpha",
                "2",
                "--out",
                str(root / "out" / "debug"),
                "--debug",
            ]
        )
        == 2
    )
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize(
    "exc, expected",
    [
        (RuntimeError("boom\nsecond line"), "mox: error: unexpected RuntimeError: boom second line (run with --debug"),
        (PermissionError(13, "Permission denied", "/x/y"), "mox: error: Permission denied: /x/y"),
        (json.JSONDecodeError("Expecting value", '{"a":\n', 6), "mox: error: invalid JSON at line 2"),
        (KeyError("lm_head.weight"), "mox: error: unexpected KeyError: 'lm_head.weight' (run with --debug"),
    ],
)
def test_unexpected_exceptions_are_one_line(monkeypatch, capsys, tmp_path, exc, expected):
    import mox_unlearn.report

    def fail(files, harness=None):
        raise exc

    monkeypatch.setattr(mox_unlearn.report, "load_rows", fail)
    assert main(["report", "x.json", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(expected) and "Traceback" not in err, err
    assert main(["--debug", "report", "x.json", "--out", str(tmp_path / "r")]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_ctrl_c_exits_130(monkeypatch, capsys, tmp_path):
    import mox_unlearn.report

    def interrupt(files, harness=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(mox_unlearn.report, "load_rows", interrupt)
    assert main(["report", "x.json", "--out", str(tmp_path / "r")]) == 130
    assert capsys.readouterr().err.startswith("mox: interrupted")


def test_failed_start_of_a_run_leaves_an_existing_folder_alone(fault_root, capsys):
    """The clean-up after a failed start removes only a run folder this command created."""
    root, paths = fault_root
    out = root / "out" / "existing"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    argv = [
        "unlearn",
        "--model",
        str(paths["model"]),
        "--forget",
        str(paths["forget"]),
        "--retain",
        str(paths["retain"]),
        "--out",
        str(out),
        "batch_size=3",
        "per_device_batch_size=2",
    ]
    assert main(argv) == 2
    assert (out / "keep.txt").read_text() == "mine"
    assert "not empty" in capsys.readouterr().err


# ----------------------------------------------------------------------------- untrusted files


def test_pickle_weights_need_allow_pickle_and_load_weights_only(fault_root, tmp_path):
    _, paths = fault_root
    with pytest.raises(MoxError, match="--allow-pickle"):
        loading.load_model(str(paths["m_bin"]), torch.float32)
    model = loading.load_model(str(paths["m_bin"]), torch.float32, allow_pickle=True)
    ref = loading.load_model(str(paths["model"]), torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
    with loading.load_policy(allow_pickle=True):  # what --allow-pickle sets for the whole command
        assert loading.load_model(str(paths["m_bin"]), torch.float32) is not None
    with pytest.raises(MoxError):
        loading.load_model(str(paths["m_bin"]), torch.float32)  # back to safe after the command


class _Payload:
    """Unpickling this runs code: it creates the file named in `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_allow_pickle_still_refuses_code_in_a_pickle(fault_root, tmp_path):
    _, paths = fault_root
    evil = tmp_path / "evil"
    shutil.copytree(paths["m_bin"], evil)
    marker = tmp_path / "code-ran"
    torch.save({"model.embed_tokens.weight": _Payload(marker)}, evil / "pytorch_model.bin")
    with pytest.raises(MoxError, match="cannot load model"):
        loading.load_model(str(evil), torch.float32, allow_pickle=True)
    assert not marker.exists()


def test_allow_pickle_flag_reaches_the_loader(fault_root, capsys):
    """`mox eval --allow-pickle` gets past the refusal (and then fails on the empty data folder, still before
    loading the model)."""
    root, paths = fault_root
    argv = [
        "eval",
        "--benchmark",
        "tofu",
        "--model",
        str(paths["m_bin"]),
        "--data",
        str(paths["tofu_empty"]),
        "--out",
        str(root / "out" / "pickle.json"),
    ]
    assert main(argv) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    assert main([*argv, "--allow-pickle"]) == 2
    err = capsys.readouterr().err
    assert "local folder without forget10_perturbed.jsonl" in err and "pickle" not in err


def test_trust_remote_code_is_off_unless_asked(monkeypatch, fault_root):
    import transformers

    _, paths = fault_root
    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(name, **kw):
        seen.append((kw.get("trust_remote_code"), kw.get("use_safetensors"), kw.get("weights_only")))
        return real(name, **kw)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    loading.load_model(str(paths["model"]), torch.float32)
    with loading.load_policy(trust_remote_code=True):
        loading.load_model(str(paths["model"]), torch.float32)
    assert seen == [(False, True, True), (True, True, True)]


def test_cli_flags_set_the_load_policy(monkeypatch, tmp_path):
    import mox_unlearn.cli as cli

    seen = {}

    def record(args, argv):
        seen.update(vars(loading._POLICY))
        return 0

    monkeypatch.setattr(cli, "cmd_unlearn", record)
    assert main(["unlearn", "--allow-pickle", "--trust-remote-code"]) == 0
    assert seen == {"allow_pickle": True, "trust_remote_code": True}
    assert main(["unlearn"]) == 0
    assert seen == {"allow_pickle": False, "trust_remote_code": False}


def test_copy_aux_files_refuses_links_out_of_the_folder(tmp_path):
    src, dst = tmp_path / "model", tmp_path / "dst"
    src.mkdir()
    (tmp_path / "secret").write_text("key")
    (src / "config.json").write_text("{}")
    os.symlink(tmp_path / "secret", src / "tokenizer.json")
    with pytest.raises(MoxError, match="outside the model folder"):
        folders.copy_aux_files(src, dst)
    assert not (dst / "tokenizer.json").exists()
    (src / "tokenizer.json").unlink()
    (src / "vocab.txt").write_text("v")
    os.symlink("config.json", src / "tokenizer_config.json")  # inside the folder: fine
    folders.copy_aux_files(src, dst)
    assert (dst / "tokenizer_config.json").read_text() == "{}"


def test_copy_aux_files_accepts_the_hub_cache_layout(tmp_path):
    """snapshots/<rev>/config.json -> ../../blobs/<hash> is how every cached hub model looks."""
    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc").write_text('{"model_type": "llama"}')
    snap = repo / "snapshots" / "rev1"
    snap.mkdir(parents=True)
    os.symlink("../../blobs/abc", snap / "config.json")
    folders.copy_aux_files(snap, tmp_path / "dst")
    assert (tmp_path / "dst" / "config.json").read_text() == '{"model_type": "llama"}'


def test_partial_overlap_is_counted(tmp_path):
    from mox_unlearn.data import load_records
    from mox_unlearn.data.records import check_overlap

    (tmp_path / "f.jsonl").write_text('{"question": "a", "answer": "b"}\n{"question": "c", "answer": "d"}\n')
    (tmp_path / "r.json").write_text('[{"question": "a ", "answer": "b"}, {"question": "x", "answer": "y"}]')
    forget, retain = load_records(str(tmp_path / "f.jsonl")), load_records(str(tmp_path / "r.json"))
    assert check_overlap(forget, retain).startswith("1 of 2 forget records are also in the retain set")
    assert check_overlap(retain, None) is None


def test_a_typo_in_a_relative_model_path_is_refused_at_once(tmp_path, monkeypatch, capsys):
    """`runs/tiny-modle` next to an existing runs/ is a local path with a typo, not a hub id: one line, no
    network lookup (the hub would be tried, and retried, for a name read as `org/model`)."""
    import time

    from mox_unlearn.cli import main
    from mox_unlearn.io.loading import looks_like_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "forget.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    (tmp_path / "retain.jsonl").write_text('{"question": "r", "answer": "b"}\n')
    assert looks_like_path("runs/tiny-modle") and not looks_like_path("locuslab/tofu_ft_llama2-7b")
    started = time.perf_counter()
    args = ["--forget", "forget.jsonl", "--retain", "retain.jsonl", "--out", "out"]
    code = main(["unlearn", "--model", "runs/tiny-modle", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and time.perf_counter() - started < 5
    assert err == [
        "mox: error: model folder not found: runs/tiny-modle (read as a local path because runs/ exists here)"
    ]
    assert not (tmp_path / "out").exists()
