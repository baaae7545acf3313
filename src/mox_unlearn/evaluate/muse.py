"""MUSE evaluation (Shi et al., 2024): VerbMem, KnowMem on forget and retain, PrivLeak.

Prompts are raw text (no chat template), as in the benchmark: VerbMem continues a news prefix,
KnowMem answers after few-shot "Question: ...\\nAnswer: ...\\n\\n" blocks. Definitions in docs/metrics.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mox_unlearn.data import read_json
from mox_unlearn.errors import MoxError, first_line
from mox_unlearn.evaluate import metrics as M
from mox_unlearn.evaluate.attacks import STAT_ATTACKS, attack_metric, stat_scores
from mox_unlearn.evaluate.benchmarks import MUSE_HUB_ID
from mox_unlearn.evaluate.stats import generate_greedy, text_grad_norms, text_stats
from mox_unlearn.io.loading import check_hub_reachable

# (subset, local file stem, hub split) of every file the evaluation reads.
FILES = {
    "verbmem_forget": ("verbmem", "forget", "forget"),
    "knowmem_forget": ("knowmem", "forget_qa", "forget_qa"),
    "knowmem_forget_icl": ("knowmem", "forget_qa_icl", "forget_qa_icl"),
    # MUSE's own files name News's retain QA "retain2_qa" (Books's, and the hub's, "retain_qa"): either is read
    "knowmem_retain": ("knowmem", ("retain2_qa", "retain_qa"), "retain_qa"),
    "knowmem_retain_icl": ("knowmem", ("retain2_qa_icl", "retain_qa_icl"), "retain_qa_icl"),
    "privleak_forget": ("privleak", "forget", "forget"),
    "privleak_holdout": ("privleak", "holdout", "holdout"),
}
VERBMEM_TOKENS, KNOWMEM_TOKENS, MIN_K = 128, 32, 0.4
KNOWMEM_STOPS = ("\n\n", "\nQuestion", "Question:")  # as MUSE's eval code


def load_muse(source: str, key: str) -> list:
    """One MUSE file as a list: local folder (shared/data/muse-news layout, also for MUSE-Books) or hub id
    (subset, split), e.g. muse-bench/MUSE-News or muse-bench/MUSE-Books."""
    subset, stems, split = FILES[key]
    folder = Path(source).expanduser()
    if folder.is_dir():
        stems = (stems,) if isinstance(stems, str) else stems
        stem = next((st for st in stems if (folder / subset / f"{st}.json").is_file()), stems[0])
        data = read_json(folder / subset / f"{stem}.json", "MUSE")
    else:
        check_hub_reachable(source, repo_type="dataset")
        try:
            import datasets

            data = list(datasets.load_dataset(source, subset, split=split))
        except Exception as e:  # noqa: BLE001 - any hub/IO failure becomes one line
            raise MoxError(f"cannot load MUSE {subset}/{split} from {source!r}: {first_line(e)}") from None
    if not isinstance(data, list) or not data:
        raise MoxError(f"MUSE {subset}/{split}: expected a non-empty list")
    return data


def _fields(rows: list, keys: tuple[str, ...], where: str) -> list[tuple]:
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or any(not isinstance(row.get(k), str) for k in keys):
            raise MoxError(f"{where}[{i}]: expected string fields {', '.join(keys)}")
        out.append(tuple(row[k] for k in keys))
    return out


def _texts(rows: list, where: str) -> list[str]:
    out = []
    for i, row in enumerate(rows):
        text = row.get("text") if isinstance(row, dict) else row
        if not isinstance(text, str):
            raise MoxError(f"{where}[{i}]: expected a text string")
        out.append(text)
    return out


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def verbmem(model, tokenizer, rows: list, *, batch_size: int) -> dict:
    """Greedy 128-token continuation of each prompt, ROUGE-L against gt cut to 128 tokens, × 100."""
    pairs = _fields(rows, ("prompt", "gt"), "verbmem/forget")
    prompts = [_ids(tokenizer, p) for p, _ in pairs]
    outputs = generate_greedy(
        model, tokenizer, prompts, max_new_tokens=VERBMEM_TOKENS, batch_size=batch_size, desc="verbmem: generate"
    )
    # MUSE cuts gt to 128 tokens counting the BOS the tokenizer adds, then decodes without it.
    refs = [tokenizer.decode(_ids(tokenizer, gt)[:VERBMEM_TOKENS], skip_special_tokens=True) for _, gt in pairs]
    scores = M.rouge_l(outputs, refs, kind=M.MUSE_ROUGE_KIND, use_stemmer=M.MUSE_ROUGE_USE_STEMMER) * 100
    return {"value": float(scores.mean()), "per_item": scores.tolist(), "generations": outputs}


def knowmem_prompt(icl: list[tuple[str, str]], question: str) -> str:
    shots = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in icl)
    return f"{shots}Question: {question}\nAnswer: "


def knowmem(model, tokenizer, rows: list, icl_rows: list, name: str, *, batch_size: int) -> dict:
    """Few-shot QA, greedy 32 new tokens cut at a blank line or "Question", ROUGE-L vs answer × 100."""
    qa = _fields(rows, ("question", "answer"), f"knowmem/{name}")
    icl = _fields(icl_rows, ("question", "answer"), f"knowmem/{name}_icl")
    prompts = [_ids(tokenizer, knowmem_prompt(icl, q)) for q, _ in qa]
    outputs = generate_greedy(
        model,
        tokenizer,
        prompts,
        max_new_tokens=KNOWMEM_TOKENS,
        batch_size=batch_size,
        stop_strings=KNOWMEM_STOPS,
        desc=f"knowmem {name}: generate",
    )
    scores = M.rouge_l(outputs, [a for _, a in qa], kind=M.MUSE_ROUGE_KIND, use_stemmer=M.MUSE_ROUGE_USE_STEMMER) * 100
    return {"value": float(scores.mean()), "per_item": scores.tolist(), "generations": outputs}


def read_retain_auc(value: str | None, max_length: int | None = None) -> tuple[float | None, str]:
    """AUC of the retrained model: a number, or a `mox eval --benchmark muse` result file of it. A mox result
    whose privleak texts were cut at another length than `max_length` gives no AUC (and the reason): PrivLeak
    would compare different statistics."""
    if value is None:
        return None, "no retain AUC given (--retain-result FILE or NUMBER)"
    try:
        return float(value), "given"
    except ValueError:
        pass
    data = read_json(value, "retain result")
    try:
        auc = data["metrics"]["privleak_auc"]
        theirs = auc.get("max_length")
        if None not in (theirs, max_length) and theirs != max_length:
            return None, (
                f"{value} scored the privleak texts up to {theirs} tokens, this model up to {max_length}: "
                "evaluate both with the same --max-length"
            )
        return float(auc["value"]), value
    except (KeyError, TypeError, ValueError, AttributeError):
        pass
    try:  # open-unlearning's MUSE_EVAL.json: its mia_min_k AUC is 1 - ours (its privleak flips it back)
        return 1.0 - float(data["mia_min_k"]["agg_value"]), value
    except (KeyError, TypeError, ValueError):
        raise MoxError(
            f"{value}: not a `mox eval --benchmark muse` result (metrics.privleak_auc.value) nor an "
            "open-unlearning MUSE_EVAL.json (mia_min_k.agg_value)"
        ) from None


def text_attacks(tokenizer, forget: list, holdout: list, k: float = MIN_K) -> dict[str, dict]:
    """LOSS, zlib and Min-K%++ AUCs of the forget vs holdout texts (evaluate/attacks.py), in MUSE's
    orientation like privleak_auc, open-unlearning's as `auc_open_unlearning`."""
    f, h = stat_scores(tokenizer, forget, k), stat_scores(tokenizer, holdout, k)
    return {f"mia_{name}": attack_metric(f[name], h[name]) for name in STAT_ATTACKS}


