"""Membership-inference attacks besides min-k: hand values, the model statistics against direct computations,
and one AUC per attack in a TOFU result."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from mox_unlearn.cli import main
from mox_unlearn.data.formatting import PromptFormat, collate, encode_qa
from mox_unlearn.evaluate import metrics as M
from mox_unlearn.evaluate.stats import answer_grad_norms, answer_stats

FMT = PromptFormat()
QUESTIONS = ["Where was Alia Vorn born?", "What does Bram Teller write?"]
ANSWERS = ["In Quellport.", "Poems about winter and long trains."]


def test_scores_by_hand():
    assert M.loss_score(2.5) == 2.5
    # zlib.compress(b"abc") is 11 bytes, b"The quick brown fox." 28: a repetitive text is not rewarded
    assert M.zlib_score(2.2, "abc") == pytest.approx(0.2)
    assert M.zlib_score(2.8, "The quick brown fox.") == pytest.approx(0.1)
    assert M.zlib_score(2.2, "a" * 20) == pytest.approx(0.2)
    assert M.reference_score(3.0, 1.25) == 1.75
    # z = (logp − μ) / σ = [0, −0.5, −2]; the lowest max(1, int(0.4·3)) = 1 of them, negated
    lp, mu, s2 = [-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0], [1.0, 4.0, 1.0]
    assert M.min_k_plus_plus_score(lp, mu, s2, k=0.4) == pytest.approx(2.0)
    assert M.min_k_plus_plus_score(lp, mu, s2, k=1.0) == pytest.approx((0 + 0.5 + 2) / 3)
    assert M.min_k_plus_plus_score(lp, mu, [0.0, 4.0, 1e-9], k=0.4) == pytest.approx(2.0 / 1e-3)  # σ² floored at 1e-6
    assert M.min_k_plus_plus_score([], [], [], k=0.4) == 0.0
    with pytest.raises(ValueError, match="token_logps and mu differ in length"):
        M.min_k_plus_plus_score(lp, mu[:2], s2)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def test_vocabulary_moments_equal_a_direct_computation(model, tokenizer):
    """μ_t = Σ_v p log p and σ_t² = Σ_v p log² p − μ_t² at every answer position (open-unlearning's formula)."""
    stats = answer_stats(model, tokenizer, QUESTIONS, ANSWERS, FMT, batch_size=2, moments=True)
    for q, a, s in zip(QUESTIONS, ANSWERS, stats):
        ex = encode_qa(tokenizer, q, a, FMT, 512)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ex["input_ids"]])).logits[0, :-1].double(), -1)
        keep = torch.tensor(ex["labels"][1:]) != -100
        mu = (logp.exp() * logp).sum(-1)[keep]
        sigma2 = ((logp.exp() * logp.square()).sum(-1) - (logp.exp() * logp).sum(-1).square())[keep]
        assert np.allclose(s.token_mu, mu.numpy(), atol=1e-5) and np.allclose(s.token_sigma2, sigma2.numpy(), atol=1e-4)
        assert len(s.content_moments[0]) == len(s.content_logps) == s.n_tokens - 1  # EOS dropped


def test_grad_norms_equal_a_direct_backward(model, tokenizer):
    norms = answer_grad_norms(model, tokenizer, QUESTIONS, ANSWERS, FMT)
    for q, a, got in zip(QUESTIONS, ANSWERS, norms):
        ex = encode_qa(tokenizer, q, a, FMT, 512)
        batch = collate([ex], tokenizer.pad_token_id)
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=batch["input_ids"]).logits[0, :-1]
        labels = batch["labels"][0, 1:]
        keep = (labels != -100).nonzero().squeeze(-1)[:-1]  # the answer tokens, not the EOS
        loss = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
        loss.backward()
        expected = torch.stack([p.grad.norm(2) for p in model.parameters() if p.grad is not None]).mean()
        model.zero_grad(set_to_none=True)
        assert got == pytest.approx(float(expected), rel=1e-4)
    assert all(p.grad is None for p in model.parameters())  # nothing left behind
    with pytest.raises(ValueError, match="p must be 1, 2 or inf"):
        answer_grad_norms(model, tokenizer, QUESTIONS, ANSWERS, FMT, p=3)


