"""The paper's analyses as `mox experiment NAME`: each a function of a Workspace that writes a table and a plot.

Adding an analysis = one function returning {"rows", "files"} + one line in EXPERIMENTS.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from mox_unlearn.errors import MoxError
from mox_unlearn.experiments.workspace import ExperimentConfig, Workspace

# name -> (module:function, what it reproduces)
EXPERIMENTS: dict[str, tuple[str, str]] = {
    "table": ("training:table", "every method and MOX over α on the workspace's models (Table 1)"),
    "sweep": ("training:sweep", "α and η sensitivity from one θ_mem (Fig. 3)"),
    "stability": ("training:stability", "GA / NPO forget weight 1..5 against MOX α (Fig. 4)"),
    "forget-size": ("training:forget_size", "forget 1% / 5% / 10% (Fig. 5)"),
    "trajectory": ("training:trajectory", "FQ and MU after every epoch (Fig. 7)"),
    "collapse": ("training:collapse", "collapse score and most-frequent-token rate per epoch (Eq. 7, Def. 2.2)"),
    "continual": ("training:continual", "unlearn 1% then 5% then 10% in sequence (Fig. 8)"),
    "directions": (
        "directions:directions",
        "cosines of the updates θ_mem, θ_for, momentum θ_for, GA, NPO from θ_ref, overall and per layer (Fig. 6)",
    ),
    "efficiency": (
        "efficiency:efficiency",
        "FLOPs per sample of a MOX vs NPO step, extrapolation cost, memory, CPU overlap (Sec. 3.2)",
    ),
    "overlap": (
        "attacks:overlap",
        "forget a 10% sample of the retain facts, retain the rest: MOX vs GA vs IdkPO (Table 5)",
    ),
    "relearn": (
        "attacks:relearn",
        "relearning attack: fine-tune on half the forget set, score the other half (Table 6)",
    ),
    "select-alpha": (
        "selection:select_alpha_experiment",
        "α chosen without a retrained model (retain tolerance + forget-vs-holdout KS) vs the best true FQ",
    ),
    "frontier": (
        "frontier:frontier",
        "every method tuned on equal terms (lr grid, α or stopping epoch) over seeds; picks by the oracle and a retrain-free rule",
    ),
    "examples": ("attacks:examples", "greedy forget answers of original / retrained / MOX / baselines (Table 4)"),
}


def get_experiment(name: str) -> Callable[[Workspace], dict]:
    if name not in EXPERIMENTS:
        raise MoxError(f"unknown experiment {name!r}; valid: {', '.join(EXPERIMENTS)}")
    module, func = EXPERIMENTS[name][0].split(":")
    return getattr(importlib.import_module(f"mox_unlearn.experiments.{module}"), func)


def run_experiment(name: str, cfg: ExperimentConfig, out: Path, cache_dir: Path) -> dict:
    """Run one experiment in the workspace OUT, held by this process while it runs (a second `mox
    experiment` or `mox demo` into it is refused rather than computing and writing the same files twice)."""
    from mox_unlearn.io.atomic import held_folder

    fn = get_experiment(name)
    with held_folder(out, "workspace"):
        return fn(Workspace(cfg, out, cache_dir))  # with base=, the workspace fine-tunes its models here


__all__ = ["EXPERIMENTS", "ExperimentConfig", "Workspace", "get_experiment", "run_experiment"]