def model_attacks(
    model,
    tokenizer,
    texts: dict[str, list[str]],
    side: dict[str, list],
    *,
    reference,
    gradnorm: bool,
    batch_size: int,
    max_length: int,
) -> dict[str, dict]:
    """GradNorm (one backward pass per text) and the reference attack (`reference`: a model with the same
    tokenizer, e.g. the retain or base model) on the forget vs holdout texts, as on TOFU; each missing, with
    the reason, where it is not asked for. `side` holds each text's AnswerStats under this model."""
    out: dict[str, dict] = {}
    if gradnorm:
        norms = {
            n: text_grad_norms(model, tokenizer, t, max_length=max_length, desc=f"privleak: {n} gradnorm")
            for n, t in texts.items()
        }
        out["mia_gradnorm"] = attack_metric(norms["forget"].tolist(), norms["holdout"].tolist(), p=2)
    else:
        out["mia_gradnorm"] = {"value": None, "per_item": None, "reason": "skipped (--no-gradnorm)"}
    if reference is None:
        out["mia_reference"] = {
            "value": None,
            "per_item": None,
            "reason": "no reference model given (--mia-reference MODEL)",
        }
        return out
    scores = {}
    for n, t in texts.items():
        kw = dict(batch_size=batch_size, max_length=max_length, desc=f"privleak: {n} reference")
        ref = text_stats(reference, tokenizer, t, **kw)
        scores[n] = [M.reference_score(s.nll_avg, r.nll_avg) for s, r in zip(side[n], ref)]
    out["mia_reference"] = attack_metric(scores["forget"], scores["holdout"])
    return out


