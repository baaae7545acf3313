"""Tensors handed to objectives, the objective registry, and the small terms objectives share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from mox_unlearn.errors import MoxError

IGNORE_INDEX = -100


@dataclass
class SeqStats:
    """Per-token log-probabilities of the labelled (answer) tokens of a batch.

    token_logps: [B, T-1] log p(label_t | tokens_<t), 0 where not an answer token.
    mask:        [B, T-1] bool, True on answer tokens (labels != -100 after the causal shift).
    """

    token_logps: torch.Tensor
    mask: torch.Tensor

    def seq_logp(self) -> torch.Tensor:
        """[B] sequence log-prob log p(y|x), summed over answer tokens."""
        return self.token_logps.sum(dim=-1)

    def n_tokens(self) -> torch.Tensor:
        """[B] number of answer tokens of each sequence."""
        return self.mask.sum(dim=-1)

    def nll(self) -> torch.Tensor:
        """Mean token cross-entropy over all answer tokens of the batch (tokens pooled, as HF does)."""
        return -self.token_logps.sum() / self.mask.sum().clamp(min=1)


@dataclass
class LossInputs:
    """Everything an objective may read; the loop fills only what the objective declares it needs.

    forget / retain / target: the trained model's stats on the forget batch, the retain batch and the
    targeted batch (forget prompts -> refusal answers). ref_*: the same under the frozen reference.
    retain_logits / ref_retain_logits: [N, V] logits at the N retain answer positions, for KL terms.
    """

    forget: SeqStats | None = None
    retain: SeqStats | None = None
    target: SeqStats | None = None
    ref_forget: SeqStats | None = None
    ref_retain: SeqStats | None = None
    retain_logits: torch.Tensor | None = None
    ref_retain_logits: torch.Tensor | None = None


# Names an objective can list in `needs`; each is one forward pass (or a slice of one) in the loop.
NEEDS = frozenset(LossInputs.__dataclass_fields__)


@dataclass(frozen=True)
class LossSpec:
    name: str
    fn: Callable[..., tuple[torch.Tensor, dict[str, float]]]
    needs: frozenset[str]
    defaults: dict[str, float]


LOSSES: dict[str, LossSpec] = {}


def register_loss(name: str, needs: tuple[str, ...], **defaults: float):
    """Decorator adding an objective to LOSSES, with the inputs it reads and its default hyper-parameters."""
    unknown = set(needs) - NEEDS
    if unknown:
        raise ValueError(f"unknown needs {sorted(unknown)} for loss {name}")

    def wrap(fn):
        LOSSES[name] = LossSpec(name, fn, frozenset(needs), dict(defaults))
        return fn

    return wrap


def get_loss(name: str) -> LossSpec:
    if name not in LOSSES:
        raise MoxError(f"unknown objective {name!r}; valid objectives: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def sequence_stats(logits: torch.Tensor, labels: torch.Tensor) -> SeqStats:
    """Shift logits [B, T, V] against labels [B, T] and gather the label log-probs (computed in fp32)."""
    logits = logits[:, :-1, :].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    logps = torch.log_softmax(logits, dim=-1)
    picked = logps.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return SeqStats(token_logps=picked * mask, mask=mask)


def answer_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[N, V] logits at the N positions that predict an answer token (same shift as sequence_stats)."""
    mask = labels[:, 1:] != IGNORE_INDEX
    return logits[:, :-1, :][mask]


def kl_ref_to_policy(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Token-mean KL(p_ref || p_θ) over the vocabulary: mean_n Σ_v p_ref (log p_ref − log p_θ).

    Both [N, V]; N = answer tokens pooled over the batch. Zero tokens gives 0.
    """
    if ref_logits.shape[0] == 0:
        return logits.sum() * 0.0
    ref_logps = torch.log_softmax(ref_logits.float(), dim=-1)
    logps = torch.log_softmax(logits.float(), dim=-1)
    return F.kl_div(logps, ref_logps, log_target=True, reduction="batchmean")
