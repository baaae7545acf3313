"""Unlearning objectives as pure functions over tensors.

Each objective has the signature ``loss(inputs: LossInputs, **hyper_parameters) -> (loss, logs)``
and never touches a model: the training loop does every forward pass once and hands over the
per-token log-probabilities (and, where a KL term needs them, answer-position logits). Adding an
objective = one function + one ``@register_loss`` line + one test row.
"""

from mox_unlearn.losses import baselines as _baselines  # noqa: F401
from mox_unlearn.losses import memorize as _memorize  # noqa: F401  (registers its objectives)
from mox_unlearn.losses import token_level as _token_level  # noqa: F401
from mox_unlearn.losses.base import (
    LOSSES,
    LossInputs,
    LossSpec,
    SeqStats,
    answer_logits,
    get_loss,
    register_loss,
    sequence_stats,
)

__all__ = [
    "LOSSES",
    "LossInputs",
    "LossSpec",
    "SeqStats",
    "answer_logits",
    "get_loss",
    "register_loss",
    "sequence_stats",
]
