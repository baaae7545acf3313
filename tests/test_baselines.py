"""Baseline objectives against values computed by hand (arithmetic in the comments)."""

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from mox_unlearn.errors import MoxError
from mox_unlearn.losses import LOSSES, LossInputs, SeqStats, get_loss, sequence_stats
from mox_unlearn.losses.base import DIAGNOSTIC_LOGS, NEEDS

BASELINES = ("nll", "ga", "graddiff", "kl", "npo", "simnpo", "idkpo", "dpo", "altpo", "llmu", "rmu", "whp")
TOKEN_LEVEL = ("wga", "satimp", "undial", "ceu", "pdu")  # losses/token_level.py


def stats(token_logps, mask):
    return SeqStats(torch.tensor(token_logps, dtype=torch.float32), torch.tensor(mask))


def one(logp):
    """A batch of single-token answers with the given log-probs: seq_logp = logp, NLL = −mean."""
    return stats([[v] for v in logp], [[True]] * len(logp))


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


# p_ref = (1/2, 1/2), p_θ = (3/4, 1/4): KL(p_ref || p_θ) = ½ ln(½/¾) + ½ ln(½/¼) = ½ ln(4/3)
REF_LOGITS = torch.tensor([[0.0, 0.0]])
POL_LOGITS = torch.tensor([[math.log(3), 0.0]])
KL_HAND = 0.5 * math.log(4 / 3)


def full_inputs(seed=0):
    """Every LossInputs field filled with made-up tensors (B=2 sequences, T=3, V=5, H=4)."""
    g = torch.Generator().manual_seed(seed)

    def s():
        return SeqStats(-torch.rand(2, 3, generator=g), torch.tensor([[True, True, False], [True, True, True]]))

    return LossInputs(
        forget=s(),
        retain=s(),
        target=s(),
        ref_forget=s(),
        ref_retain=s(),
        ref_target=s(),
        retain_logits=torch.randn(4, 5, generator=g),
        ref_retain_logits=torch.randn(4, 5, generator=g),
        forget_logits=torch.randn(5, 5, generator=g),
        ref_forget_logits=torch.randn(5, 5, generator=g),
        reinforced_forget_logits=torch.randn(5, 5, generator=g),
        forget_hidden=torch.randn(5, 4, generator=g),
        retain_hidden=torch.randn(4, 4, generator=g),
        ref_retain_hidden=torch.randn(4, 4, generator=g),
        control=torch.rand(4, generator=g),
        forget_labels=torch.randint(0, 5, (5,), generator=g),
        forget_label_index=torch.tensor([0, 1, 0, 1, 2]),
        dual=2.0,
    )


# ----------------------------------------------------------------------------- registry


def test_every_baseline_is_registered_with_a_paper_and_known_needs():
    for name in BASELINES + TOKEN_LEVEL:
        spec = get_loss(name)
        doc = inspect.getdoc(spec.fn) or ""
        assert "arXiv:" in doc and " 20" in doc, f"{name}: docstring must name the source paper"
        assert spec.needs <= NEEDS, name
        # the registered defaults are exactly the function's keyword defaults
        params = list(inspect.signature(spec.fn).parameters.values())[1:]
        assert {p.name: p.default for p in params} == spec.defaults, name


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_logs_loss_equals_returned_loss_and_terms_add_up(name):
    loss, logs = LOSSES[name].fn(full_inputs(), **LOSSES[name].defaults)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert logs["loss"] == pytest.approx(loss.item(), rel=1e-6, abs=1e-6)
    assert all(isinstance(v, float) for v in logs.values())
    terms = [v for k, v in logs.items() if k != "loss" and k not in DIAGNOSTIC_LOGS]
    assert terms and sum(terms) == pytest.approx(logs["loss"], rel=1e-5, abs=1e-5)


