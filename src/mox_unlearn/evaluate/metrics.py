"""Pure metric functions for the TOFU and MUSE evaluations and the paper's collapse analysis.

Nothing here touches a model: the model-facing code (``stats.py``) hands over plain per-item
numbers (summed / averaged NLLs, token log-probs, per-token argmax correctness, generated text)
and these functions turn them into the published statistics. Each definition follows the
benchmark's reference code so numbers are comparable with published ones; docs/metrics.md lists
the formulas, the inputs each metric is computed on, and where the references disagree.

Conventions: inputs may be numpy arrays or (nested) lists; per-item functions return float64
arrays, aggregate functions return Python floats; empty inputs raise ``ValueError`` (no silent NaN).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

# MUSE's RougeEvalLogger (muse_bench metrics/logger.py) reports `mean_rougeL`, which is the
# rougeL *F-measure*, computed by a RougeScorer built with use_stemmer=False.
MUSE_ROUGE_KIND: Literal["f1"] = "f1"
MUSE_ROUGE_USE_STEMMER = False
# TOFU (evaluate_util.eval_rouge_recall) and open-unlearning use rougeL recall, use_stemmer=True.
TOFU_ROUGE_KIND: Literal["recall"] = "recall"
TOFU_ROUGE_USE_STEMMER = True

# AUC of MUSE's retrained model for the reported PrivLeak key "forget_holdout_Min-40%"
# (muse_bench constants.py AUC_RETRAIN), used when no retrained-model AUC of one's own is at hand.
MUSE_AUC_RETRAIN_MIN40: dict[str, float] = {"news": 0.47719999999999996, "books": 0.5392999999999999}

# The nine values whose harmonic mean is TOFU's Model Utility (aggregate_eval_stat.get_model_utility).
TOFU_MODEL_UTILITY_KEYS: tuple[str, ...] = (
    "retain_probability",
    "retain_rouge",
    "retain_truth_ratio",
    "real_authors_probability",
    "real_authors_rouge",
    "real_authors_truth_ratio",
    "world_facts_probability",
    "world_facts_rouge",
    "world_facts_truth_ratio",
)


# --------------------------------------------------------------------------- input helpers


def _vector(x: ArrayLike, name: str) -> FloatArray:
    """A non-empty 1-D float array (a scalar becomes length 1)."""
    a = np.atleast_1d(np.asarray(x, dtype=np.float64))
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name}: empty input")
    if np.isnan(a).any():
        raise ValueError(f"{name}: contains NaN")
    return a


def _rows(x: ArrayLike | Sequence[Sequence[float]], name: str) -> list[FloatArray]:
    """Rows of a 2-D array or of a ragged list of lists; every row non-empty."""
    if isinstance(x, np.ndarray):
        if x.ndim != 2:
            raise ValueError(f"{name}: expected shape [N, K], got {x.shape}")
        rows = [np.asarray(r, dtype=np.float64) for r in x]
    else:
        rows = [np.atleast_1d(np.asarray(r, dtype=np.float64)) for r in x]
    if not rows:
        raise ValueError(f"{name}: empty input")
    for i, r in enumerate(rows):
        if r.ndim != 1 or r.size == 0:
            raise ValueError(f"{name}[{i}]: expected a non-empty 1-D row, got shape {r.shape}")
        if np.isnan(r).any():
            raise ValueError(f"{name}[{i}]: contains NaN")
    return rows


def _same_length(a: np.ndarray | list, b: np.ndarray | list, na: str, nb: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{na} and {nb} differ in length: {len(a)} != {len(b)}")


# --------------------------------------------------------------------------- TOFU


def probability(nll_sum: ArrayLike, n_tokens: ArrayLike) -> FloatArray:
    """Per-item length-normalised answer probability ``exp(-nll_sum / n_tokens)``.

    The geometric mean of the per-token probabilities of the answer given the question.
    Source: TOFU evaluate_util.get_all_evals (``avg_gt_loss = gt_loss / num_token_gt``) and
    aggregate_eval_stat.get_model_utility (``np.exp(-avg_gt_loss)``); open-unlearning
    evals/metrics/utils.evaluate_probability. TOFU's "Probability" is the mean over items.
    """
    s = _vector(nll_sum, "nll_sum")
    n = _vector(n_tokens, "n_tokens")
    _same_length(s, n, "nll_sum", "n_tokens")
    if (n <= 0).any():
        raise ValueError("n_tokens: every item needs at least one answer token")
    return np.exp(-s / n)


def normalised_probability(p_true: ArrayLike, p_perturbed: ArrayLike | Sequence[Sequence[float]]) -> FloatArray:
    """Per-item ``P_true / (P_true + sum_k P_pert_k)``.

    ``p_true``: [N] length-normalised probabilities of the correct answer; ``p_perturbed``: [N, K]
    (or a ragged list of lists) of the perturbed answers' length-normalised probabilities.
    Used for the Real Authors / World Facts "Probability" in TOFU's Model Utility.
    Source: TOFU aggregate_eval_stat.get_model_utility (``avg_true_prob / avg_all_prob``);
    open-unlearning memorization.probability_w_options (which adds 1e-10 to the denominator).
    """
    t = _vector(p_true, "p_true")
    rows = _rows(p_perturbed, "p_perturbed")
    _same_length(t, rows, "p_true", "p_perturbed")
    if (t < 0).any() or any((r < 0).any() for r in rows):
        raise ValueError("probabilities must be non-negative")
    denom = t + np.array([r.sum() for r in rows])
    if (denom <= 0).any():
        raise ValueError(f"items {np.flatnonzero(denom <= 0).tolist()}: all probabilities are zero")
    return t / denom


def truth_ratio(nll_avg_true: ArrayLike, nll_avg_perturbed: ArrayLike | Sequence[Sequence[float]]) -> FloatArray:
    """Per-item truth ratio ``R = exp(-mean_k NLL_avg(pert_k)) / exp(-NLL_avg(true))``.

    ``nll_avg_true``: [N] per-token average NLL of the "true" answer (TOFU forget/retain: the
    paraphrased answer; Real Authors / World Facts: the answer); ``nll_avg_perturbed``: [N, K] or
    ragged, per-token average NLL of each perturbed answer. The numerator is the geometric mean of
    the perturbed answers' length-normalised probabilities. Computed as
    ``exp(NLL_true - mean_k NLL_pert_k)``, exactly TOFU evaluate_util.eval_perturbation_ratio's
    ``truth_ratio``. (aggregate_eval_stat stores ``exp(pert - para) = 1/R`` and inverts it back.)
    R < 1 means the true answer is more likely than the perturbed ones.
    """
    t = _vector(nll_avg_true, "nll_avg_true")
    rows = _rows(nll_avg_perturbed, "nll_avg_perturbed")
    _same_length(t, rows, "nll_avg_true", "nll_avg_perturbed")
    mean_pert = np.array([r.mean() for r in rows])
    return np.exp(t - mean_pert)


def _ratios(r: ArrayLike) -> FloatArray:
    a = _vector(r, "truth ratios")
    if (a < 0).any():
        raise ValueError("truth ratios must be non-negative")
    return a


def truth_ratio_forget(r: ArrayLike) -> float:
    """Forget-set Truth Ratio ``mean_i min(R_i, 1/R_i)`` (1 = true and perturbed equally likely).

    Source: TOFU aggregate_eval_stat (``np.minimum(curr_stat_1, 1/curr_stat_1)``, symmetric in
    R <-> 1/R); open-unlearning truth_ratio aggregator ``closer_to_1_better``.
    """
    a = _ratios(r)
    with np.errstate(divide="ignore"):
        return float(np.mean(np.minimum(a, 1.0 / a)))


def truth_ratio_retain(r: ArrayLike) -> float:
    """Retain / Real Authors / World Facts Truth Ratio ``mean_i max(0, 1 - R_i)``.

    Source: TOFU aggregate_eval_stat (``np.maximum(0, 1 - 1/curr_stat_1)`` with
    curr_stat_1 = 1/R); open-unlearning truth_ratio aggregator ``true_better``.
    """
    a = _ratios(r)
    return float(np.mean(np.maximum(0.0, 1.0 - a)))


def forget_quality(r_model: ArrayLike, r_retain: ArrayLike) -> float:
    """Forget Quality: p-value of the two-sided two-sample KS test of per-item forget truth ratios.

    ``r_model``: the evaluated model's per-item truth ratios on the forget set; ``r_retain``: the
    retain model's (trained without the forget set) on the same items.
    ``scipy.stats.ks_2samp(r_model, r_retain).pvalue`` (defaults: two-sided, method="auto").
    Source: TOFU aggregate_eval_stat.get_forget_quality, which passes 1/R; the KS statistic and
    p-value are unchanged by a strictly monotone map applied to both samples, so R and 1/R agree.
    open-unlearning privacy.forget_quality passes R.
    """
    from scipy.stats import ks_2samp

    a = _vector(r_model, "r_model")
    b = _vector(r_retain, "r_retain")
    return float(ks_2samp(a, b).pvalue)


def model_utility(values: Mapping[str, float] | Iterable[float]) -> float:
    """TOFU Model Utility: harmonic mean of the component values (any zero gives 0.0).

    TOFU uses nine values (see ``TOFU_MODEL_UTILITY_KEYS``): Probability, ROUGE and Truth Ratio
    on each of Retain, Real Authors and World Facts. ``scipy.stats.hmean``; a zero component makes
    the harmonic mean 0 (its limit), returned directly rather than relying on scipy's handling.
    Source: TOFU aggregate_eval_stat.get_model_utility; open-unlearning utility.hm_aggregate.
    """
    from scipy.stats import hmean

    vals = list(values.values()) if isinstance(values, Mapping) else list(values)
    a = _vector(vals, "model utility values")
    if (a < 0).any():
        raise ValueError(f"model utility values must be non-negative, got {a.tolist()}")
    if (a == 0).any():
        return 0.0
    return float(hmean(a))


# --------------------------------------------------------------------------- ROUGE


@functools.lru_cache(maxsize=2)
def _rouge_scorer(use_stemmer: bool) -> Any:
    # Built once per stemmer setting, on first use (rouge_score imports nltk, which is slow).
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def _rouge_l_score(prediction: str, reference: str, use_stemmer: bool) -> Any:
    if not isinstance(prediction, str) or not isinstance(reference, str):
        raise TypeError("ROUGE inputs must be strings")
    # rouge_score's signature is score(target, prediction): the reference goes first.
    return _rouge_scorer(use_stemmer).score(reference, prediction)["rougeL"]


def rouge_l_recall(prediction: str, reference: str, *, use_stemmer: bool = True) -> float:
    """ROUGE-L recall ``LCS(pred, ref) / |ref|`` over rouge_score tokens (lower-cased, alphanumeric).

    TOFU's ROUGE: ``RougeScorer(['rouge1', 'rougeL'], use_stemmer=True)``, ``.recall``
    (TOFU evaluate_util.eval_rouge_recall; open-unlearning rouge_type ``rougeL_recall``).
    """
    return float(_rouge_l_score(prediction, reference, use_stemmer).recall)


def rouge_l_f1(prediction: str, reference: str, *, use_stemmer: bool = True) -> float:
    """ROUGE-L F-measure ``2PR/(P+R)`` with P = LCS/|pred|, R = LCS/|ref|.

    MUSE's VerbMem / KnowMem use this (``score['rougeL'].fmeasure`` in muse_bench
    metrics/logger.py) with ``use_stemmer=False`` — pass ``use_stemmer=MUSE_ROUGE_USE_STEMMER``
    to reproduce MUSE exactly; open-unlearning's MUSE port uses ``rougeL_f1`` with stemming.
    """
    return float(_rouge_l_score(prediction, reference, use_stemmer).fmeasure)


@functools.lru_cache(maxsize=1)
def _rouge_1_l_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)


def rouge_parts(prediction: str, reference: str) -> dict[str, float]:
    """The three ROUGE numbers open-unlearning keeps per TOFU item (its eval_text_similarity): ROUGE-1
    recall, ROUGE-L F-measure and ROUGE-L recall, stemmed, reference first as rouge_score wants it."""
    if not isinstance(prediction, str) or not isinstance(reference, str):
        raise TypeError("ROUGE inputs must be strings")
    score = _rouge_1_l_scorer().score(reference, prediction)
    return {
        "rouge1_recall": float(score["rouge1"].recall),
        "rougeL_f1": float(score["rougeL"].fmeasure),
        "rougeL_recall": float(score["rougeL"].recall),
    }


def rouge_l(
    predictions: Sequence[str],
    references: Sequence[str],
    kind: Literal["recall", "f1"] = "recall",
    *,
    use_stemmer: bool = True,
) -> FloatArray:
    """Per-item ROUGE-L (``kind="recall"``: TOFU; ``kind="f1"``: MUSE) as a float array in [0, 1]."""
    if kind not in ("recall", "f1"):
        raise ValueError(f"kind must be 'recall' or 'f1', got {kind!r}")
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("rouge_l takes sequences of strings; use rouge_l_recall / rouge_l_f1 for one pair")
    if len(predictions) == 0:
        raise ValueError("rouge_l: empty input")
    _same_length(predictions, references, "predictions", "references")
    fn = rouge_l_recall if kind == "recall" else rouge_l_f1
    return np.array([fn(p, r, use_stemmer=use_stemmer) for p, r in zip(predictions, references)], dtype=np.float64)


# --------------------------------------------------------------------------- MIA / PrivLeak


def min_k_score(token_logps: ArrayLike, k: float = 0.4) -> float:
    """Min-k% Prob score ``-mean`` of the ``max(1, int(k * n))`` lowest token log-probs.

    Higher = the text is *less* likely under the model. ``int`` truncates toward zero as in the
    references. MUSE (privleak.py ``inference``: ``k_length = int(len(all_prob) * ratio)``) has no
    floor of one, so texts with k·n < 1 give NaN there; open-unlearning (mia/min_k.py
    ``num_k = max(1, int(len(lp) * self.k))``) keeps at least one token, as here. MUSE's reported
    PrivLeak uses k = 0.4 ("Min-40%").
    """
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be in (0, 1], got {k}")
    lp = _vector(token_logps, "token_logps")
    num = max(1, int(lp.size * k))
    return float(-np.mean(np.sort(lp)[:num]))


def min_k_scores(token_logps: Sequence[ArrayLike], k: float = 0.4) -> FloatArray:
    """``min_k_score`` of each text's token log-probs, as a float array."""
    if len(token_logps) == 0:
        raise ValueError("min_k_scores: empty input")
    out = []
    for i, lp in enumerate(token_logps):
        try:
            out.append(min_k_score(lp, k))
        except ValueError as e:
            raise ValueError(f"item {i}: {e}") from None
    return np.array(out, dtype=np.float64)


