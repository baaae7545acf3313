"""TOFU evaluation (Maini et al., 2024): Forget Quality, Model Utility and the per-split metrics.

Definitions are in docs/metrics.md; the arithmetic is in metrics.py. This module only decides
which split feeds which statistic, following the benchmark's reference code:
  - Probability and ROUGE use each record's `question` / `answer`;
  - the truth ratio's true answer is `paraphrased_answer` on forget / retain and `answer` on Real
    Authors / World Facts, against the `perturbed_answer` list;
  - Forget Quality compares per-item truth ratios with those of the retain model on the same split.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mox_unlearn.data import RecordSet, load_records, read_json
from mox_unlearn.data.formatting import PromptFormat, prompt_ids, reference_answer
from mox_unlearn.errors import MoxError
from mox_unlearn.evaluate import metrics as M
from mox_unlearn.evaluate.attacks import STAT_ATTACKS, attack_metric, stat_scores
from mox_unlearn.evaluate.benchmarks import TOFU_HUB_ID
from mox_unlearn.evaluate.convention import check_retain_convention, scoring_convention
from mox_unlearn.evaluate.stats import (
    AnswerStats,
    answer_grad_norms,
    answer_stats,
    generate_answers,
    generated_top_token_rate,
    score_continuations,
)

FORGET_SPLITS = ("forget01", "forget05", "forget10")
FORGET_AUTHORS = {"forget01": 2, "forget05": 10, "forget10": 20}  # TOFU authors in each forget split
HOLDOUT_SPLITS = ("holdout01", "holdout05", "holdout10")  # nested, like the forget splits
# Our names for the four evaluation splits and where their records come from.
SPLITS = {
    "forget": "{forget}_perturbed",
    "retain": "retain_perturbed",
    "ra": "real_authors_perturbed",
    "wf": "world_facts_perturbed",
}


def check_forget_split(forget_split: str) -> None:
    """A TOFU forget split name, or a one-line error listing the valid ones."""
    if forget_split not in FORGET_SPLITS:
        raise MoxError(f"unknown TOFU forget split {forget_split!r}; valid: {', '.join(FORGET_SPLITS)}")


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


def evaluate_split(
    model,
    tokenizer,
    rs: RecordSet,
    name: str,
    fmt: PromptFormat,
    *,
    batch_size: int,
    max_new_tokens: int,
    max_length: int,
) -> tuple[dict[str, dict], list[AnswerStats]]:
    """Probability, truth ratio and ROUGE of one split; returns metrics and the answer stats."""
    questions = [r["question"] for r in rs.records]
    answers = _true_answers(rs, "answer")
    # every answer scored from one prompt pass per question: true, paraphrased (forget/retain), perturbed
    paraphrased = _true_answers(rs, "paraphrased_answer") if name in ("forget", "retain") else None
    lists = [
        [a, *([paraphrased[i]] if paraphrased else []), *ps] for i, (a, ps) in enumerate(zip(answers, _perturbed(rs)))
    ]
    scored = score_continuations(
        model, tokenizer, questions, lists, fmt, batch_size=batch_size, max_length=max_length, desc=f"{name}: scoring"
    )
    skip = 2 if paraphrased else 1
    stats, pert = [s[0] for s in scored], [s[skip:] for s in scored]
    true = [s[1] for s in scored] if paraphrased else stats
    ratio = M.truth_ratio([s.nll_avg for s in true], [[p.nll_avg for p in ps] for ps in pert])
    prob = M.probability([s.nll_sum for s in stats], [s.n_tokens for s in stats])
    generated = generate_answers(
        model, tokenizer, questions, fmt, max_new_tokens=max_new_tokens, batch_size=batch_size, desc=f"{name}: generate"
    )
    references = [reference_answer(tokenizer, q, a, fmt, max_length) for q, a in zip(questions, answers)]
    rouge = M.rouge_l(generated, references, kind="recall")
    parts = [M.rouge_parts(g, r) for g, r in zip(generated, references)]
    # per-item average NLLs: what open-unlearning's TOFU_EVAL.json keeps (evaluate/open_unlearning.py)
    losses = dict(avg_loss=[s.nll_avg for s in stats])
    out = {}
    if name in ("ra", "wf"):
        p_pert = [[np.exp(-p.nll_avg) for p in ps] for ps in pert]
        norm = M.normalised_probability(prob, p_pert)
        out[f"{name}_probability"] = _metric(
            norm.mean(), norm, definition="P_true / (P_true + sum_k P_pert_k)", **losses
        )
    else:
        out[f"{name}_probability"] = _metric(prob.mean(), prob, **losses)
    agg = M.truth_ratio_forget(ratio) if name == "forget" else M.truth_ratio_retain(ratio)
    out[f"{name}_truth_ratio"] = _metric(
        agg,
        ratio,
        per_item_is="R = P_pert / P_true (geometric means)",
        avg_loss_true=[s.nll_avg for s in true],
        avg_loss_perturbed=[[p.nll_avg for p in ps] for ps in pert],
    )
    out[f"{name}_rouge"] = _metric(
        rouge.mean(),
        rouge,
        generations=generated,
        references=references,
        prompts=[_prompt_text(tokenizer, q, fmt, max_length) for q in questions],
        rouge1_recall=[x["rouge1_recall"] for x in parts],
        rougeL_f1=[x["rougeL_f1"] for x in parts],
    )
    if name in ("forget", "retain"):  # collapse signals (paper Eq. 7, Def. 2.2)
        rate = generated_top_token_rate(tokenizer, generated)
        out[f"{name}_top_token_rate"] = _metric(rate, None, definition="share of the most frequent generated token")
        kl = M.collapse_from_observations(o for s in stats for o in s.observations())
        out[f"{name}_collapse"] = _metric(kl, None, definition="Eq. 7 on answer tokens, empirical q from the data")
    return out, stats


def _prompt_text(tokenizer, question: str, fmt: PromptFormat, max_length: int) -> str:
    """The prompt as text (open-unlearning's `input`): its ids decoded without special tokens."""
    ids = prompt_ids(tokenizer, question, fmt, max_length)
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)


