"""Experiment trackers (TensorBoard, Weights & Biases, MLflow) through accelerate's own tracking.

`log_with` (config key; default none, so runs stay offline) names them; `all` is those of the three that
are installed. The resolved config, redacted and
with local paths relative to the run folder, goes in as hyper-parameters (flattened: ``prompt.boundary``,
``loss.beta``); every log.jsonl record is logged as metrics at its optimizer step (loss parts, lr, the
collapse probe's rate); the final losses and the α selection at the end (as ``final/<name>``). accelerate
gets OUT/trackers as its logging_dir: TensorBoard writes its event files there; wandb and MLflow follow
accelerate's handling and their own environment settings (e.g. WANDB_MODE=offline, MLFLOW_TRACKING_URI).

After `--resume` each tracker shows every step once and the run goes on in the same tracker run: the wandb and
MLflow run ids are kept in OUT/trackers/runs.json and passed back to them; the steps trained again after the
checkpoint are not sent again to wandb and MLflow, which already have them (a resumed run repeats them), and
TensorBoard's new writer purges its own copies of them and takes the new ones.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mox_unlearn.errors import MoxError

TRACKERS = ("none", "tensorboard", "wandb", "mlflow", "all")
# the package each tracker needs (accelerate's TensorBoard tracker also takes tensorboardX)
_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}
TRACKER_DIR = "trackers"
RUN_IDS = "runs.json"  # in TRACKER_DIR: the wandb / MLflow run each tracker logs to, so --resume continues it
_KEEP_STEPS = ("wandb", "mlflow")  # trackers that keep a step they have (TensorBoard purges and takes it again)


def installed(tracker: str) -> bool:
    return any(importlib.util.find_spec(p) is not None for p in _PACKAGES[tracker])


def check_log_with(value: str) -> None:
    """A known tracker whose package is installed, or a one-line error before anything runs."""
    if value not in TRACKERS:
        raise MoxError(f"log_with must be one of {', '.join(TRACKERS)}, got {value!r}")
    if value == "all" and not accelerate_log_with(value):
        raise MoxError(f"log_with=all: none of {', '.join(_PACKAGES)} is installed (pip install tensorboard)")
    if value not in ("none", "all") and not installed(value):
        raise MoxError(f"log_with={value} needs the {_PACKAGES[value][0]} package: pip install {_PACKAGES[value][0]}")


def accelerate_log_with(value: str) -> list[str] | None:
    """accelerate's `log_with` for our setting. `all` is every one of our three trackers that is installed,
    not accelerate's "all", which would also start any other tracker package it finds (Comet, Aim, ...,
    some of them sending to a server)."""
    if value == "none":
        return None
    return [t for t in _PACKAGES if installed(t)] if value == "all" else [value]


def flat_hparams(config: Mapping[str, Any], prefix: str = "") -> dict[str, int | float | str | bool]:
    """A nested config as one level of scalars, as trackers take hyper-parameters: nested keys dotted,
    lists as JSON, None as "null" (TensorBoard's hparams refuse None and lists)."""
    out: dict[str, int | float | str | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_hparams(value, f"{name}."))
        elif value is None:
            out[name] = "null"
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value, default=str)
    return out


def numeric(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a log record (strings such as a skipped step's reason are not metrics)."""
    return {
        f"{prefix}{k}": float(v)
        for k, v in record.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"
    }


class Trackers:
    """The run's trackers on the main process; every method does nothing when log_with is none."""

    def __init__(self, accelerator, log_with: str, run: Path):
        self.acc, self.on = accelerator, log_with != "none"
        self.run = run
        self.logged_through: int | None = None

    def start(
        self, name: str, config: Mapping[str, Any], resumed_at: int | None = None, logged_through: int | None = None
    ) -> None:
        """Open the trackers. `resumed_at`: the checkpoint's step a --resume continues from; `logged_through`:
        the last step the interrupted session logged. The steps in between are trained and logged again:
        TensorBoard purges its copies (purge_step); wandb and MLflow continue their run (the ids in
        runs.json) and are not sent the steps they already have."""
        if not self.on:
            return
        folder = self.run / TRACKER_DIR
        folder.mkdir(exist_ok=True)
        kwargs: dict[str, dict[str, Any]] = {}
        if resumed_at is not None:
            ids = read_run_ids(folder)
            kwargs["tensorboard"] = {"purge_step": resumed_at + 1}
            if "wandb" in ids:
                kwargs["wandb"] = {"id": ids["wandb"], "resume": "allow"}
            if "mlflow" in ids:
                kwargs["mlflow"] = {"run_id": ids["mlflow"]}
            self.logged_through = logged_through
        self.acc.init_trackers(name, config=flat_hparams(config), init_kwargs=kwargs)
        if self.acc.is_main_process:
            ids = {t.name: run_id(t) for t in self.acc.trackers if t.name in _KEEP_STEPS}
            if ids:
                from mox_unlearn.io.atomic import write_text_atomic

                write_text_atomic(folder / RUN_IDS, json.dumps({k: v for k, v in ids.items() if v}) + "\n")

    def log(self, record: Mapping[str, Any], step: int) -> None:
        self._send(numeric(record), step)

    def finish(self, summary: Mapping[str, Any], step: int) -> None:
        self.logged_through = None  # the final numbers are new to every tracker
        self._send(numeric(summary, "final/"), step)
        self.close()

    def _send(self, values: dict[str, float], step: int) -> None:
        if self.on and self.acc.is_main_process:
            again = self.logged_through is not None and step <= self.logged_through
            for tracker in self.acc.trackers:
                if not (again and tracker.name in _KEEP_STEPS):
                    tracker.log(values, step=step)

    def close(self) -> None:
        """Flush and close the trackers (also after a failure, so what was logged is on disk); once."""
        if self.on:
            self.on = False
            for tracker in self.acc.trackers:  # not acc.end_training(): it also ends the process group, which
                tracker.finish()  # the run still needs (its last barrier) and accelerate tears down itself


def run_id(tracker) -> str | None:
    """The id of the wandb or MLflow run a started accelerate tracker logs to."""
    if tracker.name == "wandb":
        return getattr(getattr(tracker, "run", None), "id", None)
    active = getattr(tracker, "active_run", None)
    return getattr(getattr(active, "info", None), "run_id", None)


def read_run_ids(folder: Path) -> dict[str, str]:
    """runs.json of an interrupted run ({} where it has none or it cannot be read: a new tracker run)."""
    try:
        ids = json.loads((folder / RUN_IDS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in ids.items() if isinstance(v, str)} if isinstance(ids, dict) else {}