def test_switched_off_regularisers_are_skipped_not_crashed():
    forget, target = one([-1.0]), one([-2.0])
    inputs = LossInputs(forget=forget, ref_forget=forget, target=target, ref_target=target)
    for name in ("graddiff", "npo", "simnpo", "idkpo", "dpo", "altpo"):
        _, logs = get_loss(name).fn(inputs, alpha_r=0.0)
        assert logs["retain"] == 0.0
    _, logs = get_loss("kl").fn(LossInputs(forget=forget), lambda_kl=0.0)
    assert logs["kl"] == 0.0
    _, logs = get_loss("llmu").fn(LossInputs(forget=forget), random_weight=0.0, lambda_kl=0.0)
    assert logs["loss"] == pytest.approx(-0.5 * 1.0)  # only −0.5·NLL(forget) = −0.5·1
    _, logs = get_loss("rmu").fn(LossInputs(forget_hidden=torch.zeros(1, 2), control=torch.ones(2)), alpha_r=0.0)
    assert logs["retain"] == 0.0


def test_missing_required_input_names_it():
    with pytest.raises(MoxError, match="target"):
        get_loss("idkpo").fn(LossInputs(retain=one([-1.0])))
    with pytest.raises(MoxError, match="ref_forget"):
        get_loss("npo").fn(LossInputs(forget=one([-1.0])))


# ----------------------------------------------------------------------------- GA family


def test_nll_and_ga_values():
    forget = stats([[-1.0, -3.0]], [[True, True]])  # NLL = (1 + 3) / 2 = 2
    assert get_loss("nll").fn(LossInputs(forget=forget))[0].item() == pytest.approx(2.0)
    loss, logs = get_loss("ga").fn(LossInputs(forget=forget), gamma=0.5)
    assert loss.item() == pytest.approx(-1.0) and logs["forget"] == pytest.approx(-1.0)  # −0.5·2


def test_ga_gradient_is_minus_the_nll_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11, requires_grad=True)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 1, 2, -100, -100]])
    ga, _ = get_loss("ga").fn(LossInputs(forget=sequence_stats(logits, labels)))
    (g_ga,) = torch.autograd.grad(ga, logits)
    nll, _ = get_loss("nll").fn(LossInputs(forget=sequence_stats(logits, labels)))
    (g_nll,) = torch.autograd.grad(nll, logits)
    plain = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert ga.item() == pytest.approx(-plain.item(), rel=1e-6)
    assert torch.allclose(g_ga, -g_nll, atol=1e-7)


def test_graddiff_hand_value():
    forget = stats([[-1.0, -3.0]], [[True, True]])  # NLL(forget) = 2
    retain = stats([[-0.5, 0.0], [-1.5, -1.0]], [[True, False], [True, True]])  # (0.5 + 1.5 + 1) / 3 = 1
    loss, logs = get_loss("graddiff").fn(LossInputs(forget=forget, retain=retain), alpha_r=3.0)
    assert loss.item() == pytest.approx(-2.0 + 3.0 * 1.0)  # −γ·2 + α_r·1, γ = 1
    assert logs["forget"] == pytest.approx(-2.0) and logs["retain"] == pytest.approx(3.0)


def test_kl_hand_value_and_zero_for_equal_logits():
    forget = stats([[-1.0, -3.0]], [[True, True]])  # NLL = 2
    inputs = LossInputs(forget=forget, retain_logits=POL_LOGITS, ref_retain_logits=REF_LOGITS)
    loss, logs = get_loss("kl").fn(inputs, lambda_kl=0.5)
    assert loss.item() == pytest.approx(-2.0 + 0.5 * KL_HAND, rel=1e-6)
    assert logs["kl"] == pytest.approx(0.5 * KL_HAND, rel=1e-5)
    same = torch.randn(3, 7)
    _, logs = get_loss("kl").fn(LossInputs(forget=forget, retain_logits=same, ref_retain_logits=same.clone()))
    assert logs["kl"] == pytest.approx(0.0, abs=1e-6)


def test_idkpo_hand_value():
    target = stats([[-0.5, -1.5]], [[True, True]])  # NLL(refusal) = 1
    retain = stats([[-2.0]], [[True]])  # NLL = 2
    loss, logs = get_loss("idkpo").fn(LossInputs(target=target, retain=retain), alpha_r=0.5)
    assert loss.item() == pytest.approx(1.0 + 0.5 * 2.0)
    assert logs == pytest.approx({"loss": 2.0, "target": 1.0, "retain": 1.0})


