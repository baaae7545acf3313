"""MOX memorization objectives (paper Section 2.3): the model θ_mem that MOX extrapolates away from."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mox_unlearn.losses.base import RETAIN_KL, LossInputs, kl_ref_to_policy, register_loss


def _kl_term(inputs: LossInputs, lambda_kl: float) -> torch.Tensor:
    """λ_kl · KL(p_ref || p_θ) on retain answer tokens (Eq. 4/5, second term); 0 when λ_kl = 0."""
    if lambda_kl == 0 or inputs.retain_logits is None:
        return torch.zeros((), device=_device(inputs))
    norm = inputs.norms.get("retain")
    return lambda_kl * kl_ref_to_policy(inputs.ref_retain_logits, inputs.retain_logits, norm)


def _targeted_term(inputs: LossInputs, gamma_t: float) -> torch.Tensor:
    """−γ_t · CE(forget prompt → refusal target) (Eq. 9), 0 when no targeted batch was given.

    The minus is deliberate: θ_mem is pushed *away* from the refusal, so the extrapolation
    θ_for = θ_ref + α(θ_ref − θ_mem) moves *towards* it. Refusals were never in pre-training, so
    raising their loss on θ_mem does not reverse pre-training (the paper's "irreversible gradient").
    The paper writes the sum over D_R; the targets belong to forget prompts, which is what we use.
    """
    if inputs.target is None or gamma_t == 0:
        return torch.zeros((), device=_device(inputs))
    return -gamma_t * inputs.target.nll()


def _device(inputs: LossInputs) -> torch.device:
    return inputs.forget.token_logps.device


def _finish(mem: torch.Tensor, kl: torch.Tensor, tgt: torch.Tensor, mem_name: str):
    loss = mem + kl + tgt
    logs = {"loss": loss.item(), mem_name: mem.item(), "kl": kl.item()}
    if tgt.ne(0).item():
        logs["target"] = tgt.item()
    return loss, logs


@register_loss(
    "memorize", needs=("forget", "retain_logits", "ref_retain_logits", "target"), switches={"lambda_kl": RETAIN_KL}
)
def memorize(inputs: LossInputs, lambda_kl: float = 1.0, gamma_t: float = 1.0):
    """Eq. 4: mean token CE on forget answers + λ_kl · KL(p_ref || p_θ) on retain answer tokens.

    Both terms are token means (forget answer tokens pooled over the batch; KL averaged over retain
    answer positions only — prompt and padding positions are excluded, as the paper's KL is on
    h(y|x)). With the targeted variant, minus γ_t · CE on refusal targets (Eq. 9).
    """
    return _finish(inputs.forget.nll(), _kl_term(inputs, lambda_kl), _targeted_term(inputs, gamma_t), "ce")


@register_loss(
    "memorize_po",
    needs=("forget", "ref_forget", "retain_logits", "ref_retain_logits", "target"),
    switches={"lambda_kl": RETAIN_KL},
)
def memorize_po(inputs: LossInputs, beta: float = 0.1, lambda_kl: float = 1.0, gamma_t: float = 1.0):
    """Eq. 5: (2/β) · mean_i log σ(−β (log p_θ(y_i|x_i) − log p_ref(y_i|x_i))) + λ_kl · KL term.

    Sequence log-probs are summed over answer tokens. Minimising log σ(−β r) drives the log-ratio r
    up, so the forget answers become *more* likely than under θ_ref — NPO's term with the sign
    flipped, i.e. preference-style memorization. At θ = θ_ref its value is −(2/β)·ln 2.
    """
    ratio = inputs.forget.seq_logp() - inputs.ref_forget.seq_logp()
    po = (2.0 / beta) * F.logsigmoid(-beta * ratio).mean()
    return _finish(po, _kl_term(inputs, lambda_kl), _targeted_term(inputs, gamma_t), "po")