# The other attacks of open-unlearning (src/evals/metrics/mia/). Every score reads like min-k's: higher =
# the text is LESS likely to have been trained on, so `mia_auc(forget, holdout)` of each is in MUSE's
# orientation (≈0 memorised, 0.5 alike) and open-unlearning reports 1 − it.


def loss_score(nll_avg: float) -> float:
    """LOSS attack (Yeom et al. 2018, "Privacy Risk in Machine Learning", IEEE CSF; open-unlearning
    mia/loss.py): the mean token NLL of the answer, EOS included (its `evaluate_probability` avg_loss)."""
    return float(nll_avg)


def zlib_score(nll_avg: float, text: str) -> float:
    """zlib attack (Carlini et al. 2021, "Extracting Training Data from Large Language Models", USENIX
    Security; open-unlearning mia/zlib.py): the mean token NLL divided by the length in bytes of the
    zlib-compressed UTF-8 text (the decoded answer tokens), so that texts that are simply easy to
    predict (repetitive, low entropy) do not look like members."""
    import zlib

    size = len(zlib.compress(text.encode("utf-8")))
    return float(nll_avg) / size


def reference_score(nll_avg: float, ref_nll_avg: float) -> float:
    """Reference-model attack (Carlini et al. 2021, "Extracting Training Data from Large Language
    Models", and Mireshghallah et al. 2022; open-unlearning mia/reference.py): the model's mean token
    NLL minus a reference model's on the same text (the retain or base model), calibrating away how
    hard the text is for any model."""
    return float(nll_avg) - float(ref_nll_avg)


