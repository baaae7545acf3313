"""TOFU evaluation (Maini et al., 2024): Forget Quality, Model Utility and the per-split metrics.

Definitions are in docs/metrics.md; the arithmetic is in metrics.py. This module only decides
which split feeds which statistic, following the benchmark's reference code:
  - Probability and ROUGE use each record's `question` / `answer`;
  - the truth ratio's true answer is `paraphrased_answer` on forget / retain and `answer` on Real
    Authors / World Facts, against the `perturbed_answer` list;
  - Forget Quality compares per-item truth ratios with those of the retain model on the same split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mox_unlearn.data import RecordSet, load_records, read_json
from mox_unlearn.data.formatting import PromptFormat
from mox_unlearn.errors import MoxError
from mox_unlearn.evaluate import metrics as M
from mox_unlearn.evaluate.stats import (
    AnswerStats,
    answer_stats,
    answer_stats_multi,
    generate_answers,
    generated_top_token_rate,
)

TOFU_HUB_ID = "locuslab/TOFU"
FORGET_SPLITS = ("forget01", "forget05", "forget10")
# Our names for the four evaluation splits and where their records come from.
SPLITS = {"forget": "{forget}_perturbed", "retain": "retain_perturbed",
          "ra": "real_authors_perturbed", "wf": "world_facts_perturbed"}


def load_tofu_split(source: str, split: str) -> RecordSet:
    """A TOFU split from a local folder (`<source>/<split>.jsonl`, the layout of shared/data/tofu)
    or from the hub (`locuslab/TOFU`, config = split)."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        file = folder / f"{split}.jsonl"
        if not file.is_file():
            have = ", ".join(sorted(p.stem for p in folder.glob("*.jsonl"))) or "no .jsonl files"
            raise MoxError(f"TOFU split {split!r} not found in {folder} (has: {have})")
        return load_records(str(file), name=f"TOFU {split}", kind="qa")
    return load_records(f"hf:{source}:{split}:train", name=f"TOFU {split}", kind="qa")


def _perturbed(rs: RecordSet) -> list[list[str]]:
    out = []
    for i, r in enumerate(rs.records):
        pert = r.get("perturbed_answer")
        if not isinstance(pert, list) or not pert or not all(isinstance(a, str) for a in pert):
            raise MoxError(f"{rs.source}[{i}]: perturbed_answer must be a non-empty list of strings")
        out.append(pert)
    return out


def _true_answers(rs: RecordSet, key: str) -> list[str]:
    missing = [i for i, r in enumerate(rs.records) if not isinstance(r.get(key), str)]
    if missing:
        raise MoxError(f"{rs.source}[{missing[0]}]: record has no {key!r} string")
    return [r[key] for r in rs.records]


def _metric(value: Any, per_item: Sequence | None = None, **extra) -> dict:
    value = None if value is None else float(value)
    return {"value": value, "per_item": None if per_item is None else [float(x) for x in per_item], **extra}


def _limit(rs: RecordSet, limit: int | None) -> RecordSet:
    return rs if limit is None else RecordSet(rs.kind, rs.records[:limit], rs.source)


def evaluate_split(model, tokenizer, rs: RecordSet, name: str, fmt: PromptFormat, *, batch_size: int,
                   max_new_tokens: int, max_length: int) -> tuple[dict[str, dict], list[AnswerStats]]:
    """Probability, truth ratio and ROUGE of one split; returns metrics and the answer stats."""
    questions = [r["question"] for r in rs.records]
    answers = _true_answers(rs, "answer")
    kw = dict(batch_size=batch_size, max_length=max_length)
    stats = answer_stats(model, tokenizer, questions, answers, fmt, desc=f"{name}: answers", **kw)
    pert = answer_stats_multi(model, tokenizer, questions, _perturbed(rs), fmt, desc=f"{name}: perturbed", **kw)
    if name in ("forget", "retain"):
        true = answer_stats(model, tokenizer, questions, _true_answers(rs, "paraphrased_answer"), fmt,
                            desc=f"{name}: paraphrased", **kw)
    else:
        true = stats
    ratio = M.truth_ratio([s.nll_avg for s in true], [[p.nll_avg for p in ps] for ps in pert])
    prob = M.probability([s.nll_sum for s in stats], [s.n_tokens for s in stats])
    generated = generate_answers(model, tokenizer, questions, fmt, max_new_tokens=max_new_tokens,
                                 batch_size=batch_size, desc=f"{name}: generate")
    rouge = M.rouge_l(generated, answers, kind="recall")
    out = {}
    if name in ("ra", "wf"):
        p_pert = [[np.exp(-p.nll_avg) for p in ps] for ps in pert]
        norm = M.normalised_probability(prob, p_pert)
        out[f"{name}_probability"] = _metric(norm.mean(), norm, definition="P_true / (P_true + sum_k P_pert_k)")
    else:
        out[f"{name}_probability"] = _metric(prob.mean(), prob)
    agg = M.truth_ratio_forget(ratio) if name == "forget" else M.truth_ratio_retain(ratio)
    out[f"{name}_truth_ratio"] = _metric(agg, ratio, per_item_is="R = P_pert / P_true (geometric means)")
    out[f"{name}_rouge"] = _metric(rouge.mean(), rouge, generations=generated)
    if name in ("forget", "retain"):  # collapse signals (paper Eq. 7, Def. 2.2)
        rate = generated_top_token_rate(tokenizer, generated)
        out[f"{name}_top_token_rate"] = _metric(rate, None, definition="share of the most frequent generated token")
        kl = M.collapse_from_observations(o for s in stats for o in s.observations())
        out[f"{name}_collapse"] = _metric(kl, None, definition="Eq. 7 on answer tokens, empirical q from the data")
    return out, stats