def test_text_grad_norms_equal_a_direct_backward(model, tokenizer):
    """MUSE's GradNorm: every token of the text after the first is scored (a text has no EOS to drop)."""
    from mox_unlearn.evaluate.stats import text_grad_norms

    texts = ["Alia Vorn was born in Quellport and writes poems.", "Long trains cross the winter plain."]
    norms = text_grad_norms(model, tokenizer, texts, max_length=8)
    for text, got in zip(texts, norms):
        ids = torch.tensor([tokenizer(text, truncation=True, max_length=8)["input_ids"]])
        assert ids.shape[1] == 8  # the cut applies
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits[0, :-1], ids[0, 1:])
        loss.backward()
        expected = torch.stack([p.grad.norm(2) for p in model.parameters() if p.grad is not None]).mean()
        model.zero_grad(set_to_none=True)
        assert got == pytest.approx(float(expected), rel=1e-4)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.slow
def test_a_tofu_result_has_one_auc_per_attack(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "r.json"
    args = ["eval", "--benchmark", "tofu", "--model", str(tiny_model_dir), "--data", str(data_dir / "tofu")]
    args += ["--forget-split", "forget01", "--limit", "6", "--batch-size", "4"]
    assert main([*args, "--mia-reference", str(tiny_model_dir), "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    for attack in ("min_k", "loss", "zlib", "min_k_plus_plus", "gradnorm", "reference"):
        m = metrics[f"mia_{attack}"]
        assert 0 <= m["value"] <= 1 and m["auc_open_unlearning"] == pytest.approx(1 - m["value"])
        assert len(m["forget_scores"]) == len(m["holdout_scores"]) == 6
    # the model is its own reference: every score is 0, so forget and holdout cannot be told apart
    assert metrics["mia_reference"]["forget_scores"] == [0.0] * 6 and metrics["mia_reference"]["value"] == 0.5
    # LOSS is the mean NLL with EOS (the probability's), zlib that divided by the compressed answer's bytes
    nll = -np.log(metrics["forget_probability"]["per_item"])
    assert np.allclose(metrics["mia_loss"]["forget_scores"], nll)
    plain = tmp_path / "plain.json"
    assert main([*args, "--no-gradnorm", "--out", str(plain)]) == 0
    metrics = json.loads(plain.read_text())["metrics"]
    assert metrics["mia_reference"]["value"] is None and "--mia-reference" in metrics["mia_reference"]["reason"]
    assert metrics["mia_gradnorm"]["value"] is None and "--no-gradnorm" in metrics["mia_gradnorm"]["reason"]


@pytest.mark.slow
def test_a_muse_result_has_the_text_attacks(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "m.json"
    args = ["eval", "--benchmark", "muse", "--model", str(tiny_model_dir), "--data", str(data_dir / "muse-news")]
    assert main([*args, "--limit", "5", "--batch-size", "4", "--retain-result", "0.5", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    for attack in ("loss", "zlib", "min_k_plus_plus", "gradnorm"):
        m = metrics[f"mia_{attack}"]
        assert 0 <= m["value"] <= 1 and m["auc_open_unlearning"] == pytest.approx(1 - m["value"])
        assert len(m["forget_scores"]) == len(m["holdout_scores"]) == 5
    assert metrics["mia_reference"]["value"] is None and "--mia-reference" in metrics["mia_reference"]["reason"]
    # the model as its own reference: every score 0, forget and holdout cannot be told apart
    again = tmp_path / "again.json"
    more = ["--mia-reference", str(tiny_model_dir), "--no-gradnorm", "--out", str(again)]
    assert main([*args, "--limit", "5", "--batch-size", "4", *more]) == 0
    metrics = json.loads(again.read_text())["metrics"]
    assert metrics["mia_reference"]["forget_scores"] == [0.0] * 5 and metrics["mia_reference"]["value"] == 0.5
    assert metrics["mia_gradnorm"]["value"] is None and "--no-gradnorm" in metrics["mia_gradnorm"]["reason"]
    # zlib divides the LOSS score of each text by its compressed size: the same order of magnitude smaller
    assert all(z < loss for z, loss in zip(metrics["mia_zlib"]["forget_scores"], metrics["mia_loss"]["forget_scores"]))