def min_k_plus_plus_score(token_logps: ArrayLike, mu: ArrayLike, sigma2: ArrayLike, k: float = 0.4) -> float:
    """Min-K%++ (Zhang et al. 2025, "Min-K%++: Improved Baseline for Detecting Pre-Training Data from
    Large Language Models", ICLR, arXiv:2404.02936; open-unlearning mia/min_k_plus_plus.py): each token's
    log-prob standardised by the model's own next-token distribution, z_t = (log p(x_t) − μ_t) / σ_t with
    μ_t = E_{v~p}[log p(v)] and σ_t² = E_{v~p}[log² p(v)] − μ_t² (σ_t² floored at 1e-6), then minus the
    mean of the lowest ``max(1, int(k·n))`` z_t. Arrays per answer token, EOS position dropped."""
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be in (0, 1], got {k}")
    if np.asarray(token_logps).size == 0:
        return 0.0  # open-unlearning's value for an empty answer
    lp, m, s2 = _vector(token_logps, "token_logps"), _vector(mu, "mu"), _vector(sigma2, "sigma2")
    _same_length(lp, m, "token_logps", "mu")
    _same_length(lp, s2, "token_logps", "sigma2")
    z = (lp - m) / np.sqrt(np.maximum(s2, 1e-6))
    num = max(1, int(z.size * k))
    return float(-np.mean(np.sort(z)[:num]))


