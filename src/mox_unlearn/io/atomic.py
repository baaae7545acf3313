"""Safe output: a folder or file appears whole or not at all, never over an input, never half-written,
and once it has appeared it survives a crash or power loss (files and folders are fsync'ed around the
rename). A write that fails (full disk, file-size or quota limit) is one line naming the output."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from mox_unlearn.errors import MoxError

Inputs = Mapping[str, "str | Path | None"] | Sequence["str | Path"]


def check_not_an_input(out: str | Path, inputs: Inputs, *, replaces_folder: bool = True) -> None:
    """The one output-location check of every command: refuse an output that is one of the command's
    inputs, lies inside an input folder, or (`replaces_folder`: the output replaces a whole folder) holds
    an input. `inputs` maps each input's flag to its path (a plain list is named "input"); None, hub ids
    and other names that are not files or folders here are skipped. Writes nothing."""
    named = inputs.items() if isinstance(inputs, Mapping) else (("input", p) for p in inputs)
    out_r = Path(out).expanduser().resolve()
    for flag, inp in named:
        if inp is None or not Path(inp).expanduser().exists():
            continue
        inp_r = Path(inp).expanduser().resolve()
        what = "an input" if flag == "input" else f"the {flag} input"
        if out_r == inp_r:
            raise MoxError(f"--out {out} is {what} {inp}; choose another --out")
        if inp_r.is_dir() and out_r.is_relative_to(inp_r):
            raise MoxError(f"--out {out} is inside {what} {inp}; choose another --out")
        if replaces_folder and inp_r.is_relative_to(out_r):
            raise MoxError(f"--out {out} holds {what} {inp}, which writing it would delete; choose another --out")


def check_output_dir(out: Path, *, overwrite: bool = False, inputs: Inputs = ()) -> None:
    """Refuse an output folder that would clobber an input (check_not_an_input) or existing work; writes
    nothing. Separate from `atomic_output_dir` so callers can run every check before starting slow work.
    """
    check_not_an_input(out, inputs)
    out_r = Path(out).resolve()
    if out_r.exists():
        if not out_r.is_dir():
            raise MoxError(f"output path {out} exists and is not a folder")
        if any(out_r.iterdir()) and not overwrite:
            raise MoxError(f"output folder {out} exists and is not empty (pass --overwrite to replace it)")


class WriteError(MoxError):
    """Writing an output failed (full disk, a file-size or quota limit, an I/O error); nothing was written.
    `path` is the output, `reason` the system's words; callers may re-phrase the advice (a run's resume)."""

    def __init__(self, path: Path, reason: str, advice: str = "free space and run the command again"):
        self.path, self.reason = Path(path), reason
        super().__init__(f"writing {path} failed: {reason}; nothing was written there ({advice})")


# errno values that can only come from writing: anything else is a write failure only inside the output
WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


def write_failure(e: BaseException, within: Path | None = None) -> str | None:
    """Why writing failed when `e` is a failed write, else None (a reading error, a bug, a stop).

    Three libraries write our files and each says it differently: Python (OSError), safetensors
    (SafetensorError "Error while serializing: I/O error: File too large (os error 27)") and torch.save
    (RuntimeError from its zip writer, with no errno). `within`: an OSError on a file under this folder
    (the temp output) is a write failure whatever its errno."""
    if isinstance(e, OSError):
        inside = within is not None and e.filename and Path(os.fsdecode(e.filename)).is_relative_to(within)
        return (e.strerror or str(e)) if e.errno in WRITE_ERRNOS or inside else None
    text = " ".join(str(e).split())
    if type(e).__name__ == "SafetensorError" and "while serializing" in text:
        code = re.search(r"os error (\d+)", text)
        return os.strerror(int(code[1])) if code else text
    if isinstance(e, RuntimeError) and ("PytorchStreamWriter" in text or "inline_container" in text):
        return "the file could not be written in full (torch.save; a full disk or a file-size limit)"
    return None


@contextmanager
def atomic_output_dir(out: Path, *, overwrite: bool = False, inputs: Inputs = ()) -> Iterator[Path]:
    """Yield a temp folder beside `out` that becomes `out` only if the block finishes.

    A crash or Ctrl-C therefore never leaves a half-written model that looks complete; the temp
    folder sits in the same parent so the final step is a cheap rename on one file system. Its files
    are fsync'ed before the rename and the parent after it, so a folder that is there after a power
    loss is whole. A failed write is a `WriteError` naming `out`. Without `overwrite`, an `out` that
    another process wrote meanwhile is kept (this result is dropped), never replaced.
    """
    out = Path(out)
    check_output_dir(out, overwrite=overwrite, inputs=inputs)
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    os.chmod(tmp, umask_mode(0o777))  # mkdtemp makes it 0700; the result should be an ordinary folder
    with _failed_writes_name(out, tmp):
        try:
            yield tmp
            fsync_tree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    _replace_dir(tmp, out.resolve(), overwrite=overwrite)


@contextmanager
def _failed_writes_name(out: Path, within: Path) -> Iterator[None]:
    """A failed write in the block (write_failure; `within`: the temp output) becomes a WriteError naming
    `out`; anything else passes unchanged. The writers clean up their temp files inside the block."""
    try:
        yield
    except BaseException as e:
        reason = write_failure(e, within=within)
        if reason is not None:
            raise WriteError(out, reason) from e
        raise


def _replace_dir(tmp: Path, out: Path, *, overwrite: bool = True) -> None:
    """Move `tmp` to `out`, first moving an old `out` aside so it is removed only after success."""
    old = None
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        shutil.rmtree(tmp, ignore_errors=True)
        raise MoxError(f"{out} was written by another process meanwhile; it is kept and this result dropped")
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / out.name)
    try:
        os.rename(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        if old is not None:
            os.rename(old / out.name, out)
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_files(out: Path) -> Iterator[Path]:
    """Yield a temp folder inside the folder `out` whose files move into `out` (each by a rename, replacing
    a file of the same name) only if the block finishes: a set of files (a report's tables and plots)
    appears together or not at all, and other files in `out` are left alone. A folder `out` this call
    made is removed again on failure; a failed write is a `WriteError` naming `out`."""
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".staged.tmp-", dir=out))
    with _failed_writes_name(out, stage):
        try:
            yield stage
            fsync_tree(stage)
            for f in sorted(stage.iterdir()):
                os.replace(f, out / f.name)
            fsync_dir(out)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            if created:
                with suppress(OSError):
                    out.rmdir()
            raise
    shutil.rmtree(stage, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small file (JSON results, logs) via a temp file, fsync and a rename: never half-written,
    and whole after a crash. A failed write removes the temp file and is a `WriteError` naming `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with _failed_writes_name(path, tmp):
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    fsync_dir(path.parent)


def fsync_tree(folder: Path) -> None:
    """fsync every file under `folder`, then every folder bottom-up: its contents are on disk, not only in
    the page cache, before a rename makes them visible (ext4/xfs may otherwise show empty or torn files
    after a power loss)."""
    for root, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                _fsync(path)
        fsync_dir(Path(root))


def fsync_dir(folder: Path) -> None:
    """fsync a folder, so a rename or a new entry in it is durable (a no-op where the system refuses)."""
    try:
        _fsync(folder)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask_mode(mode: int) -> int:
    """`mode` filtered by the process umask (read without a lasting change)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


LOCK_NAME = ".mox.lock"


class FolderLock:
    """An exclusive claim on a folder by one running process (a run folder, a workspace), so a second
    `mox` pointed at the same place is refused instead of overwriting, resuming or cleaning up files the
    first is still writing. flock on FOLDER/.mox.lock: the system drops it when the process ends however
    it ends, so a killed run never leaves a stale claim. The file holds the owner's pid, for the message."""

    def __init__(self, folder: Path, what: str = "folder"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_NAME
        self._file = None

    def acquire(self) -> FolderLock:
        import fcntl

        f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.seek(0)
            owner = f.read().strip()
            f.close()
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            pid = f" (pid {owner})" if owner.isdigit() else ""
            raise MoxError(
                f"{self.what} {self.folder} is in use by another mox process{pid}; wait for it to finish "
                "or choose another --out"
            ) from None
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return self

    @property
    def held(self) -> bool:
        return self._file is not None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        """Remove the lock file and let go (a no-op when not held)."""
        if self._file is None:
            return
        with suppress(OSError):
            self.path.unlink()
        self._file.close()
        self._file = None


@contextmanager
def held_folder(folder: Path, what: str = "folder") -> Iterator[Path]:
    """`folder`, made if missing and held by this process (FolderLock) for the block; a folder this call
    made that is still empty afterwards (the command was refused before writing anything) is removed."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with FolderLock(folder, what):
            yield folder
    finally:
        if created:
            with suppress(OSError):
                folder.rmdir()