def read_retain_truth_ratios(path: str | Path) -> tuple[np.ndarray, dict]:
    """Per-item forget truth ratios of the retain model: from a `mox eval` result file, or from an
    open-unlearning TOFU_EVAL.json (`forget_truth_ratio.value_by_index.<i>.score`, same R = false/true)."""
    p = Path(path)
    data = read_json(p, "retain result")
    if not isinstance(data, dict):
        data = {}  # not an object: falls through to the one-line refusal below
    if isinstance(data.get("metrics"), dict) and "forget_truth_ratio" in data["metrics"]:
        values = data["metrics"]["forget_truth_ratio"].get("per_item")
        return np.asarray(values, dtype=float), {k: data.get(k) for k in ("forget_split", "limit", "model")}
    by_index = data.get("forget_truth_ratio", {}).get("value_by_index")
    if isinstance(by_index, dict):
        keys = sorted(by_index, key=int)
        return np.asarray([by_index[k]["score"] for k in keys], dtype=float), {}
    raise MoxError(f"{p}: no per-item forget truth ratios (expected a `mox eval` result or an open-unlearning TOFU_EVAL.json)")


def evaluate_tofu(model, tokenizer, *, data: str = TOFU_HUB_ID, forget_split: str = "forget10",
                  retain_result: str | None = None, fmt: PromptFormat | None = None, batch_size: int = 16,
                  max_new_tokens: int = 200, max_length: int = 512, limit: int | None = None) -> dict:
    """All TOFU metrics of one model. Returns {"summary": {...}, "metrics": {...}} (see docs/metrics.md)."""
    if forget_split not in FORGET_SPLITS:
        raise MoxError(f"unknown TOFU forget split {forget_split!r}; valid: {', '.join(FORGET_SPLITS)}")
    fmt = fmt or PromptFormat()
    retain_r, retain_meta = (read_retain_truth_ratios(retain_result) if retain_result else (None, {}))
    splits = {name: _limit(load_tofu_split(data, pattern.format(forget=forget_split)), limit)
              for name, pattern in SPLITS.items()}
    holdout = _limit(load_tofu_split(data, forget_split.replace("forget", "holdout")), limit)
    kw = dict(batch_size=batch_size, max_new_tokens=max_new_tokens, max_length=max_length)
    metrics: dict[str, dict] = {}
    forget_stats: list[AnswerStats] = []
    for name, rs in splits.items():
        split_metrics, stats = evaluate_split(model, tokenizer, rs, name, fmt, **kw)
        metrics.update(split_metrics)
        if name == "forget":
            forget_stats = stats

    # membership inference and memorization on the forget answers (open-unlearning's extras)
    hold_stats = answer_stats(model, tokenizer, [r["question"] for r in holdout.records],
                              _true_answers(holdout, "answer"), fmt, batch_size=batch_size, max_length=max_length,
                              desc="holdout: answers")
    f_scores = M.min_k_scores([s.token_logps for s in forget_stats], k=0.4)
    h_scores = M.min_k_scores([s.token_logps for s in hold_stats], k=0.4)
    metrics["mia_min_k"] = _metric(M.mia_auc(f_scores, h_scores), None, k=0.4, forget_scores=f_scores.tolist(),
                                   holdout_scores=h_scores.tolist())
    es = M.extraction_strength([s.correct for s in forget_stats])
    em = M.exact_memorization([s.correct for s in forget_stats])
    metrics["extraction_strength"] = _metric(es.mean(), es)
    metrics["exact_memorization"] = _metric(em.mean(), em)

    utility_parts = {f"{s}_{m}": metrics[f"{s}_{m}"]["value"]
                     for s in ("retain", "ra", "wf") for m in ("probability", "rouge", "truth_ratio")}
    metrics["model_utility"] = _metric(M.model_utility(utility_parts), None, parts=utility_parts)
    summary = {
        "forget_quality": None,
        "model_utility": metrics["model_utility"]["value"],
        "forget_rouge": metrics["forget_rouge"]["value"],
        "retain_rouge": metrics["retain_rouge"]["value"],
    }
    result = {"summary": summary, "metrics": metrics, "forget_split": forget_split, "limit": limit}
    return _set_forget_quality(result, retain_r, retain_meta, retain_result)


def add_forget_quality(result: dict, retain_result: str | Path) -> dict:
    """FQ of a finished TOFU result against a retain model's result file, without evaluating again."""
    retain_r, retain_meta = read_retain_truth_ratios(retain_result)
    return _set_forget_quality(result, retain_r, retain_meta, retain_result)


def _set_forget_quality(result: dict, retain_r, retain_meta: dict, source) -> dict:
    metric = _forget_quality(result["metrics"]["forget_truth_ratio"]["per_item"], retain_r, retain_meta,
                             result["forget_split"], result["limit"], source)
    result["metrics"]["forget_quality"] = metric
    result["summary"]["forget_quality"] = metric["value"]
    return result


def _forget_quality(r_model, r_retain, retain_meta: dict, forget_split: str, limit: int | None, source) -> dict:
    if r_retain is None:
        return _metric(None, None, reason="no retain result given (--retain-result FILE): FQ needs the retain model's truth ratios")
    if retain_meta.get("forget_split") not in (None, forget_split):
        raise MoxError(f"retain result is for {retain_meta['forget_split']}, not {forget_split}")
    if len(r_retain) != len(r_model):
        raise MoxError(f"retain result has {len(r_retain)} forget items, this evaluation {len(r_model)} "
                       f"(same forget split and --limit needed)")
    return _metric(M.forget_quality(r_model, r_retain), None, retain_result=str(source), test="scipy.stats.ks_2samp two-sided")
