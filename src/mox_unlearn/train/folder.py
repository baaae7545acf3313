"""The run folder (OUT) of `mox unlearn`: claimed before any model is loaded, written whole file by file
(temp file or folder, then a rename; secrets redacted), and resumable from its latest checkpoint.

  config.yaml, command.txt   the resolved config and the command line, written at the start
  data.json                  count and hash of the forget / retain records, checked by --resume
  log.jsonl                  one line per logged optimizer step (and per collapse probe or skipped step)
  checkpoints/step-N/        accelerate `save_state` (latest only), used by --resume; removed after run.json
  epochs/epoch-K/            the trained weights (θ_mem for MOX) after epoch K, with save_epochs=true
  trackers/                  with log_with: TensorBoard's event files; runs.json, the wandb / MLflow run ids
  memorized/, model/, ...    the outputs (train/spaces.py writes them)
  run.json                   config, versions, timings, final losses; written last
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from mox_unlearn.config import UnlearnConfig, to_dict
from mox_unlearn.errors import MoxError, first_line
from mox_unlearn.io.atomic import (
    LOCK_NAME,
    FolderLock,
    WriteError,
    fsync_dir,
    fsync_tree,
    write_failure,
    write_text_atomic,
)
from mox_unlearn.io.portable import (
    PATHS_NOTE,
    absolute_config,
    command_text,
    portable,
    portable_argv,
    portable_config,
    relative_to,
    resolve_config,
)
from mox_unlearn.redact import redact, redact_text

# Keys that may differ between an interrupted run and its --resume without changing the result (the
# guards change it only where they fire: a run stopped by one can be resumed with another setting).
RESUME_FREE_KEYS = {
    "out",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "log_with",
    "push_to_hub",
    "hub_public",
    "on_nonfinite",
    "max_skipped_steps",
    "collapse_probe_every",
    "collapse_threshold",
    "collapse_action",
    "collapse_probe_prompts",
    "collapse_probe_tokens",
}

# What a run writes before it has done any work.
START_FILES = {"config.yaml", "command.txt", "data.json", "log.jsonl"}


def _local_inputs(cfg: UnlearnConfig) -> list[Path]:
    """The files and folders a run reads that exist on this machine (hub ids and hf: specs are skipped)."""
    specs = [cfg.forget, cfg.retain, cfg.holdout, cfg.refusals]
    paths = [Path(s).expanduser() for s in specs if s and not s.startswith("hf:")]
    return [p.resolve() for p in paths if p.exists()]


class RunFolder:
    """OUT of one training run (see the module docstring)."""

    def __init__(self, path: Path):
        self.path = path
        self.log_path = path / "log.jsonl"
        self.lock = FolderLock(path, "run folder")  # held by the main process while the run is going
        self.created = False  # this process made the folder (only then may a failed start remove it)

    # ------------------------------------------------------------------ claiming and starting

    @classmethod
    def claim(cls, cfg: UnlearnConfig, *, resume: bool, overwrite: bool, main: bool = True) -> RunFolder:
        """Check OUT before any model is loaded; never delete anything that is not a mox run folder, and
        never write into or delete an input (the model folder, or data that --overwrite would remove).

        Every process checks; only the main process clears or creates the folder.
        """
        if not cfg.out:
            raise MoxError("no output folder given (--out)")
        out = Path(cfg.out).expanduser().resolve()  # "~" as a YAML config or key=value leaves it
        folder = cls(out)
        model = Path(cfg.model).expanduser()
        model_path = model.resolve() if model.exists() else None
        if model_path is not None and (out == model_path or model_path in out.parents or out in model_path.parents):
            raise MoxError(f"--out {out} overlaps the input model folder {model_path}")
        if main and out.is_dir():
            folder.lock.acquire()  # a run still going is never resumed, replaced or joined by a second one
        if resume:
            if folder.latest_checkpoint() is None:
                raise MoxError(f"nothing to resume: no checkpoint under {out / 'checkpoints'}")
            saved = absolute_config(saved_config(out))
            now = absolute_config(redact(to_dict(cfg)))  # config.yaml was written redacted
            defaults = to_dict(UnlearnConfig())
            # a key the interrupted run's version did not have yet counts as its default (also inside `prompt`)
            changed = sorted(
                k
                for k in now
                if k not in RESUME_FREE_KEYS and _with_defaults(saved.get(k, _MISSING), defaults[k]) != now[k]
            )
            if changed:
                raise MoxError(f"--resume with a different config than the interrupted run: {', '.join(changed)}")
            return folder
        occupied = out.exists() and any(p.name != LOCK_NAME for p in out.iterdir())
        if occupied and not overwrite:
            if (out / "run.json").is_file():  # finished: there is nothing to resume
                raise MoxError(
                    f"output folder {out} holds a finished run (run.json); choose another --out, or --overwrite "
                    "to replace it"
                )
            hint = "--overwrite or --resume" if folder.latest_checkpoint() is not None else "--overwrite"
            raise MoxError(f"output folder {out} exists and is not empty (use {hint})")
        if occupied and not folder.is_run_folder():
            raise MoxError(f"refusing to overwrite {out}: it is not a mox run folder")
        inside = [str(p) for p in _local_inputs(cfg) if out == p or out in p.parents]
        if occupied and inside:
            raise MoxError(f"refusing to overwrite {out}: it holds input {inside[0]}, which --overwrite would delete")
        if main:
            try:
                out.mkdir(parents=True)
                folder.created = True  # ours: a failed start may remove it (remove_failed_start)
            except FileExistsError:
                pass
            if not folder.lock.held:
                folder.lock.acquire()
            if occupied:  # everything but the lock we hold (a new lock file would not exclude anyone)
                for entry in out.iterdir():
                    if entry.name != LOCK_NAME:
                        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        return folder

    def is_run_folder(self) -> bool:
        return any((self.path / name).exists() for name in ("config.yaml", "run.json", "checkpoints"))

    def write_start(self, cfg: UnlearnConfig, argv: list[str], data: dict[str, Any]) -> None:
        """config.yaml, command.txt, data.json: local paths relative to the folder (io/portable.py), secrets out."""
        config = portable_config(redact(to_dict(cfg)), self.path)
        write_text_atomic(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        write_text_atomic(self.path / "command.txt", redact_text(command_text(argv, self.path)))
        data = {name: {**d, "source": relative_to(d["source"], self.path)} for name, d in data.items()}
        write_text_atomic(self.path / "data.json", json.dumps({**data, "paths": PATHS_NOTE}, indent=1) + "\n")

    def check_same_data(self, data: dict[str, Any]) -> None:
        """--resume with the records the run started with: data edited in between would mix two data sets
        in one run. A run folder from before data.json existed is not checked."""
        path = self.path / "data.json"
        if not path.is_file():
            return
        saved = read_run_file(path)
        for name, now in data.items():
            then = saved.get(name)
            if isinstance(then, dict) and (then["records"], then["sha256"]) != (now["records"], now["sha256"]):
                raise MoxError(
                    f"the {name} data changed since the run started ({then['records']} records then, "
                    f"{now['records']} now; {now['source']}): resuming would train on two data sets; restore "
                    "it, or start a new run"
                )

    def remove_failed_start(self) -> None:
        """Remove this folder when the command that created it failed before any step was logged or
        checkpointed: only a folder holding nothing but the start files and an empty log. A folder with a
        checkpoint, a logged step or anything else is left for --resume or for inspection."""
        if not (self.created and self.lock.held) or not self.path.is_dir():
            return  # a folder this process did not make, or one another process now holds: not ours
        entries = [e for e in self.path.iterdir() if e.name != LOCK_NAME]
        if any(e.name not in START_FILES or not e.is_file() for e in entries):
            return
        if self.log_path.is_file() and self.log_path.stat().st_size:
            return
        for e in entries:
            e.unlink()
        self.lock.release()
        with contextlib.suppress(OSError):  # not empty: someone put something there meanwhile; leave it
            self.path.rmdir()

    def resume_command(self) -> str:
        return f"mox unlearn --resume --out {shlex.quote(str(self.path))}"

    # ------------------------------------------------------------------ the log

    def truncate_log(self, step: int) -> int | None:
        """Drop log lines written after the checkpoint we resume from (those steps run again), and any line
        cut short; rewritten atomically, so a second interruption here loses nothing. Returns the last step
        the log had (what the trackers were sent), None for an empty log."""
        if not self.log_path.is_file():
            return None
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()  # garbage: dropped
        steps = [_logged_step(line) for line in lines]
        keep = [line for line, s in zip(lines, steps) if s is not None and s <= step]
        write_text_atomic(self.log_path, "".join(line + "\n" for line in keep))
        return max((s for s in steps if s is not None), default=None)

    # ------------------------------------------------------------------ checkpoints

    def latest_checkpoint(self) -> Path | None:
        ckpts = sorted((self.path / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        return ckpts[-1] if ckpts else None

    def remove_partial_checkpoints(self) -> None:
        """Temp folders of checkpoints a kill interrupted mid-write (never renamed, so never resumed from)."""
        for tmp in (self.path / "checkpoints").glob(".tmp-step-*"):
            shutil.rmtree(tmp, ignore_errors=True)

    def save_checkpoint(self, accelerator, step: int, own_state: dict[str, Any] | None = None) -> None:
        """save_state into a temp folder, rename, then drop older checkpoints (only the latest is kept).
        `own_state`: file name -> state each rank saves for itself (FSDP: its shards of the momentum).

        A write that fails (full disk, file-size limit) removes its temp folder and leaves the previous
        checkpoint as it was; the files are fsync'ed before the rename."""
        ckdir = self.path / "checkpoints"
        tmp = ckdir / f".tmp-step-{step}"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        try:
            accelerator.save_state(str(tmp))
            for name, state in (own_state or {}).items():
                torch.save(state, tmp / name)
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                write_manifest(tmp)
            fsync_tree(tmp)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            reason = write_failure(e, within=tmp)
            if reason is None:
                raise
            previous = self.latest_checkpoint()
            kept = (
                f"the checkpoint {previous.name} is kept: free space and run `{self.resume_command()}`"
                if previous
                else f"no earlier checkpoint in {ckdir}: free space and run again"
            )
            raise MoxError(f"writing checkpoint step-{step} failed ({reason}); {kept}") from e
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            final = ckdir / f"step-{step}"
            shutil.rmtree(final, ignore_errors=True)  # a stale one of the same step (same state)
            os.replace(tmp, final)
            fsync_dir(ckdir)
            for old in ckdir.glob("step-*"):
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ outputs

    @contextlib.contextmanager
    def writing_outputs(self):
        """A failed write of the outputs (full disk, quota) becomes one line saying what is kept: every
        folder is written to a temp folder and renamed whole (nothing half-written), and the checkpoints
        are removed only after run.json, so --resume continues from the latest one."""
        try:
            yield
        except Exception as e:
            reason = e.reason if isinstance(e, WriteError) else write_failure(e)
            if reason is None:
                raise
            ckpt = self.latest_checkpoint()
            kept = (
                f"checkpoint {ckpt.name} kept: free space and run `{self.resume_command()}`"
                if ckpt
                else "no checkpoint to resume from: free space and run again"
            )
            where = e.path if isinstance(e, WriteError) else (e.filename if isinstance(e, OSError) else None)
            raise MoxError(f"writing the outputs failed: {reason}{f' ({where})' if where else ''}; {kept}") from e

    def finish(self, info: dict[str, Any], *, keep_checkpoints: bool) -> None:
        """run.json last; only then the checkpoints go (until it is written, --resume may need them)."""
        info = {**info, "config": portable_config(info["config"], self.path)}
        info["argv"] = portable_argv(info["argv"], self.path)
        info = portable(json.loads(json.dumps(redact(info), default=str)), self.path)
        write_text_atomic(self.path / "run.json", json.dumps(info, indent=2) + "\n")
        if not keep_checkpoints:
            shutil.rmtree(self.path / "checkpoints", ignore_errors=True)
        self.lock.release()