# ----------------------------------------------------------------------------- preference objectives


@pytest.mark.parametrize("beta", [0.1, 1.0, 2.0])
def test_npo_at_reference_is_two_over_beta_ln2(beta):
    s = stats([[-1.5, -0.5], [-2.0, 0.0]], [[True, True], [True, False]])
    # log-ratio r = 0 for every item: −(2/β)·log σ(0) = (2/β)·ln 2
    loss, logs = get_loss("npo").fn(LossInputs(forget=s, ref_forget=s), beta=beta, alpha_r=0.0)
    assert loss.item() == pytest.approx((2 / beta) * math.log(2), rel=1e-6)
    assert logs["npo"] == pytest.approx((2 / beta) * math.log(2), rel=1e-6)


def test_npo_hand_value_with_retain():
    pol, ref = one([-1.0, -3.0]), one([-2.0, -1.0])  # r = (1, −2)
    retain = one([-0.5])  # NLL = 0.5
    beta = 0.1
    # −(2/β)·½·[log σ(−0.1) + log σ(0.2)] + α_r·0.5
    npo = -(2 / beta) * 0.5 * (log_sigmoid(-0.1) + log_sigmoid(0.2))
    loss, logs = get_loss("npo").fn(LossInputs(forget=pol, ref_forget=ref, retain=retain), gamma=2.0, alpha_r=4.0)
    assert logs["npo"] == pytest.approx(2.0 * npo, rel=1e-6)
    assert loss.item() == pytest.approx(2.0 * npo + 4.0 * 0.5, rel=1e-6)


@pytest.mark.parametrize("beta", [0.1, 1.0, 2.0])
def test_dpo_at_reference_is_two_over_beta_ln2(beta):
    forget, target = one([-1.0, -2.5]), one([-3.0, -0.5])
    # both log-ratios are 0, so the margin is 0: −(2/β)·log σ(0) = (2/β)·ln 2
    inputs = LossInputs(forget=forget, ref_forget=forget, target=target, ref_target=target)
    loss, logs = get_loss("dpo").fn(inputs, beta=beta, alpha_r=0.0)
    assert loss.item() == pytest.approx((2 / beta) * math.log(2), rel=1e-6)
    assert logs["dpo"] == pytest.approx(loss.item(), rel=1e-6)


def test_dpo_hand_value_and_direction():
    # refusal: logp_θ = −2, logp_ref = −3 → +1; forget: logp_θ = −4, logp_ref = −2 → −2; margin = 3
    target, ref_target = one([-2.0]), one([-3.0])
    forget, ref_forget = one([-4.0]), one([-2.0])
    inputs = LossInputs(forget=forget, ref_forget=ref_forget, target=target, ref_target=ref_target)
    loss, _ = get_loss("dpo").fn(inputs, beta=0.1, alpha_r=0.0)
    assert loss.item() == pytest.approx(-(2 / 0.1) * log_sigmoid(0.1 * 3), rel=1e-6)  # 20·ln(1 + e^−0.3)
    # descent raises the refusal and lowers the forget answer
    t = torch.tensor([[-2.0]], requires_grad=True)
    f = torch.tensor([[-2.0]], requires_grad=True)
    m = torch.tensor([[True]])
    loss, _ = get_loss("dpo").fn(
        LossInputs(forget=SeqStats(f, m), ref_forget=one([-2.0]), target=SeqStats(t, m), ref_target=one([-2.0])),
        alpha_r=0.0,
    )
    loss.backward()
    assert t.grad.item() < 0 < f.grad.item()