def mia_auc(member_scores: ArrayLike, nonmember_scores: ArrayLike) -> float:
    """ROC AUC with members as the positive class: ``P(s_member > s_nonmember) + P(tie) / 2``.

    ``sklearn.metrics.roc_auc_score(y, s)`` with y = 1 for members, 0 for non-members; a higher
    score is read as "more member-like". Pass MUSE's statistics unchanged (``min_k_score``: higher
    = LESS likely under the model) with members = forget set, non-members = holdout set: the
    result is then exactly MUSE's AUC (privleak.py: ``roc_curve(y, -ppl)`` with forget labelled 0,
    holdout 1), ≈0 for a model that memorised the forget set and ≈0.5 when forget and holdout look
    alike. open-unlearning's mia_auc labels forget 0 / holdout 1 on the same scores, so it reports
    1 − this value ("AUC 1 when forget is much more likely") and flips it back inside privleak.
    """
    from sklearn.metrics import roc_auc_score

    m = _vector(member_scores, "member_scores")
    n = _vector(nonmember_scores, "nonmember_scores")
    y = np.concatenate([np.ones(m.size), np.zeros(n.size)])
    return float(roc_auc_score(y, np.concatenate([m, n])))


def privleak(auc_model: float, auc_retrain: float) -> float:
    """MUSE PrivLeak in percent: ``(AUC_model - AUC_retrain) / AUC_retrain * 100``.

    With AUCs from ``mia_auc`` (MUSE convention) a model that memorised the forget set has
    AUC ≈ 0, so PrivLeak ≈ −100 %; the retrained model gives 0; positive values mean the forget
    set looks *less* likely than unseen text (over-unlearning). Same sign as published MUSE tables
    (muse_bench eval.py). open-unlearning computes ``((1-auc) - (1-ref)) / (1-ref) * 100`` on its
    flipped AUCs, the same number (plus a 1e-10 in the denominator).
    """
    a, r = float(auc_model), float(auc_retrain)
    if not (0.0 <= a <= 1.0 and 0.0 < r <= 1.0):
        raise ValueError(f"need 0 <= auc_model <= 1 and 0 < auc_retrain <= 1, got {a}, {r}")
    return (a - r) / r * 100.0


