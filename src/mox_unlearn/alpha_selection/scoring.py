"""Scoring one model for α selection: the selection data (retain, forget, holdout) and the per-item
membership scores whose KS test says whether the forget set looks unseen."""

from __future__ import annotations

import gc
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mox_unlearn.alpha_selection.rule import MIN_K, SCORES, check_rule_settings, fmt_alpha
from mox_unlearn.config import SelectionSettings
from mox_unlearn.data import PromptFormat, RecordSet, encode_records, load_records
from mox_unlearn.data.records import record_key
from mox_unlearn.errors import MoxError

# ----------------------------------------------------------------------------- settings and data


def check_grid(values: Sequence[Any], name: str = "α grid", hint: str = " (extrapolation needs α > 0)") -> list[float]:
    """A valid grid of positive numbers, ascending: non-empty, numbers, finite, > 0, no duplicates. `name`
    starts every error message (the frontier checks its learning-rate grids with it too)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise MoxError(f"{name} must be a list of numbers, got {values!r}")
    numbers = []
    for a in values:
        try:
            if isinstance(a, bool):
                raise ValueError
            numbers.append(float(a))
        except (TypeError, ValueError):
            raise MoxError(f"{name}: {a!r} is not a number") from None
    if not numbers:
        raise MoxError(f"{name} is empty")
    for a in numbers:
        if not math.isfinite(a) or a <= 0:
            raise MoxError(f"{name}: {a:g} is not a finite number > 0{hint}")
    if len(set(numbers)) != len(numbers):
        dupes = sorted({a for a in numbers if numbers.count(a) > 1})
        raise MoxError(f"{name}: duplicate values {', '.join(map(fmt_alpha, dupes))}")
    return sorted(numbers)


def check_settings(s: SelectionSettings) -> list[float]:
    """Every setting of a selection, checked before any model is loaded; returns the sorted grid."""
    grid = check_grid(s.grid)
    check_rule_settings(s.tolerance, s.p_min)
    if s.score not in SCORES:
        raise MoxError(f"unknown score {s.score!r}; valid: {', '.join(SCORES)}")
    max_items = s.max_items
    if max_items is not None and (isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1):
        raise MoxError(f"max_items must be an integer >= 1, got {max_items!r}")
    return grid


@dataclass(frozen=True)
class SelectionData:
    forget: RecordSet
    holdout: RecordSet
    retain: RecordSet  # already capped to max_items


def _as_records(data: str | Path | RecordSet, name: str) -> RecordSet:
    return data if isinstance(data, RecordSet) else load_records(str(data), name=name)


def spread_sample(rs: RecordSet, max_items: int | None) -> RecordSet:
    """At most max_items records spread evenly over the set (deterministic; a prefix would cover only the
    first few authors of an author-ordered set like TOFU's)."""
    if max_items is None or len(rs) <= max_items:
        return rs
    idx = np.unique(np.linspace(0, len(rs) - 1, max_items).round().astype(int))
    return RecordSet(rs.kind, [rs.records[i] for i in idx], rs.source)


def _check_perturbed(rs: RecordSet, name: str) -> None:
    if rs.kind != "qa":
        raise MoxError(f"score truth_ratio needs question/answer records; the {name} set ({rs.source}) is raw text")
    for i, r in enumerate(rs.records):
        pert = r.get("perturbed_answer")
        if not isinstance(pert, list) or not pert or not all(isinstance(a, str) for a in pert):
            raise MoxError(
                f"score truth_ratio needs a perturbed_answer list in every {name} record; "
                f"{rs.source}[{i}] has none (use score min_k)"
            )


def load_selection_data(
    forget: str | Path | RecordSet,
    holdout: str | Path | RecordSet,
    retain: str | Path | RecordSet,
    *,
    score: str = "min_k",
    max_items: int | None = 100,
) -> SelectionData:
    """Read and check the three sets (before any model is loaded, so bad data fails fast)."""
    f, h, r = _as_records(forget, "forget"), _as_records(holdout, "holdout"), _as_records(retain, "retain")
    if f.kind != h.kind:
        raise MoxError(
            f"forget ({f.kind}) and holdout ({h.kind}) sets must be of the same kind to compare their scores"
        )
    _check_unseen(f, h)
    if score == "truth_ratio":
        _check_perturbed(f, "forget")
        _check_perturbed(h, "holdout")
    return SelectionData(f, h, spread_sample(r, max_items))


def _check_unseen(forget: RecordSet, holdout: RecordSet) -> None:
    """A holdout record that is also a forget record makes the KS test compare the forget set with itself,
    which finds them alike at any α: the largest α would be picked for no reason."""
    seen = {record_key(r, forget.kind) for r in forget.records}
    shared = sum(record_key(r, holdout.kind) in seen for r in holdout.records)
    if shared:
        raise MoxError(
            f"{shared} of {len(holdout)} holdout records are forget records ({holdout.source}); the holdout set "
            "must be like the forget set but never trained on, or the test finds them alike at any α"
        )


# ----------------------------------------------------------------------------- scoring one model


@dataclass
class ScoreSettings:
    score: str = "min_k"
    k: float = MIN_K
    fmt: PromptFormat = field(default_factory=PromptFormat)
    batch_size: int = 16
    max_new_tokens: int = 200
    max_length: int = 512
    desc: bool = False  # progress bars


def _nan_safe(fn, *args, **kw) -> float:
    """A statistic of model outputs, NaN where the outputs are not finite (an extreme α can overflow)."""
    try:
        value = float(fn(*args, **kw))
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def _membership_scores(model, tok, rs: RecordSet, s: ScoreSettings, name: str) -> np.ndarray:
    """Per-item scores whose forget-vs-holdout distributions are compared (higher = less likely to the model)."""
    from mox_unlearn.evaluate import metrics as M
    from mox_unlearn.evaluate.stats import score_continuations, score_examples

    kw = dict(batch_size=s.batch_size, desc=f"{name}: answers" if s.desc else None)
    if s.score == "min_k":
        stats = score_examples(
            model, encode_records(tok, rs, s.fmt, s.max_length), tok.pad_token_id, eos_id=tok.eos_token_id, **kw
        )
        # EOS dropped, as in TOFU's min-k MIA (evaluate/tofu.py) and open-unlearning
        return np.array([_nan_safe(M.min_k_score, st.content_logps, s.k) for st in stats])
    questions = [r["question"] for r in rs.records]
    true = [
        r.get("paraphrased_answer") if isinstance(r.get("paraphrased_answer"), str) else r["answer"] for r in rs.records
    ]
    lists = [[t, *r["perturbed_answer"]] for t, r in zip(true, rs.records)]
    scored = score_continuations(model, tok, questions, lists, s.fmt, max_length=s.max_length, **kw)
    t, p = [row[0] for row in scored], [row[1:] for row in scored]
    # R = P_pert / P_true per item, as TOFU's truth ratio (exp of NLL differences)
    return np.array(
        [
            _nan_safe(lambda a, b: M.truth_ratio([a], [b])[0], ts.nll_avg, [x.nll_avg for x in ps])
            for ts, ps in zip(t, p)
        ]
    )


def ks_test(forget: np.ndarray, holdout: np.ndarray) -> tuple[float, float]:
    """(KS statistic, two-sided p-value) of forget vs holdout scores; NaN where a score is not finite."""
    from scipy.stats import ks_2samp

    if not (np.isfinite(forget).all() and np.isfinite(holdout).all()):
        return math.nan, math.nan
    res = ks_2samp(forget, holdout)
    return float(res.statistic), float(res.pvalue)


def score_model(model, tok, data: SelectionData, s: ScoreSettings) -> dict[str, Any]:
    """Retain utility and the forget-vs-holdout KS test of one model."""
    from mox_unlearn.evaluate import metrics as M
    from mox_unlearn.evaluate.stats import generate_answers, score_examples

    desc = (lambda text: text) if s.desc else (lambda text: None)
    stats = score_examples(
        model,
        encode_records(tok, data.retain, s.fmt, s.max_length),
        tok.pad_token_id,
        batch_size=s.batch_size,
        desc=desc("retain: answers"),
    )
    prob = np.array([math.exp(-st.nll_avg) if math.isfinite(st.nll_avg) else math.nan for st in stats])
    out: dict[str, Any] = {
        "retain_probability": float(prob.mean()) if np.isfinite(prob).all() else math.nan,
        "retain_rouge": None,
    }
    if data.retain.kind == "qa":
        questions = [r["question"] for r in data.retain.records]
        answers = [r["answer"] for r in data.retain.records]
        generated = generate_answers(
            model,
            tok,
            questions,
            s.fmt,
            max_new_tokens=s.max_new_tokens,
            batch_size=s.batch_size,
            desc=desc("retain: generate"),
        )
        out["retain_rouge"] = float(M.rouge_l(generated, answers, kind="recall").mean())
    f = _membership_scores(model, tok, data.forget, s, "forget")
    h = _membership_scores(model, tok, data.holdout, s, "holdout")
    out["ks_stat"], out["ks_p"] = ks_test(f, h)
    # which side of holdout the forget set lies on: < 0 still remembered, > 0 pushed past unseen data
    out["forget_minus_holdout_median"] = (
        float(np.median(f) - np.median(h)) if np.isfinite(f).all() and np.isfinite(h).all() else math.nan
    )
    return out


def score_folder(path: str | Path, tok, data: SelectionData, s: ScoreSettings, dtype: str) -> dict[str, Any]:
    from mox_unlearn.evaluate.run import load_eval_model

    model, _ = load_eval_model(str(path), dtype)
    try:
        return score_model(model, tok, data, s)
    finally:
        del model
        gc.collect()
        _empty_device_cache()


def _empty_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
