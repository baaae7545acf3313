"""Safe output: a folder or file appears whole or not at all, never over an input, never half-written."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
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


@contextmanager
def atomic_output_dir(out: Path, *, overwrite: bool = False, inputs: Inputs = ()) -> Iterator[Path]:
    """Yield a temp folder beside `out` that becomes `out` only if the block finishes.

    A crash or Ctrl-C therefore never leaves a half-written model that looks complete; the temp
    folder sits in the same parent so the final step is a cheap rename on one file system.
    """
    out = Path(out)
    check_output_dir(out, overwrite=overwrite, inputs=inputs)
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    os.chmod(tmp, umask_mode(0o777))  # mkdtemp makes it 0700; the result should be an ordinary folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_dir(tmp, out.resolve())


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move `tmp` to `out`, first moving an old `out` aside so it is removed only after success."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / out.name)
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:
            os.rename(old / out.name, out)
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small file (JSON results, logs) via a temp file and a rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def umask_mode(mode: int) -> int:
    """`mode` filtered by the process umask (read without a lasting change)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask
