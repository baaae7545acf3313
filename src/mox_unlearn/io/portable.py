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

import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Config keys whose values are local paths (or hub ids / data specs, left alone)
PATH_KEYS = ("model", "forget", "retain", "out", "refusals", "holdout", "resume_from")
PATHS_NOTE = "relative to the run folder"


def is_local_path(value: object) -> bool:
    """An absolute path, or a relative one that exists from here: not a hub id or an `hf:` spec."""
    if not isinstance(value, str) or not value or "\n" in value or value.startswith("hf:"):
        return False
    p = Path(value).expanduser()
    return p.is_absolute() or p.exists()


def relative_to(value: str, base: Path) -> str:
    """`value` (a local path) written relative to `base`; anything else unchanged."""
    if not is_local_path(value):
        return value
    return os.path.relpath(Path(value).expanduser().resolve(), Path(base).resolve())


def portable_config(config: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """A config dict with its local paths (PATH_KEYS) relative to `base`."""
    return {k: relative_to(v, base) if k in PATH_KEYS and isinstance(v, str) else v for k, v in config.items()}


def portable(obj: Any, base: Path) -> Any:
    """Every absolute local path inside nested dicts / lists (keys excepted) relative to `base`."""
    if isinstance(obj, str):
        return relative_to(obj, base) if Path(obj).expanduser().is_absolute() and Path(obj).parent.exists() else obj
    if isinstance(obj, Mapping):
        return {k: portable(v, base) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(portable(v, base) for v in obj)
    return obj


def portable_argv(argv: list[str], base: Path) -> list[str]:
    """A command line with its local paths (bare, `--flag=PATH` or `key=PATH`) relative to `base`."""
    out = []
    for arg in argv:
        head, eq, tail = arg.partition("=")
        if eq and is_local_path(tail):
            out.append(f"{head}={relative_to(tail, base)}")
        else:
            out.append(relative_to(arg, base) if not arg.startswith("-") else arg)
    return out


def command_text(argv: list[str], base: Path) -> str:
    """command.txt: the command line, local paths relative to the run folder, and a line saying so."""
    return f"# local paths are written relative to this run folder\n{shlex.join(portable_argv(argv, base))}\n"


def resolve_config(config: Mapping[str, Any], run: Path) -> dict[str, Any]:
    """A config read from `run`'s files with its relative local paths resolved against `run` (the inverse of
    portable_config), as absolute paths; a value that names nothing there is left as it was (a hub id)."""
    out = dict(config)
    for key in PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value and not value.startswith("hf:") and not Path(value).is_absolute():
            candidate = Path(run) / value
            if candidate.exists() or key == "out":
                out[key] = str(candidate.resolve())
    return out


def absolute_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict with its local paths (PATH_KEYS) absolute, so two spellings of one path compare equal."""
    return {
        k: str(Path(v).expanduser().resolve()) if k in PATH_KEYS and is_local_path(v) else v for k, v in config.items()
    }