def data_fingerprint(**sets: Any) -> dict[str, Any]:
    """Per record set (forget, retain): its source, record count and a hash of its records."""
    out = {}
    for name, rs in sets.items():
        if rs is not None:
            digest = hashlib.sha256(json.dumps(rs.records, sort_keys=True).encode()).hexdigest()[:16]
            out[name] = {"source": rs.source, "records": len(rs.records), "sha256": digest}
    return out


def _logged_step(line: str) -> int | None:
    """The step of a log line; None for a line cut short (a kill or a full disk mid-write)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def prepare_run_dir(cfg: UnlearnConfig, *, resume: bool, overwrite: bool, main: bool = True) -> Path:
    """RunFolder.claim, returning the path."""
    return RunFolder.claim(cfg, resume=resume, overwrite=overwrite, main=main).path


def saved_config(out: str | Path) -> dict[str, Any]:
    """The resolved config of an earlier run (for `mox unlearn --resume --out DIR`), its local paths usable
    from here (written relative to the folder since data.json says so; as they were before)."""
    path = Path(out) / "config.yaml"
    if not path.is_file():
        raise MoxError(f"nothing to resume: {path} not found")
    config = read_run_file(path)
    return resolve_config(config, Path(out)) if paths_relative(out) else config


def paths_relative(run: str | Path) -> bool:
    """Whether the files of run folder `run` name local paths relative to it (io/portable.py)."""
    path = Path(run) / "data.json"
    return path.is_file() and read_run_file(path).get("paths") == PATHS_NOTE  # a damaged one: one line naming it


def read_run_file(path: Path) -> dict[str, Any]:
    """config.yaml or data.json of a run folder as a mapping; a damaged one is one line naming it."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise MoxError(f"{path} is damaged ({first_line(e)}); the run folder cannot be resumed") from None
    if not isinstance(data, dict):
        raise MoxError(f"{path} is damaged (not a mapping); the run folder cannot be resumed")
    return data


