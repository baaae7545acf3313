"""Token-level unlearning objectives from open-unlearning's method zoo: WGA, SatImp, UNDIAL, CE-U, PDU.

Each is a pure function of what the training loop hands it (LossInputs), written from its paper and
checked against the authors' / open-unlearning's code (cited per function; deviations named there).
Conventions as in baselines.py: γ (gamma) weights the forget term, α_r (alpha_r) the retain NLL; every
logged term is its weighted, signed contribution; token means divide by the step's answer tokens
(`norms`, so gradient accumulation and data parallelism give the mean over the whole step).
"""

from __future__ import annotations

import torch

from mox_unlearn.errors import MoxError
from mox_unlearn.losses.base import RETAIN_NLL, LossInputs, SeqStats, register_loss
from mox_unlearn.losses.baselines import _finish, _need, _retain_nll, _zero


def _token_mean(values: torch.Tensor, stats: SeqStats) -> torch.Tensor:
    """Σ over answer tokens of `values` ([B, T-1], zero elsewhere), divided like SeqStats.nll."""
    denom = stats.mask.sum().clamp(min=1) if stats.norm is None else stats.norm
    return values.sum() / denom


def _pooled_mean(values: torch.Tensor, norm: float | None) -> torch.Tensor:
    """Mean of per-answer-token values [N] (pooled over the batch), divided by the step's `norm` if set."""
    if values.numel() == 0:
        return values.sum() * 0.0
    return values.sum() / (values.numel() if norm is None else norm)


def weighted_ascent_term(forget: SeqStats, weights: torch.Tensor) -> torch.Tensor:
    """mean_t w_t · log p(y_t): gradient ascent on the NLL with a (detached) weight per answer token."""
    return _token_mean(weights.detach() * forget.token_logps * forget.mask, forget)


@register_loss("wga", needs=("forget", "retain"), switches={"alpha_r": RETAIN_NLL})
def wga(inputs: LossInputs, beta: float = 1.0, gamma: float = 1.0, alpha_r: float = 1.0):
    """Weighted gradient ascent: γ · mean_t p(y_t)^β · log p(y_t) + α_r · NLL(retain).

    Source: Wang et al. 2025, "Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go Beyond",
    ICLR, arXiv:2502.19301 (WGA); open-unlearning `compute_wga_loss` (src/trainer/utils.py) and its
    configs/trainer/WGA.yaml (β = 1, γ = 1, α = 1, lr 1e-5, 5 epochs). The weight p^β (no gradient) makes
    the ascent fade on tokens the model no longer predicts, so it does not diverge like plain GA.
    """
    _need(inputs, "forget")
    f = inputs.forget
    weights = f.token_logps.exp() ** beta
    return _finish(forget=gamma * weighted_ascent_term(f, weights), retain=_retain_nll(inputs, alpha_r))


@register_loss("satimp", needs=("forget", "retain"), switches={"alpha_r": RETAIN_NLL})
def satimp(inputs: LossInputs, beta1: float = 5.0, beta2: float = 1.0, gamma: float = 0.1, alpha_r: float = 1.0):
    """SatImp: γ · mean_t p^β₁ (1 − p)^β₂ · log p(y_t) + α_r · NLL(retain).

    Source: Yang et al. 2025, "Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning", ICML,
    arXiv:2505.11953; open-unlearning `compute_satimp_loss`. The weight favours tokens that are likely
    (saturation, p^β₁) but not yet certain (importance, (1 − p)^β₂). Defaults are open-unlearning's
    configs/trainer/SatImp.yaml (β₁ 5, β₂ 1, γ 0.1 on the forget term, α 1 on retain, lr 1e-5, 5 epochs);
    its community README states the weights the other way round (γ 1, α 0.1): pass loss.gamma=1
    loss.alpha_r=0.1 for that reading.
    """
    _need(inputs, "forget")
    f = inputs.forget
    p = f.token_logps.exp()
    weights = p**beta1 * (1.0 - p) ** beta2
    return _finish(forget=gamma * weighted_ascent_term(f, weights), retain=_retain_nll(inputs, alpha_r))


def _labels(inputs: LossInputs) -> torch.Tensor:
    if inputs.forget_labels is None or inputs.forget_logits is None:
        raise MoxError("objective needs forget_logits and forget_labels but the training loop did not provide them")
    if inputs.forget_labels.shape[0] != inputs.forget_logits.shape[0]:
        raise MoxError("forget_labels and forget_logits disagree on the number of answer tokens")
    return inputs.forget_labels