# --------------------------------------------------------------------------- memorization


def _bool_rows(correct: Sequence[ArrayLike], name: str) -> list[NDArray[np.bool_]]:
    if len(correct) == 0:
        raise ValueError(f"{name}: empty input")
    rows = []
    for i, c in enumerate(correct):
        a = np.atleast_1d(np.asarray(c))
        if a.ndim != 1 or a.size == 0:
            raise ValueError(f"{name}[{i}]: expected a non-empty 1-D correctness array, got shape {a.shape}")
        rows.append(a.astype(bool))
    return rows


def exact_memorization(correct: Sequence[ArrayLike]) -> FloatArray:
    """Per-item Exact Memorization: fraction of answer tokens whose teacher-forced argmax = label.

    ``correct[i][t]`` = (argmax_v p(v | x, y_<t) == y_t) for the answer tokens of item i (the
    caller decides which tokens count; open-unlearning drops the final EOS label via
    ``tokenwise_vocab_logprobs``). Source: open-unlearning memorization.exact_memorization
    (``(preds == labels).sum() / valid_len``).
    """
    return np.array([r.mean() for r in _bool_rows(correct, "correct")], dtype=np.float64)


def extraction_strength(correct: Sequence[ArrayLike], *, zero_when_unmatched: bool = False) -> FloatArray:
    """Per-item Extraction Strength ``1 - k / |y|``, k = shortest prefix after which all match.

    k is the smallest index such that every teacher-forced argmax prediction from position k on
    equals the label. Source: open-unlearning memorization.extraction_strength, whose loop
    ``for k in range(valid_len): if equal(preds[k:], labels[k:]): break`` leaves k = |y| - 1 when
    no suffix matches (last token wrong), so such an item scores 1/|y| rather than 0. That quirk
    is kept by default for comparability; ``zero_when_unmatched=True`` uses k = |y| (score 0).
    """
    out = []
    for r in _bool_rows(correct, "correct"):
        n = r.size
        wrong = np.flatnonzero(~r)
        k = 0 if wrong.size == 0 else int(wrong[-1]) + 1
        if k == n and not zero_when_unmatched:
            k = n - 1
        out.append(1.0 - k / n)
    return np.array(out, dtype=np.float64)