MANIFEST = "manifest.json"


def write_manifest(checkpoint: Path) -> None:
    """The size of every file of a checkpoint, written last into it: a file cut short or emptied later (a
    crash before the data reached the disk, a copy that stopped) is then found before it is loaded."""
    sizes = {str(p.relative_to(checkpoint)): p.stat().st_size for p in sorted(checkpoint.rglob("*")) if p.is_file()}
    (checkpoint / MANIFEST).write_text(json.dumps({"sizes": sizes}, indent=1) + "\n")


def check_checkpoint(checkpoint: Path) -> None:
    """Refuse a checkpoint whose files are not the ones its manifest lists (checkpoints written before the
    manifest existed are not checked: loading them says what is wrong)."""
    path = checkpoint / MANIFEST
    if not path.is_file():
        return
    advice = "it cannot be resumed: start again with --overwrite"
    try:
        sizes = json.loads(path.read_text(encoding="utf-8"))["sizes"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MoxError(f"checkpoint {checkpoint} is damaged ({MANIFEST}: {first_line(e)}); {advice}") from None
    for name, size in sizes.items():
        f = checkpoint / name
        if not f.is_file():
            raise MoxError(f"checkpoint {checkpoint} is damaged ({name} is missing); {advice}")
        if f.stat().st_size != size:
            raise MoxError(
                f"checkpoint {checkpoint} is damaged ({name} is {f.stat().st_size} bytes, was {size}); {advice}"
            )


_MISSING = object()


def _with_defaults(saved: Any, default: Any) -> Any:
    """A saved setting, with the (nested) keys it lacks taken from today's default; the default when missing."""
    if saved is _MISSING:
        return default
    if isinstance(saved, dict) and isinstance(default, dict):
        return {**default, **saved}
    return saved
