"""Membership-inference attack scores from AnswerStats, shared by TOFU (answers) and MUSE (raw texts).

Model-free given the statistics: LOSS, zlib and Min-K%++ read an item's AnswerStats (the scored
tokens, EOS position dropped where there is one; `moments` needed for Min-K%++). The scores themselves
are the pure functions of metrics.py; GradNorm and the reference attack need a model and stay in tofu.py.
"""

from __future__ import annotations

from collections.abc import Sequence

from mox_unlearn.evaluate import metrics as M
from mox_unlearn.evaluate.stats import AnswerStats

STAT_ATTACKS = ("loss", "zlib", "min_k_plus_plus")


def scored_text(tokenizer, s: AnswerStats) -> str:
    """The scored tokens, EOS position dropped, decoded as open-unlearning's zlib attack decodes them."""
    ids = s.input_ids[len(s.input_ids) - s.n_tokens :]
    ids = ids[:-1] if s.ends_with_eos else ids
    return tokenizer.decode(list(ids), skip_special_tokens=True)


def stat_scores(tokenizer, stats: Sequence[AnswerStats], k: float) -> dict[str, list[float]]:
    """LOSS, zlib and Min-K%++ scores of each item (higher = less likely to have been trained on)."""
    return {
        "loss": [M.loss_score(s.nll_avg) for s in stats],
        "zlib": [M.zlib_score(s.nll_avg, scored_text(tokenizer, s)) for s in stats],
        "min_k_plus_plus": [M.min_k_plus_plus_score(s.content_logps, *s.content_moments, k=k) for s in stats],
    }


def attack_metric(forget: Sequence[float], holdout: Sequence[float], **extra) -> dict:
    """One attack's result entry: its AUC in MUSE's orientation (`value`), open-unlearning's
    (`auc_open_unlearning` = 1 − value), and the per-item scores of both sides."""
    auc = M.mia_auc(forget, holdout)
    return {
        "value": float(auc),
        "per_item": None,
        **extra,
        "auc_open_unlearning": 1.0 - float(auc),
        "forget_scores": [float(x) for x in forget],
        "holdout_scores": [float(x) for x in holdout],
    }