def check_max_length(max_length: int | None) -> None:
    """--max-length: None (the model's context) or at least 2 tokens (one scored after the first)."""
    if max_length is not None and max_length < 2:
        raise MoxError(f"--max-length must be at least 2 tokens, got {max_length}")


def evaluate_muse(
    model,
    tokenizer,
    *,
    data: str = MUSE_HUB_ID,
    retain_result: str | None = None,
    batch_size: int = 8,
    max_length: int | None = None,
    limit: int | None = None,
    mia_reference=None,
    mia_gradnorm: bool = True,
) -> dict:
    """All MUSE-News metrics of one model: {"summary": {...}, "metrics": {...}}. `max_length`: the privleak
    texts are scored up to this many tokens; by default the model's context window, as MUSE's own code
    (open-unlearning's MUSE config cuts them at 2048). `mia_reference` (a loaded model with the same
    tokenizer) enables the reference attack; `mia_gradnorm` False skips GradNorm."""
    check_max_length(max_length)
    rows = {key: load_muse(data, key) for key in FILES}
    max_length = max_length or getattr(model.config, "max_position_embeddings", 4096)
    cut = (lambda xs: xs) if limit is None else (lambda xs: xs[:limit])
    metrics: dict[str, Any] = {
        "verbmem_f": verbmem(model, tokenizer, cut(rows["verbmem_forget"]), batch_size=batch_size),
        "knowmem_f": knowmem(
            model, tokenizer, cut(rows["knowmem_forget"]), rows["knowmem_forget_icl"], "forget", batch_size=batch_size
        ),
        "knowmem_r": knowmem(
            model, tokenizer, cut(rows["knowmem_retain"]), rows["knowmem_retain_icl"], "retain", batch_size=batch_size
        ),
    }
    texts = {name: _texts(cut(rows[f"privleak_{name}"]), f"privleak/{name}") for name in ("forget", "holdout")}
    kw = dict(batch_size=batch_size, max_length=max_length)
    side = {
        name: text_stats(model, tokenizer, t, desc=f"privleak: {name}", moments=True, **kw) for name, t in texts.items()
    }
    forget_lp, holdout_lp = ([s.token_logps for s in side[n]] for n in ("forget", "holdout"))
    metrics.update(text_attacks(tokenizer, side["forget"], side["holdout"]))
    metrics.update(model_attacks(model, tokenizer, texts, side, reference=mia_reference, gradnorm=mia_gradnorm, **kw))
    f_scores, h_scores = M.min_k_scores(forget_lp, k=MIN_K), M.min_k_scores(holdout_lp, k=MIN_K)
    auc = M.mia_auc(f_scores, h_scores)
    metrics["privleak_auc"] = {
        "value": float(auc),
        "per_item": None,
        "k": MIN_K,
        "forget_scores": f_scores.tolist(),
        "holdout_scores": h_scores.tolist(),
        "max_length": max_length,
    }
    auc_retrain, source = read_retain_auc(retain_result, max_length)
    if auc_retrain is None:
        metrics["privleak"] = {"value": None, "per_item": None, "reason": source}
    else:
        metrics["privleak"] = {
            "value": float(M.privleak(auc, auc_retrain)),
            "per_item": None,
            "auc_retrain": auc_retrain,
            "retain_result": source,
        }
    summary = {key: metrics[key]["value"] for key in ("verbmem_f", "knowmem_f", "knowmem_r", "privleak")}
    return {"summary": summary, "metrics": metrics, "limit": limit}
