"""Local paths in the files a run leaves behind, written relative to the run folder.

A run folder (and every model folder in it) gets copied, shared and pushed to the Hub: the absolute
paths of the machine that made it (user names, mount points) must not travel with it, and a folder
moved together with its inputs should still make sense. So config.yaml, command.txt, data.json,
run.json and the model cards name local files relative to the run folder ("../models/base",
"../data/forget.jsonl"); hub ids and `hf:` data specs stay as they are. Reading a run back
(`--resume`, the experiments' cache) resolves them against the folder again (`resolve_config`).
data.json says which convention its folder uses (`PATHS_NOTE`), so folders written before keep working.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Config keys whose values are local paths (or hub ids / data specs, left alone)
PATH_KEYS = ("model", "forget", "retain", "out", "refusals", "holdout", "resume_from")
PATHS_NOTE = "relative to the run folder"
# A hub repo id: "name" or "owner/name" of letters, digits, "-", "_", "."; a path portable_config writes starts
# with ".." or has more parts, unless it lies inside the run folder, where it exists.
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def marks_relative_paths(folder: Path) -> bool:
    """Whether `folder` is a run folder whose files name local paths relative to it: its data.json, a small
    mapping, says so. Anything else (no data.json, a data set of that name, a damaged file) is not."""
    path = Path(folder) / "data.json"
    try:
        if not path.is_file() or path.stat().st_size > 1_000_000:  # a run's data.json is a few hundred bytes
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and data.get("paths") == PATHS_NOTE


def is_local_path(value: object) -> bool:
    """An absolute path, or a relative one that exists from here: not a hub id or an `hf:` spec."""
    if not isinstance(value, str) or not value or "\n" in value or value.startswith("hf:"):
        return False
    p = Path(value).expanduser()
    return p.is_absolute() or _exists(p)


def _exists(p: Path) -> bool:
    """Path.exists, False for a value no file can have (too long, a NUL byte)."""
    try:
        return p.exists()
    except (OSError, ValueError):
        return False


def relative_to(value: str, base: Path) -> str:
    """`value` (a local path) written relative to `base`; anything else unchanged, and so is a path that
    has no relative form (another drive than `base` on Windows: it stays absolute)."""
    if not is_local_path(value):
        return value
    path = Path(value).expanduser().resolve()
    try:
        return os.path.relpath(path, Path(base).resolve())
    except ValueError:
        return str(path)


def portable_config(config: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """A config dict with its local paths (PATH_KEYS) relative to `base`."""
    return {k: relative_to(v, base) if k in PATH_KEYS and isinstance(v, str) else v for k, v in config.items()}


def portable(obj: Any, base: Path) -> Any:
    """Every absolute path of an existing file or folder inside nested dicts / lists (keys excepted) relative
    to `base`; any other string (a prompt "/no_think", a message) as it is."""
    if isinstance(obj, str):
        return relative_to(obj, base) if _machine_path(obj) else obj
    if isinstance(obj, Mapping):
        return {k: portable(v, base) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(portable(v, base) for v in obj)
    return obj


def portable_argv(argv: list[str], base: Path) -> list[str]:
    """A command line with its local paths relative to `base`: the values of path options (`--model PATH`,
    `--forget=PATH`) and keys (`retain=PATH`), and any other existing absolute path; every other word as it
    is, even where it names a local file by chance (`--method data` beside a folder `data`)."""
    flags = {f"--{key.replace('_', '-')}" for key in PATH_KEYS} | {"--config"}
    out, previous = [], None
    for arg in argv:
        head, eq, tail = arg.partition("=")
        if eq and (head in flags or head in PATH_KEYS):
            out.append(f"{head}={relative_to(tail, base)}")
        elif previous in flags or _machine_path(arg):
            out.append(relative_to(arg, base))
        else:
            out.append(arg)
        previous = arg
    return out


def _machine_path(value: str) -> bool:
    """An absolute path of an existing file or folder on this machine."""
    if not isinstance(value, str) or not value or "\n" in value:
        return False
    p = Path(value).expanduser()
    return p.is_absolute() and _exists(p)


def command_text(argv: list[str], base: Path) -> str:
    """command.txt: the command line, local paths relative to the run folder, and a line saying so."""
    return f"# local paths are written relative to this run folder\n{shlex.join(portable_argv(argv, base))}\n"


def resolve_config(config: Mapping[str, Any], run: Path) -> dict[str, Any]:
    """A config read from `run`'s files with its relative local paths resolved against `run` (the inverse of
    portable_config), as absolute paths. A data spec other than `hf:` is always a file, so it is resolved even
    where it names nothing (moved inputs are then reported missing, not read from the working directory); a
    model that names nothing there stays as it was where it could be a hub id (HUB_ID)."""
    out = dict(config)
    for key in PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value and not value.startswith("hf:") and not Path(value).is_absolute():
            candidate = Path(run) / value
            if key != "model" or _exists(candidate) or not HUB_ID.match(value):
                out[key] = str(candidate.resolve())
    return out


def absolute_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict with its local paths (PATH_KEYS) absolute, so two spellings of one path compare equal."""
    return {
        k: str(Path(v).expanduser().resolve()) if k in PATH_KEYS and is_local_path(v) else v for k, v in config.items()
    }
