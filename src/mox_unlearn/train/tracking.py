"""Experiment trackers (TensorBoard, Weights & Biases, MLflow) through accelerate's own tracking.

`log_with` (config key; default none, so runs stay offline) names them; `all` is those of the three that
are installed. The resolved config, redacted and
with local paths relative to the run folder, goes in as hyper-parameters (flattened: ``prompt.boundary``,
``loss.beta``); every log.jsonl record is logged as metrics at its optimizer step (loss parts, lr, the
collapse probe's rate); the final losses and the α selection at the end (as ``final/<name>``). accelerate
gets OUT/trackers as its logging_dir: TensorBoard writes its event files there; wandb and MLflow follow
accelerate's handling and their own environment settings (e.g. WANDB_MODE=offline, MLFLOW_TRACKING_URI).
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

    def start(self, name: str, config: Mapping[str, Any], resumed_at: int | None = None) -> None:
        """Open the trackers; `resumed_at`: the checkpoint's step a --resume continues from. The steps after
        it were logged by the interrupted session and are logged again, so TensorBoard purges the first
        ones (purge_step); wandb and MLflow start a new run of their own."""
        if self.on:
            (self.run / TRACKER_DIR).mkdir(exist_ok=True)
            kwargs = {"tensorboard": {"purge_step": resumed_at + 1}} if resumed_at is not None else {}
            self.acc.init_trackers(name, config=flat_hparams(config), init_kwargs=kwargs)

    def log(self, record: Mapping[str, Any], step: int) -> None:
        if self.on:
            self.acc.log(numeric(record), step=step)

    def finish(self, summary: Mapping[str, Any], step: int) -> None:
        if self.on:
            self.acc.log(numeric(summary, "final/"), step=step)
        self.close()

    def close(self) -> None:
        """Flush and close the trackers (also after a failure, so what was logged is on disk); once."""
        if self.on:
            self.on = False
            for tracker in self.acc.trackers:  # not acc.end_training(): it also ends the process group, which
                tracker.finish()  # the run still needs (its last barrier) and accelerate tears down itself