def test_altpo_hand_value():
    # two (alternate, forget) pairs, β = 0.5
    # pair 1: alt (−1) − ref (−2) = 1; forget (−3) − ref (−1) = −2 → margin 3
    # pair 2: alt (−2) − ref (−2) = 0; forget (−1) − ref (−2) = 1 → margin −1
    alt, ref_alt = one([-1.0, -2.0]), one([-2.0, -2.0])
    forget, ref_forget = one([-3.0, -1.0]), one([-1.0, -2.0])
    retain = one([-0.25])  # NLL = 0.25
    beta = 0.5
    po = -(2 / beta) * 0.5 * (log_sigmoid(0.5 * 3) + log_sigmoid(0.5 * -1))  # = 2·[ln(1+e^−1.5) + ln(1+e^0.5)]
    inputs = LossInputs(forget=forget, ref_forget=ref_forget, target=alt, ref_target=ref_alt, retain=retain)
    loss, logs = get_loss("altpo").fn(inputs, beta=beta)
    assert logs["altpo"] == pytest.approx(po, rel=1e-6)
    assert logs["retain"] == pytest.approx(0.25)
    assert loss.item() == pytest.approx(po + 0.25, rel=1e-6)
    assert po == pytest.approx(2 * (math.log1p(math.exp(-1.5)) + math.log1p(math.exp(0.5))), rel=1e-12)


def test_simnpo_hand_value():
    # item 1: logps (−1, −2), |y| = 2 → logp/|y| = −1.5; item 2: (−0.6), |y| = 1 → −0.6 (padding masked)
    forget = stats([[-1.0, -2.0], [-0.6, 0.0]], [[True, True], [True, False]])
    beta, gamma = 2.5, 0.1375
    # σ arguments: −β·(−1.5) − 0 = 3.75 and −β·(−0.6) = 1.5
    term = -gamma * (2 / beta) * 0.5 * (log_sigmoid(3.75) + log_sigmoid(1.5))
    loss, logs = get_loss("simnpo").fn(LossInputs(forget=forget))  # defaults: β 2.5, δ 0, γ 0.1375
    assert logs["simnpo"] == pytest.approx(term, rel=1e-6)
    assert loss.item() == pytest.approx(term, rel=1e-6)  # no retain batch: term skipped
    # with a margin δ = 0.5 the arguments become 3.25 and 1.0
    loss, _ = get_loss("simnpo").fn(LossInputs(forget=forget), delta=0.5, gamma=1.0)
    assert loss.item() == pytest.approx(-(2 / beta) * 0.5 * (log_sigmoid(3.25) + log_sigmoid(1.0)), rel=1e-6)


def test_simnpo_descent_lowers_the_forget_likelihood():
    logp = torch.tensor([[-0.5, -0.5]], requires_grad=True)
    loss, _ = get_loss("simnpo").fn(LossInputs(forget=SeqStats(logp, torch.tensor([[True, True]]))))
    loss.backward()
    assert (logp.grad > 0).all()  # a descent step moves log p down: forgetting


# ----------------------------------------------------------------------------- LLMU


def test_llmu_terms_and_total():
    forget = stats([[-1.0, -3.0]], [[True, True]])  # NLL = 2 → −0.5·2 = −1
    target = stats([[-0.5], [-1.5]], [[True], [True]])  # random answers, NLL = 1 → +1·1
    inputs = LossInputs(forget=forget, target=target, retain_logits=POL_LOGITS, ref_retain_logits=REF_LOGITS)
    loss, logs = get_loss("llmu").fn(inputs)
    assert logs["forget"] == pytest.approx(-1.0)
    assert logs["random"] == pytest.approx(1.0)
    assert logs["kl"] == pytest.approx(KL_HAND, rel=1e-5)
    assert loss.item() == pytest.approx(-1.0 + 1.0 + KL_HAND, rel=1e-6)
    loss, logs = get_loss("llmu").fn(inputs, forget_weight=1.0, random_weight=2.0, lambda_kl=0.0)
    assert loss.item() == pytest.approx(-2.0 + 2.0) and logs["kl"] == 0.0


# ----------------------------------------------------------------------------- RMU


def test_rmu_is_zero_at_its_targets():
    u = torch.tensor([0.6, 0.8, 0.0])  # unit
    c = 6.5
    retain = torch.randn(4, 3)
    inputs = LossInputs(
        forget_hidden=(c * u).repeat(5, 1), retain_hidden=retain, ref_retain_hidden=retain.clone(), control=u
    )
    loss, logs = get_loss("rmu").fn(inputs, steering_coeff=c)
    assert loss.item() == pytest.approx(0.0, abs=1e-10)
    assert logs["forget"] == pytest.approx(0.0, abs=1e-10) and logs["retain"] == pytest.approx(0.0, abs=1e-10)


