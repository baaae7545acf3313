"""A `mox eval --benchmark tofu` result in open-unlearning's schema (TOFU_EVAL.json, TOFU_SUMMARY.json).

open-unlearning (src/evals/metrics/*.py) writes one entry per metric: ``agg_value`` and, per item,
``value_by_index`` keyed by the item's index in its split ("0", "1", ...). The names and per-item fields
below are its TOFU evaluation's; the numbers are mox's, which compute the same statistics:

  * ``<split>_Q_A_Prob`` / ``_PARA_Prob`` / ``_PERT_Prob``: ``{"prob", "avg_loss"}`` per item, prob being
    exp(-average answer NLL) (lists for the perturbed answers);
  * ``forget_truth_ratio`` / ``retain_Truth_Ratio`` / ``ra_Truth_Ratio`` / ``wf_Truth_Ratio``:
    ``{"score": R}``, R = P_pert / P_true with geometric means;
  * ``ra_Q_A_Prob_normalised`` / ``wf_...``: ``{"prob"}`` = P_true / (P_true + sum P_pert);
  * ``<split>_Q_A_ROUGE``: ``{"rouge1_recall", "rougeL_f1", "rougeL_recall", "input", "ground_truth",
    "generation"}``;
  * ``mia_min_k`` and the other attacks (``mia_loss``, ``mia_zlib``, ``mia_min_k_plus_plus``, ``mia_gradnorm``,
    ``mia_reference``): forget / holdout scores and ``auc`` in open-unlearning's orientation (1 - mox's);
  * ``extraction_strength``, ``exact_memorization``: ``{"score"}``; ``forget_quality``, ``model_utility``,
    ``privleak``: ``agg_value`` only (privleak has the same value in both orientations).

Which tokens were scored is not in the schema: a result scored with mox's default prompt differs from
open-unlearning's own on subword tokenizers; `--prompt open-unlearning-*` scores the same tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from mox_unlearn.errors import MoxError

EVAL_FILE, SUMMARY_FILE = "TOFU_EVAL.json", "TOFU_SUMMARY.json"
# open-unlearning's TOFU summary: the metrics its eval/tofu config lists (forget_quality only when computed)
SUMMARY_KEYS = (
    "extraction_strength",
    "forget_Q_A_Prob",
    "forget_Q_A_ROUGE",
    "forget_quality",
    "forget_truth_ratio",
    "model_utility",
    "privleak",
)
_TRUTH_RATIO = {
    "forget": "forget_truth_ratio",
    "retain": "retain_Truth_Ratio",
    "ra": "ra_Truth_Ratio",
    "wf": "wf_Truth_Ratio",
}


def _by_index(items: Sequence[Any]) -> dict[str, Any]:
    return {str(i): item for i, item in enumerate(items)}


def _prob(avg_loss: float) -> float:
    return math.exp(-avg_loss)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _prob_entry(avg_losses: Sequence[Any]) -> dict:
    """{"prob", "avg_loss"} per item from average NLLs (a number, or a list for the perturbed answers)."""
    items = [
        {"prob": [_prob(x) for x in loss], "avg_loss": list(loss)}
        if isinstance(loss, list)
        else {"prob": _prob(loss), "avg_loss": loss}
        for loss in avg_losses
    ]
    flat = [p for it in items for p in (it["prob"] if isinstance(it["prob"], list) else [it["prob"]])]
    return {"agg_value": _mean(flat), "value_by_index": _by_index(items)}


def _scores(value: float | None, per_item: Sequence[float]) -> dict:
    return {"agg_value": value, "value_by_index": _by_index([{"score": float(x)} for x in per_item])}


def _need(metrics: dict, name: str, *fields: str) -> dict:
    m = metrics.get(name)
    missing = [f for f in fields if not isinstance(m, dict) or m.get(f) is None]
    if missing:
        raise MoxError(
            f"the TOFU result has no {name}.{missing[0]}: written by an older mox? re-run `mox eval` to convert it"
        )
    return m


def tofu_eval_json(result: dict) -> dict:
    """open-unlearning's TOFU_EVAL.json for a `mox eval --benchmark tofu` result (keys sorted, like its files)."""
    if result.get("benchmark") != "tofu":
        raise MoxError(f"only TOFU results have an open-unlearning form, got benchmark {result.get('benchmark')!r}")
    metrics = result["metrics"]
    out: dict[str, Any] = {}
    for split in ("forget", "retain", "ra", "wf"):
        prob = _need(metrics, f"{split}_probability", "per_item", "avg_loss")
        tr = _need(metrics, f"{split}_truth_ratio", "value", "per_item", "avg_loss_true", "avg_loss_perturbed")
        rouge = _need(
            metrics, f"{split}_rouge", "value", "per_item", "generations", "references", "prompts", "rouge1_recall"
        )
        out[f"{split}_Q_A_Prob"] = _prob_entry(prob["avg_loss"])
        if split in ("forget", "retain"):
            out[f"{split}_Q_A_PARA_Prob"] = _prob_entry(tr["avg_loss_true"])
        else:
            norm = [{"prob": float(x)} for x in prob["per_item"]]
            out[f"{split}_Q_A_Prob_normalised"] = {"agg_value": prob["value"], "value_by_index": _by_index(norm)}
        out[f"{split}_Q_A_PERT_Prob"] = _prob_entry(tr["avg_loss_perturbed"])
        out[_TRUTH_RATIO[split]] = _scores(tr["value"], tr["per_item"])
        rows = zip(rouge["rouge1_recall"], rouge["rougeL_f1"], rouge["per_item"], rouge["prompts"])
        per_item = [
            {"rouge1_recall": r1, "rougeL_f1": lf, "rougeL_recall": lr, "input": x, "ground_truth": gt, "generation": g}
            for (r1, lf, lr, x), gt, g in zip(rows, rouge["references"], rouge["generations"])
        ]
        out[f"{split}_Q_A_ROUGE"] = {"agg_value": rouge["value"], "value_by_index": _by_index(per_item)}
    for name in ("extraction_strength", "exact_memorization"):
        if isinstance(metrics.get(name), dict) and metrics[name].get("per_item") is not None:
            out[name] = _scores(metrics[name]["value"], metrics[name]["per_item"])
    for name, mia in metrics.items():  # mia_min_k and the other attacks, where they have a value
        if name.startswith("mia_") and isinstance(mia, dict) and mia.get("value") is not None:
            auc = 1.0 - float(mia["value"])
            out[name] = {
                "forget": _scores(_mean(mia["forget_scores"]), mia["forget_scores"]),
                "holdout": _scores(_mean(mia["holdout_scores"]), mia["holdout_scores"]),
                "auc": auc,
                "agg_value": auc,
            }
    for name in ("forget_quality", "model_utility", "privleak"):
        value = metrics.get(name, {}).get("value")
        out[name] = {"agg_value": None if value is None else float(value)}
    return dict(sorted(out.items()))


def tofu_summary_json(eval_json: dict) -> dict:
    """open-unlearning's TOFU_SUMMARY.json: the agg_value of each summary metric that has one."""
    return {k: eval_json[k]["agg_value"] for k in SUMMARY_KEYS if eval_json.get(k, {}).get("agg_value") is not None}