def result_file(path: str | Path) -> Path:
    """A result file as given, or inside a folder of `mox eval --format open-unlearning` (mox's own result,
    else open-unlearning's TOFU_EVAL.json, so an open-unlearning output folder works too)."""
    p = Path(path)
    if p.is_dir():
        return next((p / n for n in ("mox_result.json", "TOFU_EVAL.json") if (p / n).is_file()), p / "TOFU_EVAL.json")
    return p


def read_retain_truth_ratios(path: str | Path) -> tuple[np.ndarray, dict]:
    """Per-item forget truth ratios of the retain model, and what else the file says about it.

    From a `mox eval` result file, or from an open-unlearning TOFU_EVAL.json
    (`forget_truth_ratio.value_by_index.<i>.score`, the same R = false/true). The dict holds
    forget_split / limit / model where known, `convention` (how it was scored; None where the file
    does not say) and `mia_auc` (its min-k AUC in our convention, for PrivLeak; None if absent).
    """
    p = result_file(path)
    data = read_json(p, "retain result")
    if not isinstance(data, dict):
        data = {}  # not an object: falls through to the one-line refusal below
    metrics = data.get("metrics")
    if isinstance(metrics, dict) and isinstance(metrics.get("forget_truth_ratio"), dict):
        values = metrics["forget_truth_ratio"].get("per_item")
        meta = {k: data.get(k) for k in ("forget_split", "limit", "model")}
        auc = _field(metrics, "mia_min_k", "value")
        return _ratios(values, p), {**meta, "convention": data.get("convention"), "mia_auc": auc}
    by_index = _field(data, "forget_truth_ratio", "value_by_index")
    if isinstance(by_index, dict):
        try:
            keys = sorted(by_index, key=int)
            values = [by_index[k]["score"] for k in keys]
        except (KeyError, TypeError, ValueError):
            raise MoxError(f'{p}: forget_truth_ratio.value_by_index must map item indices to {{"score": R}}') from None
        ou_auc = _field(data, "mia_min_k", "agg_value")  # open-unlearning: 1 - our AUC
        auc = None if not isinstance(ou_auc, (int, float)) else 1.0 - float(ou_auc)
        return _ratios(values, p), {"convention": None, "mia_auc": auc}
    raise MoxError(
        f"{p}: no per-item forget truth ratios (expected a `mox eval` result or an open-unlearning TOFU_EVAL.json)"
    )


