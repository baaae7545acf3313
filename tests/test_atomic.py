"""io.atomic: which exceptions are failed writes, fsync around every rename, folder locks, staged files."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from mox_unlearn.errors import MoxError
from mox_unlearn.io import atomic
from mox_unlearn.io.atomic import (
    LOCK_NAME,
    FolderLock,
    WriteError,
    atomic_output_dir,
    held_folder,
    staged_files,
    write_failure,
    write_text_atomic,
)


class SafetensorError(Exception):  # safetensors' own type is matched by name, as it is raised from Rust
    pass


@pytest.mark.parametrize(
    ("exc", "within", "reason"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), None, "No space left on device"),
        (OSError(errno.EFBIG, "File too large", "/anywhere"), None, "File too large"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), None, "Disk quota exceeded"),
        (OSError(errno.EIO, "Input/output error", "/out/.tmp/x"), Path("/out/.tmp"), "Input/output error"),
        # the same errno on a file outside the output is a reading error, not ours to call a write
        (OSError(errno.EIO, "Input/output error", "/in/model.safetensors"), Path("/out/.tmp"), None),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/in/x"), None, None),
        (SafetensorError("Error while serializing: I/O error: File too large (os error 27)"), None, "File too large"),
        (SafetensorError("Error while deserializing header: invalid header length"), None, None),
        (
            RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 202560 vs 202452"),
            None,
            "torch.save",
        ),
        (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), None, "torch.save"),
        (RuntimeError("shape mismatch"), None, None),
        (ValueError("File too large"), None, None),
    ],
)
def test_write_failure_tells_writes_from_everything_else(exc, within, reason):
    got = write_failure(exc, within=within)
    assert (got is None) == (reason is None)
    if reason is not None:
        assert reason in got


def test_a_failed_write_removes_the_temp_folder_and_names_the_output(tmp_path):
    out = tmp_path / "theta"
    with pytest.raises(WriteError, match=f"writing {out} failed: No space left on device; nothing was written"):
        with atomic_output_dir(out) as tmp:
            (tmp / "part").write_bytes(b"x")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "part"))
    assert list(tmp_path.iterdir()) == []


def test_write_text_atomic_leaves_no_temp_file_when_the_write_fails(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(WriteError, match="result.json failed: No space left on device"):
        write_text_atomic(tmp_path / "result.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_every_file_and_folder_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    synced: list[str] = []
    real = atomic._fsync

    def record(path):
        synced.append(str(path))
        real(path)

    monkeypatch.setattr(atomic, "_fsync", record)
    out = tmp_path / "model"
    with atomic_output_dir(out) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.bin").write_bytes(b"a")
        (tmp / "b.json").write_text("{}")
    names = [Path(p).name for p in synced]
    # files before their folders, the temp folder before the rename, the parent after it
    assert names.index("a.bin") < names.index("sub") < names.index(tmp.name) < names.index(tmp_path.name)
    assert "b.json" in names and (out / "sub" / "a.bin").read_bytes() == b"a"


def test_an_output_another_process_wrote_meanwhile_is_kept(tmp_path):
    out = tmp_path / "theta"
    with pytest.raises(MoxError, match="written by another process meanwhile; it is kept"):
        with atomic_output_dir(out) as tmp:
            (tmp / "ours").write_text("ours")
            out.mkdir()
            (out / "theirs").write_text("theirs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theta"]
    assert [p.name for p in out.iterdir()] == ["theirs"]


def test_a_held_folder_refuses_a_second_holder_and_says_who(tmp_path):
    with FolderLock(tmp_path, "run folder") as first:
        assert first.held and (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(
            MoxError, match=rf"run folder {tmp_path} is in use by another mox process \(pid {os.getpid()}\)"
        ):
            FolderLock(tmp_path, "run folder").acquire()
    assert not (tmp_path / LOCK_NAME).exists()
    FolderLock(tmp_path).acquire().release()  # free again once released


def test_held_folder_removes_the_folder_it_made_when_nothing_was_written(tmp_path):
    with pytest.raises(MoxError, match="refused"):
        with held_folder(tmp_path / "ws"):
            raise MoxError("refused")
    assert list(tmp_path.iterdir()) == []
    with held_folder(tmp_path / "ws") as ws:
        (ws / "result.json").write_text("{}")
    assert [p.name for p in (tmp_path / "ws").iterdir()] == ["result.json"]


def test_staged_files_appear_together_or_not_at_all(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "other.txt").write_text("kept")
    (out / "results.md").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with staged_files(out) as stage:
            (stage / "results.json").write_text("{}")
            (stage / "results.md").write_text("new")
            raise KeyboardInterrupt
    assert sorted(p.name for p in out.iterdir()) == ["other.txt", "results.md"]
    assert (out / "results.md").read_text() == "old"
    with staged_files(out) as stage:
        (stage / "results.md").write_text("new")
    assert (out / "results.md").read_text() == "new" and (out / "other.txt").read_text() == "kept"
    assert sorted(p.name for p in out.iterdir()) == ["other.txt", "results.md"]


def test_checkpoint_manifest_finds_a_torn_file(tmp_path):
    from mox_unlearn.train.folder import check_checkpoint, write_manifest

    ckpt = tmp_path / "step-3"
    ckpt.mkdir()
    torch.save({"w": torch.zeros(4)}, ckpt / "optimizer.bin")
    (ckpt / "model.safetensors").write_bytes(b"x" * 100)
    write_manifest(ckpt)
    check_checkpoint(ckpt)  # whole
    os.truncate(ckpt / "model.safetensors", 10)
    with pytest.raises(MoxError, match=r"model.safetensors is 10 bytes, was 100\); it cannot be resumed"):
        check_checkpoint(ckpt)
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(MoxError, match="model.safetensors is missing"):
        check_checkpoint(ckpt)
    (ckpt / "manifest.json").unlink()
    check_checkpoint(ckpt)  # a checkpoint from before the manifest: not checked here
