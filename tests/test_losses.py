"""Every objective and term against values computed by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from mox_unlearn.errors import MoxError
from mox_unlearn.losses import LOSSES, LossInputs, SeqStats, answer_logits, get_loss, sequence_stats
from mox_unlearn.losses.base import kl_ref_to_policy
from mox_unlearn.train import effective_needs


def stats(token_logps, mask):
    return SeqStats(torch.tensor(token_logps, dtype=torch.float32), torch.tensor(mask))


def test_sequence_stats_shifts_and_masks():
    # vocabulary of 2; logits at position t predict token t+1.
    logits = torch.tensor([[[math.log(3), 0.0], [0.0, 0.0], [0.0, math.log(4)]]])  # [1, 3, 2]
    labels = torch.tensor([[-100, 0, 1]])  # prompt token, then two answer tokens
    s = sequence_stats(logits, labels)
    assert s.mask.tolist() == [[True, True]]
    # p(token 0 | pos 0) = 3/4, p(token 1 | pos 1) = 1/2
    assert torch.allclose(s.token_logps, torch.tensor([[math.log(0.75), math.log(0.5)]]))
    assert torch.allclose(s.seq_logp(), torch.tensor([math.log(0.375)]))
    assert answer_logits(logits, labels).shape == (2, 2)


def test_nll_pools_tokens_over_the_batch():
    # sequences with 1 and 3 answer tokens: pooled mean = (1 + 2 + 2 + 2) / 4, not mean of means (1.5)
    s = stats([[-1.0, 0, 0], [-2.0, -2.0, -2.0]], [[True, False, False], [True, True, True]])
    assert s.nll().item() == pytest.approx(7 / 4)
    assert s.n_tokens().tolist() == [1, 3]


def test_kl_of_identical_distributions_is_zero():
    logits = torch.randn(5, 7)
    assert kl_ref_to_policy(logits, logits.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_hand_value_and_direction():
    ref = torch.tensor([[0.0, 0.0]])  # p_ref = (1/2, 1/2)
    pol = torch.tensor([[math.log(3), 0.0]])  # p = (3/4, 1/4)
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # KL(p_ref || p) = ½ ln(4/3)
    assert kl_ref_to_policy(ref, pol).item() == pytest.approx(expected, rel=1e-6)
    # token mean over N positions: a second identical row gives the same mean
    assert kl_ref_to_policy(ref.repeat(2, 1), pol.repeat(2, 1)).item() == pytest.approx(expected, rel=1e-6)


def test_memorize_value_is_ce_plus_weighted_kl():
    forget = stats([[-1.0, -3.0]], [[True, True]])  # CE = 2
    ref, pol = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3), 0.0]])
    kl = 0.5 * math.log(4 / 3)
    loss, logs = get_loss("memorize").fn(
        LossInputs(forget=forget, retain_logits=pol, ref_retain_logits=ref), lambda_kl=0.5
    )
    assert loss.item() == pytest.approx(2 + 0.5 * kl, rel=1e-6)
    assert logs["ce"] == pytest.approx(2) and logs["kl"] == pytest.approx(0.5 * kl, rel=1e-5)


def test_memorize_gradient_equals_plain_cross_entropy_when_lambda_kl_is_zero():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11, requires_grad=True)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 1, 2, -100, -100]])
    ours, _ = get_loss("memorize").fn(LossInputs(forget=sequence_stats(logits, labels)), lambda_kl=0.0)
    (g_ours,) = torch.autograd.grad(ours, logits)
    plain = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    (g_plain,) = torch.autograd.grad(plain, logits)
    assert ours.item() == pytest.approx(plain.item(), rel=1e-6)
    assert torch.allclose(g_ours, g_plain, atol=1e-7)


def test_masking_excludes_prompt_and_padding_tokens():
    torch.manual_seed(0)
    logits = torch.randn(1, 6, 9)
    labels = torch.tensor([[-100, -100, -100, 4, 5, -100]])  # 3 prompt tokens, 2 answer tokens, 1 pad
    changed = logits.clone()
    changed[:, :2] = torch.randn(1, 2, 9) * 10  # positions predicting prompt tokens
    changed[:, 5] = torch.randn(9) * 10  # position after the last answer token (predicts padding)
    a, b = sequence_stats(logits, labels), sequence_stats(changed, labels)
    assert a.nll().item() == pytest.approx(b.nll().item())
    assert torch.equal(answer_logits(logits, labels), answer_logits(changed, labels))


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_po_term_at_reference_is_minus_two_over_beta_ln2(beta):
    s = stats([[-1.5, -0.5], [-2.0, 0.0]], [[True, True], [True, False]])
    loss, logs = get_loss("memorize_po").fn(LossInputs(forget=s, ref_forget=s), beta=beta, lambda_kl=0.0)
    assert loss.item() == pytest.approx(-(2 / beta) * math.log(2), rel=1e-6)


def test_po_term_hand_value_and_direction():
    # log-ratio r = 1 for item 1 and r = -2 for item 2, β = 0.1
    pol = stats([[-1.0], [-3.0]], [[True], [True]])
    ref = stats([[-2.0], [-1.0]], [[True], [True]])
    beta = 0.1
    expected = (2 / beta) * 0.5 * (math.log(1 / (1 + math.exp(0.1))) + math.log(1 / (1 + math.exp(-0.2))))
    loss, _ = get_loss("memorize_po").fn(LossInputs(forget=pol, ref_forget=ref), beta=beta, lambda_kl=0.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # minimising it raises the forget log-likelihood (memorization, not forgetting)
    logp = torch.tensor([[-1.0]], requires_grad=True)
    loss, _ = get_loss("memorize_po").fn(
        LossInputs(forget=SeqStats(logp, torch.tensor([[True]])), ref_forget=stats([[-1.0]], [[True]])), lambda_kl=0.0
    )
    loss.backward()
    assert logp.grad.item() < 0  # gradient descent increases log p


def test_targeted_term_subtracts_refusal_cross_entropy():
    forget = stats([[-1.0]], [[True]])
    target = stats([[-0.5, -1.5]], [[True, True]])  # CE = 1
    for name in ("memorize", "memorize_po"):
        base, _ = get_loss(name).fn(LossInputs(forget=forget, ref_forget=forget), lambda_kl=0.0)
        with_t, logs = get_loss(name).fn(
            LossInputs(forget=forget, ref_forget=forget, target=target), lambda_kl=0.0, gamma_t=0.3
        )
        assert with_t.item() == pytest.approx(base.item() - 0.3 * 1.0)
        assert logs["target"] == pytest.approx(-0.3)


def test_unknown_objective_lists_valid_ones():
    with pytest.raises(MoxError, match="valid objectives: .*memorize"):
        get_loss("gradient_descent")


def test_forward_passes_are_skipped_for_switched_off_terms():
    spec = LOSSES["memorize"]
    assert effective_needs(spec, {"lambda_kl": 1.0}, has_target=False) == {
        "forget",
        "retain_logits",
        "ref_retain_logits",
    }
    assert effective_needs(spec, {"lambda_kl": 0.0}, has_target=True) == {"forget", "target"}


def test_sequence_stats_at_answer_positions_equals_the_full_log_softmax():
    """sequence_stats log-softmaxes only the answer positions; values and gradients equal the plain
    [B, T-1, V] log-softmax + gather it replaced (performance change, same numbers)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g, requires_grad=True)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    labels[0, :3] = -100  # prompt
    labels[1, 5:] = -100  # padding
    labels[2, :] = -100  # a row with no answer token at all
    fast = sequence_stats(logits, labels)
    (grad_fast,) = torch.autograd.grad(fast.token_logps.sum(), logits)
    targets = labels[:, 1:]
    mask = targets != -100
    full = (
        torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    )
    (grad_full,) = torch.autograd.grad(full.sum(), logits)
    assert torch.equal(fast.mask, mask)
    torch.testing.assert_close(fast.token_logps, full, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad_fast, grad_full, rtol=0, atol=1e-6)
    assert fast.token_logps[2].abs().sum() == 0