# --------------------------------------------------------------------------- collapse (paper §2)


def collapse_score(empirical: ArrayLike, model_logps: ArrayLike) -> float:
    """Paper Eq. 7: ``(1/n) sum_i KL(q(.|c_i) || p_theta(.|c_i))``, in nats.

    ``empirical``: [N, V] empirical next-token distributions q (rows sum to 1); ``model_logps``:
    [N, V] model log-probabilities log p_theta (a log_softmax). Terms with q = 0 contribute 0;
    q > 0 where p = 0 gives +inf. 0 when the model reproduces q exactly.
    """
    q = np.asarray(empirical, dtype=np.float64)
    lp = np.asarray(model_logps, dtype=np.float64)
    if q.ndim != 2 or q.shape[0] == 0 or q.shape[1] == 0:
        raise ValueError(f"empirical: expected a non-empty [N, V] array, got shape {q.shape}")
    if lp.shape != q.shape:
        raise ValueError(f"model_logps shape {lp.shape} != empirical shape {q.shape}")
    if (q < 0).any() or not np.allclose(q.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("empirical: rows must be non-negative and sum to 1")
    if np.isnan(lp).any():
        raise ValueError("model_logps: contains NaN")
    pos = q > 0
    # q log q - q log p on the support of q only (0 log 0 = 0, and 0 * -inf must not become NaN).
    terms = np.zeros_like(q)
    terms[pos] = q[pos] * (np.log(q[pos]) - lp[pos])
    return float(terms.sum(axis=1).mean())


def empirical_next_token(
    contexts_and_next: Iterable[tuple[Hashable, int]], vocab_size: int
) -> tuple[list[Hashable], FloatArray]:
    """Group (context_key, next_token_id) pairs by identical context into q(.|c).

    Returns the distinct keys in first-seen order and a [N, vocab_size] array whose row i is the
    empirical distribution of the next token after context ``keys[i]`` (counts / total).
    Contexts must be hashable (e.g. a tuple of token ids).
    """
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    counts: dict[Hashable, Counter[int]] = {}
    for key, tok in contexts_and_next:
        t = int(tok)
        if not 0 <= t < vocab_size:
            raise ValueError(f"token id {t} outside [0, {vocab_size})")
        counts.setdefault(key, Counter())[t] += 1
    if not counts:
        raise ValueError("empirical_next_token: empty input")
    keys = list(counts)
    q = np.zeros((len(keys), vocab_size), dtype=np.float64)
    for i, key in enumerate(keys):
        c = counts[key]
        total = sum(c.values())
        for t, m in c.items():
            q[i, t] = m / total
    return keys, q


def collapse_from_observations(observations: Iterable[tuple[Hashable, int, float]]) -> float:
    """Eq. 7 from teacher-forced data alone: observations are (context_key, next_token, log p_θ(next|context)).

    Identical contexts are grouped into the empirical q(.|c); only tokens with q > 0 enter
    KL(q || p) = sum_y q(y) (log q(y) - log p(y|c)), and their log p is what teacher forcing gave,
    so no full-vocabulary rows are needed. With all contexts distinct, this is the mean NLL.
    """
    groups: dict[Hashable, dict[int, list[float]]] = {}
    for key, token, logp in observations:
        groups.setdefault(key, {}).setdefault(int(token), []).append(float(logp))
    if not groups:
        raise ValueError("collapse_from_observations: no observations")
    total = 0.0
    for tokens in groups.values():
        n = sum(len(v) for v in tokens.values())
        for logps in tokens.values():
            q = len(logps) / n
            total += q * (np.log(q) - logps[0])
    return float(total / len(groups))


def top_token_rate(token_ids: ArrayLike | Sequence[Sequence[int]]) -> float:
    """Share of the most frequent token among all generated tokens (Def. 2.2 collapse signal).

    ``token_ids``: a flat sequence of ids or one sequence per generation (ragged allowed).
    Near 1 means the model emits one token regardless of context.
    """
    flat: list[int] = []
    for item in token_ids:
        if np.ndim(item) == 0:
            flat.append(int(item))
        else:
            flat.extend(int(t) for t in np.asarray(item).ravel())
    if not flat:
        raise ValueError("top_token_rate: no tokens")
    return Counter(flat).most_common(1)[0][1] / len(flat)