def test_rmu_hand_value():
    # H = 2, u = (1, 0), c = 2 → target (2, 0)
    # forget rows: (0, 0): ‖(−2, 0)‖²/2 = 2; (2, 2): ‖(0, 2)‖²/2 = 2 → mean 2
    # retain: (1, 1) vs ref (0, 0): ‖(1, 1)‖²/2 = 1; (0, 0) vs (0, 0): 0 → mean 0.5; α_r = 3 → 1.5
    inputs = LossInputs(
        forget_hidden=torch.tensor([[0.0, 0.0], [2.0, 2.0]]),
        retain_hidden=torch.tensor([[1.0, 1.0], [0.0, 0.0]]),
        ref_retain_hidden=torch.zeros(2, 2),
        control=torch.tensor([1.0, 0.0]),
    )
    loss, logs = get_loss("rmu").fn(inputs, steering_coeff=2.0, alpha_r=3.0)
    assert logs["forget"] == pytest.approx(2.0) and logs["retain"] == pytest.approx(1.5)
    assert loss.item() == pytest.approx(3.5)
    # the control vector is normalised: a longer u along the same direction gives the same loss
    inputs.control = torch.tensor([5.0, 0.0])
    assert get_loss("rmu").fn(inputs, steering_coeff=2.0, alpha_r=3.0)[0].item() == pytest.approx(3.5)


# ----------------------------------------------------------------------------- WHP


def test_whp_without_reinforcement_is_cross_entropy_to_the_reference():
    torch.manual_seed(0)
    ref, pol = torch.randn(6, 9), torch.randn(6, 9, requires_grad=True)
    loss, logs = get_loss("whp").fn(
        LossInputs(forget_logits=pol, ref_forget_logits=ref, reinforced_forget_logits=ref.clone()), alpha_w=3.0
    )
    # ReLU(v_r − v_b) = 0, so v_g = v_b and the target is softmax(ref) whatever α_w is
    expected = -(torch.softmax(ref, -1) * torch.log_softmax(pol, -1)).sum(-1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert logs["whp"] == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()  # gradient reaches the policy logits only
    assert pol.grad is not None and pol.grad.abs().sum() > 0


def test_whp_hand_value_two_token_vocabulary():
    # v_b = (1, 0), v_r = (2, 0): ReLU(v_r − v_b) = (1, 0); α_w = 1 → v_g = (0, 0) → p_g = (½, ½)
    # policy logits (ln 3, 0) → p_θ = (¾, ¼); CE = −½ ln ¾ − ½ ln ¼ = ½ ln(16/3)
    inputs = LossInputs(
        forget_logits=torch.tensor([[math.log(3), 0.0]]),
        ref_forget_logits=torch.tensor([[1.0, 0.0]]),
        reinforced_forget_logits=torch.tensor([[2.0, 0.0]]),
    )
    loss, _ = get_loss("whp").fn(inputs, alpha_w=1.0)
    assert loss.item() == pytest.approx(0.5 * math.log(16 / 3), rel=1e-6)
    # α_w = 2 → v_g = (−1, 0) → p_g = (1/(1+e), e/(1+e))
    p0 = 1 / (1 + math.e)
    loss, _ = get_loss("whp").fn(inputs, alpha_w=2.0)
    assert loss.item() == pytest.approx(-(p0 * math.log(0.75) + (1 - p0) * math.log(0.25)), rel=1e-6)


def test_empty_batches_give_zero_not_nan():
    empty = torch.zeros(0, 4)
    loss, _ = get_loss("rmu").fn(
        LossInputs(forget_hidden=empty, retain_hidden=empty, ref_retain_hidden=empty, control=torch.ones(4))
    )
    assert loss.item() == 0.0
    e = torch.zeros(0, 5)
    loss, _ = get_loss("whp").fn(LossInputs(forget_logits=e, ref_forget_logits=e, reinforced_forget_logits=e))
    assert loss.item() == 0.0
