"""What a method runs before training or adds to a step's inputs (plug-ins of the method, not of the loop).

ReinforceStage  WHP's reinforced model: θ_ref fine-tuned further on the forget set with plain NLL, run
                as a nested run in OUT/reinforce (reused when it finished before) and read frozen.
rmu_control     RMU's fixed random unit direction u (WMDP: uniform [0, 1), then normalised), seeded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from mox_unlearn.train.run import TrainingRun


class Stage:
    """A step before training whose output is a model folder the objective reads, frozen, as `reinforced`."""

    name = "custom"

    def run(self, run: TrainingRun) -> Path:
        raise NotImplementedError


class ReinforceStage(Stage):
    name = "reinforce"

    def run(self, run: TrainingRun) -> Path:
        from mox_unlearn import guards
        from mox_unlearn.train import unlearn

        cfg, out = run.cfg, run.folder.path
        stage_out = out / "reinforce"
        if (stage_out / "run.json").is_file():
            return stage_out / "model"
        sub = dataclasses.replace(
            cfg,
            method="finetune",
            objective=None,
            loss={},
            out=str(stage_out),
            retain=None,
            momentum=False,
            targeted=False,
            trainable=None,
            epochs=cfg.reinforce_epochs or cfg.epochs,
            lr=cfg.reinforce_lr or cfg.lr,
            max_steps=cfg.reinforce_max_steps,
            save_memorized=False,
            prompt=dataclasses.replace(cfg.prompt),
        )
        resume = (stage_out / "checkpoints").is_dir() and any((stage_out / "checkpoints").glob("step-*"))
        try:
            unlearn(sub, resume=resume, overwrite=not resume, argv=["(reinforce stage)"], callbacks=run.callbacks)
        except guards.RunInterrupted:  # the stage resumes with its run: name the run's folder, not the stage's
            raise guards.RunInterrupted(
                f"interrupted in the reinforce stage; checkpoint saved, resume with: {run.folder.resume_command()}"
            ) from None
        return stage_out / "model"


def rmu_control(run: TrainingRun) -> dict[str, Any]:
    g = torch.Generator().manual_seed(run.cfg.seed)
    u = torch.rand(run.model.config.hidden_size, generator=g)
    return {"control": (u / u.norm()).to(run.accelerator.device)}
