"""Pure metric functions against values worked out by hand (arithmetic in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import hmean, ks_2samp
from sklearn.metrics import roc_auc_score

from mox_unlearn.evaluate import metrics as M

# --------------------------------------------------------------------------- TOFU


def test_probability_is_per_token_geometric_mean():
    # item 0: NLL sum 2 over 4 tokens -> exp(-0.5); item 1: 3 over 3 -> exp(-1)
    p = M.probability([2.0, 3.0], [4, 3])
    assert p == pytest.approx([math.exp(-0.5), math.exp(-1.0)])
    assert p == pytest.approx([0.6065306597, 0.3678794412])
    # same thing as the product of per-token probabilities to the power 1/n
    tok = np.array([0.5, 0.25, 0.8, 0.9])
    assert M.probability(-np.log(tok).sum(), 4)[0] == pytest.approx(np.prod(tok) ** 0.25)


def test_probability_rejects_zero_tokens_and_mismatch():
    with pytest.raises(ValueError, match="at least one"):
        M.probability([1.0], [0])
    with pytest.raises(ValueError, match="differ in length"):
        M.probability([1.0, 2.0], [1])


def test_normalised_probability_ragged():
    # item 0: 0.5 / (0.5 + 0.25 + 0.25) = 0.5
    # item 1: 0.2 / (0.2 + 0.1 + 0.3 + 0.4) = 0.2   (three perturbed answers: ragged)
    out = M.normalised_probability([0.5, 0.2], [[0.25, 0.25], [0.1, 0.3, 0.4]])
    assert out == pytest.approx([0.5, 0.2])
    # rectangular numpy input: 0.6 / (0.6 + 0.2 + 0.2) = 0.6
    assert M.normalised_probability(np.array([0.6]), np.array([[0.2, 0.2]])) == pytest.approx([0.6])


def test_truth_ratio_per_item():
    # item 0: NLL_true 1, perturbed mean (2 + 4)/2 = 3 -> R = exp(-3)/exp(-1) = exp(-2) = 0.135335
    # item 1: NLL_true 2, perturbed mean (1 + 2)/2 = 1.5 -> R = exp(-1.5)/exp(-2) = exp(0.5) = 1.648721
    # item 2: three perturbed, all equal to the true NLL -> R = 1
    r = M.truth_ratio([1.0, 2.0, 0.5], [[2.0, 4.0], [1.0, 2.0], [0.5, 0.5, 0.5]])
    assert r == pytest.approx([math.exp(-2.0), math.exp(0.5), 1.0])
    assert r[:2] == pytest.approx([0.1353352832, 1.6487212707])
    # numerator is the geometric mean of the perturbed length-normalised probabilities
    gm = math.sqrt(math.exp(-2.0) * math.exp(-4.0))
    assert r[0] == pytest.approx(gm / math.exp(-1.0))


def test_truth_ratio_forget_aggregation():
    # min(R, 1/R): 0.5 -> 0.5, 2 -> 0.5, 1 -> 1; mean = 2/3
    assert M.truth_ratio_forget([0.5, 2.0, 1.0]) == pytest.approx(2.0 / 3.0)
    # TOFU's aggregate_eval_stat works on 1/R; min(x, 1/x) is symmetric so it agrees
    r = np.array([0.3, 1.7, 0.9])
    assert M.truth_ratio_forget(r) == pytest.approx(np.mean(np.minimum(1 / r, r)))


def test_truth_ratio_retain_aggregation():
    # max(0, 1 - R): 0.5 -> 0.5, 2 -> 0, 0.25 -> 0.75; mean = 1.25/3 = 0.416667
    assert M.truth_ratio_retain([0.5, 2.0, 0.25]) == pytest.approx(1.25 / 3.0)
    # TOFU form: curr = 1/R, value = mean(max(0, 1 - 1/curr))
    curr = 1 / np.array([0.5, 2.0, 0.25])
    assert M.truth_ratio_retain([0.5, 2.0, 0.25]) == pytest.approx(np.mean(np.maximum(0, 1 - 1 / curr)))


def test_forget_quality_matches_scipy_and_hand_value():
    rng = np.random.default_rng(0)
    a, b = rng.lognormal(size=40), rng.lognormal(0.3, size=35)
    assert M.forget_quality(a, b) == ks_2samp(a, b).pvalue
    # TOFU passes 1/R to the KS test; p-value is invariant to that monotone map
    assert M.forget_quality(a, b) == pytest.approx(ks_2samp(1 / a, 1 / b).pvalue)
    # fully separated samples of 3 and 3: D = 1, exact two-sided p = 2 / C(6, 3) = 2/20 = 0.1
    assert M.forget_quality([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1)


def test_forget_quality_identical_samples_is_one():
    r = [0.2, 0.5, 0.9, 1.3]
    assert M.forget_quality(r, list(r)) == 1.0


def test_model_utility_harmonic_mean():
    # 3 / (1/0.5 + 1/0.25 + 1/1) = 3 / 7
    vals = {"a": 0.5, "b": 0.25, "c": 1.0}
    assert M.model_utility(vals) == pytest.approx(3.0 / 7.0)
    assert M.model_utility(vals) == pytest.approx(hmean(list(vals.values())))
    assert M.model_utility([0.5, 0.25, 1.0]) == pytest.approx(3.0 / 7.0)


def test_model_utility_with_a_zero_is_zero():
    out = M.model_utility({"retain_rouge": 0.0, "retain_probability": 0.9, "wf_truth_ratio": 0.6})
    assert out == 0.0 and not math.isnan(out)


def test_model_utility_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        M.model_utility({})
    with pytest.raises(ValueError, match="non-negative"):
        M.model_utility({"a": -0.1, "b": 0.5})
    assert len(M.TOFU_MODEL_UTILITY_KEYS) == 9


# --------------------------------------------------------------------------- ROUGE


def test_rouge_recall_vs_f1_hand_lcs():
    # ref "the cat sat on the mat" (6 tokens), pred "the cat sat" (3 tokens): LCS = 3
    # recall = 3/6 = 0.5, precision = 3/3 = 1, F1 = 2*0.5*1/(0.5+1) = 2/3
    ref, pred = "the cat sat on the mat", "the cat sat"
    assert M.rouge_l_recall(pred, ref) == pytest.approx(0.5)
    assert M.rouge_l_f1(pred, ref) == pytest.approx(2.0 / 3.0)
    # ref "a cat sat on the mat" (6) vs pred "the mat sat" (3): common subsequences are "sat" (1)
    # and "the mat" (2); "sat" precedes "the" in ref but follows "mat" in pred, so LCS = 2
    # recall = 2/6 = 1/3, precision = 2/3, F1 = 2*(1/3)*(2/3)/(1) = 4/9
    assert M.rouge_l_recall("the mat sat", "a cat sat on the mat") == pytest.approx(1.0 / 3.0)
    assert M.rouge_l_f1("the mat sat", "a cat sat on the mat") == pytest.approx(4.0 / 9.0)


def test_rouge_batch_and_stemmer():
    preds, refs = ["the cat sat", "running cats"], ["the cat sat on the mat", "run cat"]
    # stemmed: "running cats" -> "run cat" matches fully (recall 1); unstemmed: no overlap (0)
    assert M.rouge_l(preds, refs, kind="recall") == pytest.approx([0.5, 1.0])
    assert M.rouge_l(preds, refs, kind="f1") == pytest.approx([2.0 / 3.0, 1.0])
    assert M.rouge_l(preds, refs, kind="f1", use_stemmer=False) == pytest.approx([2.0 / 3.0, 0.0])
    assert M.MUSE_ROUGE_KIND == "f1" and M.MUSE_ROUGE_USE_STEMMER is False
    assert M.TOFU_ROUGE_KIND == "recall" and M.TOFU_ROUGE_USE_STEMMER is True


def test_rouge_rejects_bad_input():
    with pytest.raises(ValueError, match="kind"):
        M.rouge_l(["a"], ["a"], kind="precision")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        M.rouge_l([], [])
    with pytest.raises(ValueError, match="differ in length"):
        M.rouge_l(["a", "b"], ["a"])
    with pytest.raises(TypeError):
        M.rouge_l("abc", "abc")  # type: ignore[arg-type]
    assert M.rouge_l_recall("", "the cat") == 0.0


# --------------------------------------------------------------------------- MIA / PrivLeak


def test_min_k_score_hand_values():
    # n = 5, k = 0.4: int(2.0) = 2 lowest of [-1,-5,-2,-4,-3] are -5, -4; -mean = 4.5
    assert M.min_k_score([-1.0, -5.0, -2.0, -4.0, -3.0], k=0.4) == pytest.approx(4.5)
    # n = 7, k = 0.4: int(2.8) = 2 (truncation, as in the references) -> -(-7 - 6)/2 = 6.5
    assert M.min_k_score([-1, -2, -3, -4, -5, -6, -7], k=0.4) == pytest.approx(6.5)
    # k = 1 is the plain mean NLL: (1 + 2 + 3) / 3 = 2
    assert M.min_k_score([-1.0, -2.0, -3.0], k=1.0) == pytest.approx(2.0)


def test_min_k_score_when_k_times_n_below_one():
    # n = 2, k = 0.4: int(0.8) = 0 -> at least one token -> lowest is -2.0 -> score 2.0
    assert M.min_k_score([-0.5, -2.0], k=0.4) == pytest.approx(2.0)
    assert M.min_k_score([-0.7], k=0.4) == pytest.approx(0.7)
    out = M.min_k_scores([np.array([-0.5, -2.0]), [-1.0, -5.0, -2.0, -4.0, -3.0]], k=0.4)
    assert out == pytest.approx([2.0, 4.5])
    with pytest.raises(ValueError, match="item 1"):
        M.min_k_scores([[-1.0], []])
    with pytest.raises(ValueError, match="k must be"):
        M.min_k_score([-1.0], k=0.0)


def test_mia_auc_pairwise_count():
    # members [0.9, 0.4, 0.6] vs non-members [0.5, 0.1]: member > non-member in
    # (0.9,0.5) (0.9,0.1) (0.4,0.1) (0.6,0.5) (0.6,0.1) = 5 of 6 pairs -> 5/6
    assert M.mia_auc([0.9, 0.4, 0.6], [0.5, 0.1]) == pytest.approx(5.0 / 6.0)
    # a tie counts one half: [0.5] vs [0.5, 0.2] -> (0.5 + 1) / 2 = 0.75
    assert M.mia_auc([0.5], [0.5, 0.2]) == pytest.approx(0.75)
    m, n = [0.3, 0.8, 0.1], [0.2, 0.7]
    assert M.mia_auc(m, n) == pytest.approx(roc_auc_score([1, 1, 1, 0, 0], m + n))


def test_mia_auc_matches_muse_label_convention():
    # MUSE: y = 0 for forget, 1 for holdout, score = -ppl (ppl = min-k score); AUC via roc_curve.
    rng = np.random.default_rng(1)
    forget, holdout = rng.normal(2.0, 1.0, 30), rng.normal(2.5, 1.0, 25)
    y = np.array([0] * 30 + [1] * 25)
    muse_auc = roc_auc_score(y, -np.concatenate([forget, holdout]))
    assert M.mia_auc(forget, holdout) == pytest.approx(muse_auc)


def test_privleak_sign_memorizing_model_is_negative():
    # memorising model: forget texts are far more likely (low min-k score) than holdout texts
    forget_lp = [np.full(10, -0.1), np.full(12, -0.2), np.full(8, -0.05)]
    holdout_lp = [np.full(10, -3.0), np.full(9, -2.5), np.full(11, -4.0)]
    auc = M.mia_auc(M.min_k_scores(forget_lp), M.min_k_scores(holdout_lp))
    assert auc == 0.0  # every member score (0.05..0.2) below every non-member score (2.5..4)
    # (0 - 0.4772) / 0.4772 * 100 = -100
    assert M.privleak(auc, M.MUSE_AUC_RETRAIN_MIN40["news"]) == pytest.approx(-100.0)
    # retrained model: AUC equal to the reference -> 0; AUC 0.6 vs 0.5 -> +20
    assert M.privleak(0.5, 0.5) == 0.0
    assert M.privleak(0.6, 0.5) == pytest.approx(20.0)
    with pytest.raises(ValueError):
        M.privleak(0.5, 0.0)


# --------------------------------------------------------------------------- memorization


def test_exact_memorization_hand_values():
    # [1,1,0,1] -> 3/4; [0,0] -> 0; [1] -> 1
    em = M.exact_memorization([np.array([True, True, False, True]), [0, 0], [1]])
    assert em == pytest.approx([0.75, 0.0, 1.0])


def test_extraction_strength_hand_values():
    correct = [
        [1, 1, 1, 1],  # all match from k = 0 -> 1 - 0/4 = 1
        [0, 1, 1, 1],  # suffix from k = 1 matches -> 1 - 1/4 = 0.75
        [1, 0, 1, 1],  # k = 2 -> 0.5
        [1, 1, 1, 0],  # no suffix matches: reference loop ends at k = 3 -> 1 - 3/4 = 0.25
        [0, 0],  # reference loop ends at k = 1 -> 0.5
        [0],  # reference loop ends at k = 0 -> 1.0 (open-unlearning quirk)
    ]
    assert M.extraction_strength(correct) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.5, 1.0])
    # paper definition: unmatched answers (last token wrong) need the whole answer, k = |y| -> 0
    strict = M.extraction_strength(correct, zero_when_unmatched=True)
    assert strict == pytest.approx([1.0, 0.75, 0.5, 0.0, 0.0, 0.0])


def test_memorization_rejects_empty():
    with pytest.raises(ValueError, match="empty"):
        M.exact_memorization([])
    with pytest.raises(ValueError, match=r"correct\[1\]"):
        M.extraction_strength([[1], []])


# --------------------------------------------------------------------------- collapse


def test_collapse_score_zero_when_model_equals_q():
    q = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    with np.errstate(divide="ignore"):
        lp = np.log(q)  # -inf where q = 0: those terms must contribute 0, not NaN
    assert M.collapse_score(q, lp) == 0.0


def test_collapse_score_hand_kl():
    q = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    p = np.array([[0.25, 0.25, 0.5], [0.5, 0.25, 0.25]])
    # row 0: 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.25) = ln 2
    # row 1: 1 * ln(1/0.25) = ln 4
    # mean = (ln 2 + ln 4) / 2 = 1.5 ln 2 = 1.0397208
    assert M.collapse_score(q, np.log(p)) == pytest.approx(1.5 * math.log(2.0))
    assert M.collapse_score(q, np.log(p)) == pytest.approx(1.0397207708)


def test_collapse_score_rejects_bad_q():
    with pytest.raises(ValueError, match="sum to 1"):
        M.collapse_score([[0.5, 0.2]], np.log([[0.5, 0.5]]))
    with pytest.raises(ValueError, match="shape"):
        M.collapse_score([[0.5, 0.5]], np.log([[0.3, 0.3, 0.4]]))


def test_empirical_next_token_groups_contexts():
    pairs = [((1, 2), 3), ((1, 2), 3), ((5,), 1), ((1, 2), 0)]
    keys, q = M.empirical_next_token(pairs, vocab_size=4)
    # context (1,2) seen 3 times: token 3 twice, token 0 once -> [1/3, 0, 0, 2/3]; (5,) -> token 1
    assert keys == [(1, 2), (5,)]
    assert q == pytest.approx(np.array([[1 / 3, 0, 0, 2 / 3], [0, 1, 0, 0]]))
    # a model reproducing q exactly has collapse 0; a model always predicting token 3 does not
    with np.errstate(divide="ignore"):
        assert M.collapse_score(q, np.log(q)) == 0.0
    with pytest.raises(ValueError, match="outside"):
        M.empirical_next_token([((0,), 4)], vocab_size=4)
    with pytest.raises(ValueError, match="empty"):
        M.empirical_next_token([], vocab_size=4)


def test_top_token_rate():
    # tokens 1,2,2 | 2,3 -> token 2 appears 3 times of 5 -> 0.6
    assert M.top_token_rate([[1, 2, 2], [2, 3]]) == pytest.approx(0.6)
    assert M.top_token_rate(np.array([7, 7, 7, 7])) == 1.0
    assert M.top_token_rate([4, 5]) == 0.5
    with pytest.raises(ValueError, match="no tokens"):
        M.top_token_rate([[], []])


# --------------------------------------------------------------------------- empties


@pytest.mark.parametrize(
    "call",
    [
        lambda: M.probability([], []),
        lambda: M.normalised_probability([], []),
        lambda: M.truth_ratio([], []),
        lambda: M.truth_ratio([1.0], [[]]),
        lambda: M.truth_ratio_forget([]),
        lambda: M.truth_ratio_retain([]),
        lambda: M.forget_quality([], [1.0]),
        lambda: M.min_k_score([]),
        lambda: M.min_k_scores([]),
        lambda: M.mia_auc([], [0.1]),
    ],
)
def test_empty_inputs_raise(call):
    with pytest.raises(ValueError):
        call()


def test_nan_inputs_raise():
    with pytest.raises(ValueError, match="NaN"):
        M.truth_ratio_forget([0.5, float("nan")])
    with pytest.raises(ValueError, match="NaN"):
        M.model_utility({"a": float("nan")})


def test_collapse_from_observations_hand_values():
    from mox_unlearn.evaluate.metrics import collapse_from_observations

    # distinct contexts: KL(one-hot || p) = -log p, mean over contexts
    assert collapse_from_observations([("a", 1, np.log(0.5)), ("b", 2, np.log(0.25))]) == pytest.approx(
        (np.log(2) + np.log(4)) / 2
    )
    # one context seen with tokens 1, 1, 2: q = (2/3, 1/3); p(1) = 0.5, p(2) = 0.25
    obs = [("c", 1, np.log(0.5)), ("c", 1, np.log(0.5)), ("c", 2, np.log(0.25))]
    expected = (2 / 3) * np.log((2 / 3) / 0.5) + (1 / 3) * np.log((1 / 3) / 0.25)
    assert collapse_from_observations(obs) == pytest.approx(expected)