def _field(data: dict, *keys: str) -> Any:
    """data[k1][k2]..., or None where a level is missing or not an object."""
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _ratios(values: Any, path: Path) -> np.ndarray:
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise MoxError(f"{path}: the forget truth ratios are not a list of numbers") from None


def _content(stats: list[AnswerStats], split: str) -> list[AnswerStats]:
    """Refuse items with no answer token besides EOS, which ES, EM and min-k cannot score."""
    empty = [i for i, s in enumerate(stats) if s.content_logps.size == 0]
    if empty:
        raise MoxError(f"TOFU {split}[{empty[0]}]: the answer has no token besides EOS")
    return stats


def mia_min_k_metric(forget: list[AnswerStats], holdout: list[AnswerStats], k: float = 0.4) -> dict:
    """Min-k AUC of forget (members) vs holdout answers, EOS position dropped; both AUC conventions named."""
    f_scores = M.min_k_scores([s.content_logps for s in _content(forget, "forget")], k=k)
    h_scores = M.min_k_scores([s.content_logps for s in _content(holdout, "holdout")], k=k)
    return attack_metric(f_scores, h_scores, k=k, convention=MIA_CONVENTION)


def mia_attack_metrics(
    model,
    tokenizer,
    stats: dict[str, list[AnswerStats]],
    qa: dict[str, tuple[list[str], list[str]]],
    fmt: PromptFormat,
    *,
    reference=None,
    gradnorm: bool = True,
    batch_size: int = 16,
    max_length: int = 512,
    k: float = 0.4,
) -> dict[str, dict]:
    """open-unlearning's other membership-inference attacks, forget (members) vs holdout answers, each as
    `mia_<attack>` with its AUC in both orientations and the per-item scores (definitions: metrics.py,
    docs/metrics.md). `stats` holds each side's AnswerStats with vocabulary moments, `qa` its (questions,
    answers). The reference attack is missing, with a reason, without a reference model."""
    scores = {side: stat_scores(tokenizer, _content(st, side), k) for side, st in stats.items()}
    for side, (questions, answers) in qa.items():
        if gradnorm:
            scores[side]["gradnorm"] = answer_grad_norms(
                model, tokenizer, questions, answers, fmt, max_length=max_length, desc=f"{side}: gradnorm"
            ).tolist()
        if reference is not None:
            kw = dict(batch_size=batch_size, max_length=max_length, desc=f"{side}: reference")
            ref = answer_stats(reference, tokenizer, questions, answers, fmt, **kw)
            scores[side]["reference"] = [M.reference_score(s.nll_avg, r.nll_avg) for s, r in zip(stats[side], ref)]
    out = {}
    for attack in (*STAT_ATTACKS, "gradnorm", "reference"):
        if attack in scores["forget"]:
            extra = {"k": k} if attack == "min_k_plus_plus" else {"p": 2} if attack == "gradnorm" else {}
            convention = MIA_CONVENTION.replace("min-k score", f"{attack} score")
            out[f"mia_{attack}"] = attack_metric(
                scores["forget"][attack], scores["holdout"][attack], convention=convention, **extra
            )
        else:
            why = (
                "no reference model given (--mia-reference MODEL)"
                if attack == "reference"
                else "skipped (--no-gradnorm)"
            )
            out[f"mia_{attack}"] = _metric(None, None, reason=why)
    return out


MIA_CONVENTION = (
    "MUSE's: P(min-k score of a forget answer > of a holdout answer), the score being minus the mean "
    "of the lowest 40% token log-probs; ~0 when forget answers are memorised, 0.5 when forget and "
    "holdout look alike. auc_open_unlearning = 1 - value (open-unlearning's mia_min_k)"
)


