"""WGA, SatImp, UNDIAL, CE-U and PDU: hand values, gradients, PDU's dual variable, and exact resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_unlearn import StopAt  # Ctrl-C right after a given step
from transformers import AutoModelForCausalLM

from mox_unlearn.cli import main
from mox_unlearn.forward import label_positions
from mox_unlearn.losses import LossInputs, SeqStats, get_loss
from mox_unlearn.methods.dual import DualAscent

FAST = ["per_device_batch_size=2", "batch_size=2", "lr=1e-3", "warmup_epochs=0", "max_length=64"]


def two_tokens(requires_grad=False) -> SeqStats:
    """One answer of two tokens with p = 1/2 and 1/4."""
    lp = torch.tensor([[math.log(0.5), math.log(0.25)]], requires_grad=requires_grad)
    return SeqStats(lp, torch.tensor([[True, True]]))


def test_wga_by_hand_and_its_detached_weights():
    f = two_tokens(requires_grad=True)
    loss, logs = get_loss("wga").fn(LossInputs(forget=f), beta=1.0, gamma=1.0, alpha_r=0.0)
    # mean_t p_t · log p_t = (½ ln ½ + ¼ ln ¼) / 2 = −(ln 2) / 2
    assert loss.item() == pytest.approx(-math.log(2) / 2) and logs["forget"] == pytest.approx(-math.log(2) / 2)
    loss.backward()
    # the weight carries no gradient: d/d log p_t = p_t / 2
    assert f.token_logps.grad[0].tolist() == pytest.approx([0.25, 0.125])
    loss2, _ = get_loss("wga").fn(LossInputs(forget=two_tokens()), beta=2.0, gamma=0.5, alpha_r=0.0)
    assert loss2.item() == pytest.approx(0.5 * (0.25 * math.log(0.5) + 0.0625 * math.log(0.25)) / 2)


def test_satimp_by_hand():
    # weights p^β1 (1 − p)^β2 with β1 = β2 = 1: ¼ and 3/16
    loss, _ = get_loss("satimp").fn(LossInputs(forget=two_tokens()), beta1=1.0, beta2=1.0, gamma=1.0, alpha_r=0.0)
    assert loss.item() == pytest.approx((0.25 * math.log(0.5) + 0.1875 * math.log(0.25)) / 2)
    retain = SeqStats(torch.tensor([[-2.0]]), torch.tensor([[True]]))
    loss, logs = get_loss("satimp").fn(LossInputs(forget=two_tokens(), retain=retain))  # defaults: γ 0.1, α_r 1
    assert logs["retain"] == pytest.approx(2.0) and logs["forget"] == pytest.approx(
        0.1 * (0.5**5 * 0.5 * math.log(0.5) + 0.25**5 * 0.75 * math.log(0.25)) / 2
    )


def test_undial_by_hand():
    """Reference logits (0, 0), true token 0, β = ln 3: target softmax(−ln 3, 0) = (¼, ¾); the student's
    p = (½, ½) gives CE = −(¼ ln ½ + ¾ ln ½) = ln 2."""
    inputs = LossInputs(
        forget_logits=torch.zeros(1, 2, requires_grad=True),
        ref_forget_logits=torch.zeros(1, 2),
        forget_labels=torch.tensor([0]),
    )
    loss, logs = get_loss("undial").fn(inputs, beta=math.log(3), gamma=1.0, alpha_r=0.0)
    assert loss.item() == pytest.approx(math.log(2)) and logs["retain"] == 0.0
    loss.backward()
    # gradient of CE(q, softmax z) wrt z is p − q = (½ − ¼, ½ − ¾)
    assert inputs.forget_logits.grad[0].tolist() == pytest.approx([0.25, -0.25])


def test_ceu_by_hand_and_the_first_answer_token_left_out():
    """Logits (ln 3, 0, 0), true token 0: target (0, ½, ½); p = (3/5, 1/5, 1/5): CE = −ln(1/5) = ln 5."""
    logits = torch.tensor([[9.0, -9.0, 0.0], [math.log(3), 0.0, 0.0]], requires_grad=True)
    inputs = LossInputs(
        forget_logits=logits, forget_labels=torch.tensor([1, 0]), forget_label_index=torch.tensor([0, 1])
    )
    loss, _ = get_loss("ceu").fn(inputs)  # ignore_first_n = 1: the row of index 0 does not count
    assert loss.item() == pytest.approx(math.log(5))
    loss.backward()
    assert logits.grad[0].abs().sum() == 0  # left out
    assert logits.grad[1].tolist() == pytest.approx([0.6, 0.2 - 0.5, 0.2 - 0.5])  # p − q, q without gradient
    loss, _ = get_loss("ceu").fn(inputs, ignore_first_n=0.0)
    q = torch.softmax(torch.tensor([9.0, 0.0]), -1)  # the target of row 0: softmax(9, −∞, 0) on tokens 0 and 2
    row0 = -(q * torch.log_softmax(torch.tensor([9.0, -9.0, 0.0]), -1)[[0, 2]]).sum()
    assert loss.item() == pytest.approx((row0.item() + math.log(5)) / 2, rel=1e-6)


def test_pdu_by_hand():
    """Rows (2, 0, 1) and (0, 0, 0): (max − mean)² = 1 and 0, mean ½; retain NLL 1, ε 0.3, λ 2: 2·0.7."""
    retain = SeqStats(torch.tensor([[-1.0]]), torch.tensor([[True]]))
    inputs = LossInputs(forget_logits=torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]]), retain=retain, dual=2.0)
    loss, logs = get_loss("pdu").fn(inputs, gamma=1.0, retain_loss_eps=0.3)
    assert loss.item() == pytest.approx(0.5 + 1.4)
    assert (logs["forget"], logs["retain"], logs["retain_nll"], logs["lambda"]) == pytest.approx((0.5, 1.4, 1.0, 2.0))


def test_the_dual_variable_rises_while_the_constraint_is_violated_after_the_warm_up():
    d = DualAscent.from_hp(
        {"alpha_r": 1.0, "retain_loss_eps": 0.5, "dual_step_size": 2.0, "dual_warmup_epochs": 1.0}, 2
    )
    assert (d.value, d.warmup_steps) == (1.0, 2)
    d.update(1.0, 1)
    d.update(1.0, 2)
    assert d.value == 1.0  # still warming up (epoch 1 = steps 1 and 2)
    d.update(1.0, 3)
    assert d.value == 2.0  # 1 + 2·(1 − 0.5)
    d.update(0.0, 4)
    assert d.value == 1.0
    d.update(0.0, 5)
    assert d.value == 0.0 and d.updates == 3
    d.update(0.0, 6)
    assert d.value == 0.0  # never below 0
    restored = DualAscent.from_hp(
        {"alpha_r": 7.0, "retain_loss_eps": 0.5, "dual_step_size": 2.0, "dual_warmup_epochs": 1.0}, 2
    )
    restored.load_state_dict(d.state_dict())
    assert (restored.value, restored.updates) == (0.0, 4)


def test_label_positions():
    labels = torch.tensor([[-100, -100, 5, 6, 7], [-100, 8, 9, -100, -100]])
    ids, index = label_positions(labels)
    assert ids.tolist() == [5, 6, 7, 8, 9] and index.tolist() == [0, 1, 2, 0, 1]
    # raw text (labels from position 0): the first token is never predicted but is the text's token 0, so
    # CE-U's ignore_first_n=1 leaves every target in, as open-unlearning counts on the unshifted labels
    ids, index = label_positions(torch.tensor([[3, 4, 5, -100], [6, 7, -100, -100]]))
    assert ids.tolist() == [4, 5, 7] and index.tolist() == [1, 2, 1]


@pytest.mark.slow
def test_pdu_resumes_with_its_dual_variable(tiny_model_dir, qa_files, tmp_path):
    """The dual variable is checkpointed: an interrupted PDU run resumed equals the uninterrupted one."""
    forget, retain = qa_files
    base = ["unlearn", "--method", "pdu", "--model", str(tiny_model_dir), "--forget", str(forget)]
    base += ["--retain", str(retain), *FAST, "--max-steps", "4", "checkpoint_every=1"]
    hp = ["loss.dual_warmup_epochs=0", "loss.alpha_r=1", "loss.retain_loss_eps=0.1", "loss.dual_step_size=3"]
    assert main([*base, *hp, "--out", str(tmp_path / "full")]) == 0
    assert main([*base, *hp, "--out", str(tmp_path / "cut")], callbacks=[StopAt(2)]) == 130
    assert main(["unlearn", "--resume", "--out", str(tmp_path / "cut")]) == 0
    logs = {
        name: [json.loads(x) for x in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        for name in ("full", "cut")
    }
    lambdas = [r["lambda"] for r in logs["full"]]
    assert lambdas == [r["lambda"] for r in logs["cut"]] and lambdas[0] == 1.0 and len(set(lambdas)) == 4  # it moved
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "model").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "cut" / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
