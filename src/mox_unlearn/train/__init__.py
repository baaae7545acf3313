"""The one training loop, on Hugging Face `accelerate`.

Every step draws a forget micro-batch and a retain micro-batch (data/pairing.py), runs each forward
pass the objective needs exactly once (the trained model on forget / retain / target answers, the
frozen reference under `no_grad`), hands the tensors to the pure objective (losses/), and steps
AdamW with a linear warm-up/decay schedule. Methods that extrapolate (MOX) then turn the trained
model θ_mem into θ_for = θ_ref + α(θ_ref − θ_mem) (Eq. 8), or into the momentum average (Eq. 10).

Stopping safely (guards.py): Ctrl-C / SIGTERM, a non-finite loss or gradient norm (on_nonfinite) and
the collapse guard (collapse_probe_every) act at a step boundary, agreed by every process, and leave a
checkpoint that `mox unlearn --resume --out OUT` continues from; a kill (SIGKILL) loses at most the
steps since the latest checkpoint. Resuming reaches bitwise the weights of an uninterrupted run on CPU
(tests/test_interrupt.py): model, optimizer, scheduler, momentum, step counter and RNG states are
checkpointed, and the data order is a function of (seed, epoch).

Where things are:
  run.py     TrainingRun: the phases of a run (check, start, stage, models, optimizer, restore, train,
             outputs) and the step loop; `unlearn(cfg)` is the entry point; Callback for hooks
  setup.py   the config resolved against the method and objective registries, the data read
  spaces.py  weight spaces (full, FSDP-sharded, LoRA): θ_ref, trainable weights, momentum,
             extrapolation and the outputs
  folder.py  the run folder: claim, start files, log, checkpoints, run.json
  plan.py    step arithmetic and the split of a micro-batch over processes
A method's own targets, stage or inputs are plug-ins of the method (methods/), not of the loop.
"""

from mox_unlearn.train.folder import RESUME_FREE_KEYS, RunFolder, prepare_run_dir, saved_config
from mox_unlearn.train.plan import Plan, Progress, make_plan, slice_for_process, step_token_norms
from mox_unlearn.train.run import Callback, TrainingRun, unlearn
from mox_unlearn.train.setup import Resolved, effective_needs, load_data, mixed_precision, resolve
from mox_unlearn.train.spaces import save_model

__all__ = [
    "RESUME_FREE_KEYS",
    "Callback",
    "Plan",
    "Progress",
    "Resolved",
    "RunFolder",
    "TrainingRun",
    "effective_needs",
    "load_data",
    "make_plan",
    "mixed_precision",
    "prepare_run_dir",
    "resolve",
    "save_model",
    "saved_config",
    "slice_for_process",
    "step_token_norms",
    "unlearn",
]