def evaluate_tofu(
    model,
    tokenizer,
    *,
    data: str = TOFU_HUB_ID,
    forget_split: str = "forget10",
    retain_result: str | None = None,
    fmt: PromptFormat | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 200,
    max_length: int = 512,
    limit: int | None = None,
    allow_convention_mismatch: bool = False,
    mia_reference=None,
    mia_gradnorm: bool = True,
) -> dict:
    """All TOFU metrics of one model. Returns {"summary": {...}, "metrics": {...}, "convention": {...}}
    (see docs/metrics.md). A retain result scored with another prompt convention or tokenizer is refused
    unless `allow_convention_mismatch`. `mia_reference` (a loaded model with the same tokenizer, e.g. the
    retain or base model) enables the reference attack; `mia_gradnorm` False skips the GradNorm attack
    (one backward pass per forget and holdout answer)."""
    check_forget_split(forget_split)
    fmt = fmt or PromptFormat()
    convention = scoring_convention(tokenizer, fmt)
    # read and checked before the (long) evaluation: a mismatch is known now
    retain, note = _read_retain(retain_result, convention, allow_convention_mismatch) if retain_result else (None, None)
    splits = {
        name: _limit(load_tofu_split(data, pattern.format(forget=forget_split)), limit)
        for name, pattern in SPLITS.items()
    }
    holdout = _limit(load_tofu_split(data, forget_split.replace("forget", "holdout")), limit)
    kw = dict(batch_size=batch_size, max_new_tokens=max_new_tokens, max_length=max_length)
    metrics: dict[str, dict] = {}
    forget_stats: list[AnswerStats] = []
    for name, rs in splits.items():
        split_metrics, stats = evaluate_split(model, tokenizer, rs, name, fmt, **kw)
        metrics.update(split_metrics)
        if name == "forget":
            forget_stats = stats

    # membership inference and memorization on the forget answers (open-unlearning's extras), EOS dropped;
    # one pass over each side's true answers with the vocabulary moments Min-K%++ needs
    qa = {
        side: ([r["question"] for r in rs.records], _true_answers(rs, "answer"))
        for side, rs in (("forget", splits["forget"]), ("holdout", holdout))
    }
    answer_kw = dict(batch_size=batch_size, max_length=max_length, moments=True)
    mia_stats = {
        side: answer_stats(model, tokenizer, *qa[side], fmt, desc=f"{side}: answers", **answer_kw) for side in qa
    }
    metrics["mia_min_k"] = mia_min_k_metric(forget_stats, mia_stats["holdout"])
    metrics.update(
        mia_attack_metrics(
            model,
            tokenizer,
            mia_stats,
            qa,
            fmt,
            reference=mia_reference,
            gradnorm=mia_gradnorm,
            batch_size=batch_size,
            max_length=max_length,
        )
    )
    correct = [s.content_correct for s in forget_stats]
    es, em = M.extraction_strength(correct), M.exact_memorization(correct)
    metrics["extraction_strength"] = _metric(es.mean(), es)
    metrics["exact_memorization"] = _metric(em.mean(), em)

    utility_parts = {
        f"{s}_{m}": metrics[f"{s}_{m}"]["value"]
        for s in ("retain", "ra", "wf")
        for m in ("probability", "rouge", "truth_ratio")
    }
    metrics["model_utility"] = _metric(M.model_utility(utility_parts), None, parts=utility_parts)
    summary = {
        "forget_quality": None,
        "model_utility": metrics["model_utility"]["value"],
        "forget_rouge": metrics["forget_rouge"]["value"],
        "retain_rouge": metrics["retain_rouge"]["value"],
        "privleak": None,
    }
    result = {
        "summary": summary,
        "metrics": metrics,
        "forget_split": forget_split,
        "limit": limit,
        "convention": convention,
    }
    return _compare_with_retain(result, retain, retain_result, note)


def add_forget_quality(
    result: dict, retain_result: str | Path | None, *, allow_convention_mismatch: bool = False
) -> dict:
    """FQ and PrivLeak of a finished TOFU result against a retain model's result file, without evaluating again
    (None: both missing, with the reason)."""
    if retain_result is None:
        return _compare_with_retain(result, None, None, None)
    retain, note = _read_retain(retain_result, result.get("convention"), allow_convention_mismatch)
    return _compare_with_retain(result, retain, retain_result, note)