def undial_targets(ref_logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """softmax(ref logits − β · onehot(label)): the reference's distribution with the true token's logit
    lowered by β. [N, V]."""
    adjusted = ref_logits.float().clone()
    adjusted[torch.arange(labels.shape[0], device=labels.device), labels] -= beta
    return torch.softmax(adjusted, dim=-1)


@register_loss(
    "undial", needs=("forget_logits", "ref_forget_logits", "forget_labels", "retain"), switches={"alpha_r": RETAIN_NLL}
)
def undial(inputs: LossInputs, beta: float = 10.0, gamma: float = 1.0, alpha_r: float = 0.0):
    """UNDIAL: γ · mean_t CE(p_θ, softmax(z_ref − β·e_y)) + α_r · NLL(retain).

    Source: Dong et al. 2025, "UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in
    Large Language Models", NAACL, arXiv:2402.10052; open-unlearning `compute_undial_loss` and
    configs/trainer/UNDIAL.yaml (β 10, γ 1, α 0: the paper uses no retain set; lr 1e-4). A self-distillation
    toward the frozen reference whose logit of the true token is lowered by β: bounded, unlike ascent.
    Deviation: open-unlearning averages over every position of the batch, prompt and padding included (and
    indexes the vocabulary with −100 there); here only the answer tokens count, as in the paper.
    """
    labels = _labels(inputs)
    _need(inputs, "ref_forget_logits")
    targets = undial_targets(inputs.ref_forget_logits, labels, beta)
    per_token = -(targets * torch.log_softmax(inputs.forget_logits.float(), dim=-1)).sum(-1)  # [N]
    forget = gamma * _pooled_mean(per_token, inputs.norms.get("forget"))
    return _finish(forget=forget, retain=_retain_nll(inputs, alpha_r))


def ceu_targets(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """softmax of the model's own logits (no gradient) with the true token's set to −∞. [N, V]."""
    masked = logits.detach().float().clone()
    masked[torch.arange(labels.shape[0], device=labels.device), labels] = float("-inf")
    return torch.softmax(masked, dim=-1)


@register_loss("ceu", needs=("forget_logits", "forget_labels"))
def ceu(inputs: LossInputs, ignore_first_n: float = 1.0):
    """CE-U (cross-entropy unlearning): mean_t CE(p_θ, softmax(z_θ with z_y = −∞)), no gradient into the target.

    Source: Yang 2025, "CE-U: Cross Entropy Unlearning", arXiv:2503.01224; open-unlearning
    src/trainer/unlearn/ceu.py (`cross_entropy_unlearning_loss`, `ignore_first_n_answer_tokens` 1, the
    footnote of the paper's training settings). The gradient is p_θ − q: it lowers the true token's
    probability toward 0 while keeping the rest of the distribution's shape, and vanishes when p(y) = 0.
    The first `ignore_first_n` tokens of every answer are left out; the mean is over the kept tokens of this
    micro-batch (with gradient accumulation: a mean of micro-batch means, as in open-unlearning).
    """
    labels = _labels(inputs)
    if inputs.forget_label_index is None:
        raise MoxError("objective needs forget_label_index but the training loop did not provide it")
    keep = inputs.forget_label_index >= int(ignore_first_n)
    if not bool(keep.any()):
        return _finish(forget=_zero(inputs) + inputs.forget_logits.sum() * 0.0)
    logits, labels = inputs.forget_logits[keep], labels[keep]
    targets = ceu_targets(logits, labels)
    per_token = -(targets * torch.log_softmax(logits.float(), dim=-1)).sum(-1)
    return _finish(forget=per_token.mean())


@register_loss("pdu", needs=("forget_logits", "retain", "dual"))
def pdu(
    inputs: LossInputs,
    gamma: float = 1.0,
    alpha_r: float = 100.0,
    retain_loss_eps: float = 0.3,
    dual_step_size: float = 5.0,
    dual_warmup_epochs: float = 5.0,
):
    """PDU (primal-dual unlearning): γ · mean_t (max_v z_t,v − mean_v z_t,v)² + λ · (NLL(retain) − ε).

    Source: Entesari et al. 2025, "Constrained Entropic Unlearning: A Primal-Dual Framework for Large Language
    Models", arXiv:2506.05314; open-unlearning src/trainer/unlearn/pdu.py and community/methods/PDU/run.sh
    (TOFU: γ 1, initial λ 100, ε 0.3, dual step 5, dual updates after 5 warm-up epochs, lr 1e-5). The forget
    term flattens the logits at every answer position (driving the output toward maximal entropy); the
    retain NLL is a constraint NLL ≤ ε whose multiplier λ (starting at `alpha_r`) the loop raises by
    `dual_step_size` · (NLL(retain) − ε) after each optimizer step once `dual_warmup_epochs` are over, never
    below 0 (methods/dual.py, saved in checkpoints). λ is the same number on every process (the step's
    retain NLL is averaged over them). Deviation: open-unlearning masks the forget term with the labels
    unshifted (the positions that hold an answer token); here the positions that predict one, like every
    other objective.
    """
    if inputs.forget_logits is None:
        raise MoxError("objective needs forget_logits but the training loop did not provide it")
    if inputs.dual is None:
        raise MoxError("objective needs the dual variable (dual) but the training loop did not provide it")
    z = inputs.forget_logits.float()
    flat = (z.max(dim=-1).values - z.mean(dim=-1)) ** 2
    forget = gamma * _pooled_mean(flat, inputs.norms.get("forget"))
    retain_nll = inputs.retain.nll() if inputs.retain is not None else _zero(inputs)
    loss, logs = _finish(forget=forget, retain=inputs.dual * (retain_nll - retain_loss_eps))
    logs["retain_nll"] = retain_nll.item()  # what the dual update reads (not a term of the loss)
    logs["lambda"] = float(inputs.dual)
    return loss, logs
