"""The forward passes of one training step, turned into the LossInputs an objective reads.

Each pass runs at most once per step and only when the objective lists what it produces in its
`needs`. Reference-model sequence log-probs on data that never changes during a run (the forget
answers, the target answers) are computed once per example and cached (`RefCache`), which saves a
reference forward per step for NPO, DPO, AltPO and MOX's preference objective.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import torch

from mox_unlearn.losses import LossInputs, SeqStats, answer_logits, sequence_stats
from mox_unlearn.losses.base import IGNORE_INDEX


@dataclass
class StepBatch:
    """One micro-batch: forget, retain and target examples (collated tensors) plus cache keys."""

    forget: dict[str, torch.Tensor]
    forget_keys: list[Hashable]
    retain: dict[str, torch.Tensor] | None = None
    target: dict[str, torch.Tensor] | None = None
    target_keys: list[Hashable] = field(default_factory=list)
    norms: dict[str, float] = field(default_factory=dict)  # token-mean divisors per kind (SeqStats.norm)


def answer_tokens(batch: dict[str, torch.Tensor] | None) -> int:
    """Answer tokens of a collated batch: positions whose next-token label is not ignored."""
    return 0 if batch is None else int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


@dataclass
class Pass:
    stats: SeqStats | None = None
    logits: torch.Tensor | None = None  # [N, V] at answer positions
    hidden: torch.Tensor | None = None  # [N, H] at answer positions


def forward(
    model, batch: dict[str, torch.Tensor], *, stats: bool = True, logits: bool = False, hidden_layer: int | None = None
) -> Pass:
    """One forward pass; returns the answer-token statistics asked for."""
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        output_hidden_states=hidden_layer is not None,
    )
    result = Pass()
    if stats:
        result.stats = sequence_stats(out.logits, batch["labels"])
    if logits:
        result.logits = answer_logits(out.logits, batch["labels"])
    if hidden_layer is not None:
        # hidden_states[0] is the embedding output, so layer ℓ's output is at index ℓ + 1. [B, T, H]
        result.hidden = out.hidden_states[hidden_layer + 1][batch["labels"] != IGNORE_INDEX]
    return result


class RefCache:
    """Reference-model SeqStats per example, computed on first use and then reused.

    Valid because θ_ref is frozen and the examples never change; rows are stored at their true
    length and re-padded to each batch, so the cached stats equal recomputed ones.
    """

    def __init__(self, ref, enabled: bool = True):
        self.ref = ref
        self.enabled = enabled
        self.store: dict[Hashable, tuple[torch.Tensor, torch.Tensor]] = {}
        self.hits = self.misses = 0

    @torch.no_grad()
    def stats(self, batch: dict[str, torch.Tensor], keys: list[Hashable]) -> SeqStats:
        if not self.enabled:
            return forward(self.ref, batch).stats
        lengths = batch["attention_mask"].sum(-1).tolist()
        missing = [row for row, key in enumerate(keys) if key not in self.store]
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        if missing:
            longest = max(lengths[row] for row in missing)
            sub = {k: v[missing, :longest] for k, v in batch.items()}
            computed = forward(self.ref, sub).stats
            for i, row in enumerate(missing):
                n = lengths[row] - 1  # positions that predict a next token
                self.store[keys[row]] = (computed.token_logps[i, :n].clone(), computed.mask[i, :n].clone())
        width = batch["input_ids"].shape[1] - 1
        device = batch["input_ids"].device
        token_logps = torch.zeros(len(keys), width, device=device)
        mask = torch.zeros(len(keys), width, dtype=torch.bool, device=device)
        for row, key in enumerate(keys):
            lp, m = self.store[key]
            token_logps[row, : lp.numel()] = lp
            mask[row, : m.numel()] = m
        return SeqStats(token_logps, mask)


@dataclass
class Models:
    """The models a step may run: the trained one, the frozen reference, WHP's reinforced model."""

    model: object
    ref: object | None = None
    reinforced: object | None = None
    cache: RefCache | None = None
    hidden_layer: int | None = None
    control: torch.Tensor | None = None  # RMU's fixed random unit vector [H]
    dual: object | None = None  # PDU's dual variable (methods/dual.py): its `.value` goes to LossInputs.dual


def label_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([N] label ids, [N] index of each within its answer) at the positions that predict an answer token,
    in the order of answer_logits. The index counts the answer's tokens before the shift, as open-unlearning's
    CE-U does: for QA data the first target is index 0; for raw text (labels from position 0) the first token
    is index 0 and never a target, so the first target is index 1."""
    index = (labels != IGNORE_INDEX).long().cumsum(dim=-1) - 1
    targets, index = labels[:, 1:], index[:, 1:]
    mask = targets != IGNORE_INDEX
    return targets[mask], index[mask]


def build_inputs(needs: frozenset[str], m: Models, batch: StepBatch) -> LossInputs:
    """Run each forward pass the objective needs once and collect the tensors it reads (and nothing
    else: e.g. MOX's KL reads retain logits only, so no log-softmax of the retain labels is computed)."""
    inputs = LossInputs(norms=dict(batch.norms))
    layer = m.hidden_layer
    if needs & {"forget", "forget_logits", "forget_hidden"}:
        p = forward(
            m.model,
            batch.forget,
            stats="forget" in needs,
            logits="forget_logits" in needs,
            hidden_layer=layer if "forget_hidden" in needs else None,
        )
        inputs.forget, inputs.forget_logits, inputs.forget_hidden = p.stats, p.logits, p.hidden
        if inputs.forget is not None:
            inputs.forget.norm = batch.norms.get("forget")
    if batch.retain is not None and needs & {"retain", "retain_logits", "retain_hidden"}:
        p = forward(
            m.model,
            batch.retain,
            stats="retain" in needs,
            logits="retain_logits" in needs,
            hidden_layer=layer if "retain_hidden" in needs else None,
        )
        inputs.retain, inputs.retain_logits, inputs.retain_hidden = p.stats, p.logits, p.hidden
        if inputs.retain is not None:
            inputs.retain.norm = batch.norms.get("retain")
    if batch.target is not None and "target" in needs:
        inputs.target = forward(m.model, batch.target).stats
        inputs.target.norm = batch.norms.get("target")
    with torch.no_grad():
        if "ref_forget" in needs:
            inputs.ref_forget = m.cache.stats(batch.forget, batch.forget_keys)
        if "ref_target" in needs and batch.target is not None:
            inputs.ref_target = m.cache.stats(batch.target, batch.target_keys)
        if "ref_forget_logits" in needs:
            inputs.ref_forget_logits = forward(m.ref, batch.forget, stats=False, logits=True).logits
        if "reinforced_forget_logits" in needs:
            inputs.reinforced_forget_logits = forward(m.reinforced, batch.forget, stats=False, logits=True).logits
        if batch.retain is not None and needs & {"ref_retain", "ref_retain_logits", "ref_retain_hidden"}:
            p = forward(
                m.ref,
                batch.retain,
                stats="ref_retain" in needs,
                logits="ref_retain_logits" in needs,
                hidden_layer=layer if "ref_retain_hidden" in needs else None,
            )
            inputs.ref_retain, inputs.ref_retain_logits, inputs.ref_retain_hidden = p.stats, p.logits, p.hidden
    if "forget_labels" in needs or "forget_label_index" in needs:
        inputs.forget_labels, inputs.forget_label_index = label_positions(batch.forget["labels"])
    if "dual" in needs:
        inputs.dual = m.dual.value
    if "control" in needs:
        inputs.control = m.control
    return inputs