def _read_retain(
    retain_result: str | Path, convention: dict | None, allow_mismatch: bool
) -> tuple[tuple[np.ndarray, dict], str]:
    """The retain result (truth ratios, metadata) and the outcome of comparing its scoring convention
    with `convention` (refused on a mismatch unless `allow_mismatch`)."""
    retain = read_retain_truth_ratios(retain_result)
    return retain, check_retain_convention(
        convention, retain[1]["convention"], retain_result, allow_mismatch=allow_mismatch
    )


def _compare_with_retain(result: dict, retain: tuple[np.ndarray, dict] | None, source, note: str | None) -> dict:
    """Set FQ and PrivLeak (metrics and summary) from the retain model's result, or say why they are missing;
    `note` is the outcome of the convention check."""
    metrics, summary = result["metrics"], result["summary"]
    if retain is None:
        reason = "no retain result given (--retain-result FILE): {} needs the retain model's {}"
        metrics["forget_quality"] = _metric(None, None, reason=reason.format("FQ", "truth ratios"))
        metrics["privleak"] = _metric(None, None, reason=reason.format("PrivLeak", "min-k AUC"))
    else:
        r_retain, meta = retain
        metrics["forget_quality"] = {
            **_forget_quality(
                metrics["forget_truth_ratio"]["per_item"],
                r_retain,
                meta,
                result["forget_split"],
                result["limit"],
                source,
            ),
            "convention_check": note,
        }
        metrics["privleak"] = _privleak(metrics["mia_min_k"]["value"], meta.get("mia_auc"), source)
    summary["forget_quality"] = metrics["forget_quality"]["value"]
    summary["privleak"] = metrics["privleak"]["value"]
    return result


def _privleak(auc: float, auc_retain: float | None, source) -> dict:
    """PrivLeak (%) of the min-k AUC against the retain model's (open-unlearning's formula and sign)."""
    if auc_retain is None:
        return _metric(None, None, reason=f"{source} has no min-k AUC (mia_min_k) to compare with")
    if not 0.0 < auc_retain <= 1.0:
        return _metric(None, None, reason=f"the retain model's min-k AUC is {auc_retain:g}; PrivLeak divides by it")
    return _metric(
        M.privleak(auc, auc_retain),
        None,
        auc_retain=float(auc_retain),
        retain_result=str(source),
        definition="(AUC - AUC_retain) / AUC_retain * 100 in mia_min_k's convention; "
        "-100 = memorised, 0 = like the retain model, > 0 = over-unlearned",
    )


def _check_retain_fits(retain_meta: dict, n_retain: int, n_items: int, forget_split: str, source) -> None:
    """The retain result scored the same forget items this evaluation scores (split, and count after --limit)."""
    if retain_meta.get("forget_split") not in (None, forget_split):
        raise MoxError(f"retain result {source} is for {retain_meta['forget_split']}, not {forget_split}")
    if n_retain != n_items:
        raise MoxError(
            f"retain result {source} has {n_retain} forget items, this evaluation {n_items} (same forget split and "
            "--limit needed)"
        )


def check_retain_result(retain_result: str | None, data: str, forget_split: str, limit: int | None) -> None:
    """Everything about --retain-result that needs no model, checked before the model is even loaded: the
    file reads as a retain result and scored the same forget split and items (`mox eval` calls it first)."""
    if not retain_result:
        return
    r_retain, meta = read_retain_truth_ratios(retain_result)
    n_items = len(_limit(load_tofu_split(data, SPLITS["forget"].format(forget=forget_split)), limit))
    _check_retain_fits(meta, len(r_retain), n_items, forget_split, retain_result)


def _forget_quality(r_model, r_retain, retain_meta: dict, forget_split: str, limit: int | None, source) -> dict:
    _check_retain_fits(retain_meta, len(r_retain), len(r_model), forget_split, source)
    return _metric(
        M.forget_quality(r_model, r_retain), None, retain_result=str(source), test="scipy.stats.ks_2samp two-sided"
    )
