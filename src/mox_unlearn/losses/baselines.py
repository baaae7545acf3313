"""Baseline unlearning objectives the MOX paper compares against (Section 3, "Baseline Methods").

Conventions shared by every objective here:
- NLL(s) = s.nll(): mean token cross-entropy over the answer tokens of a batch, tokens pooled.
- logp(y|x) = s.seq_logp(): sequence log-probability summed over answer tokens.
- gamma (γ) weights the forget term, alpha_r (α_r) the retain term; both default to 1 unless the
  source paper tuned something else (SimNPO, RMU).
- Every logged term is its *weighted, signed* contribution, so the terms in `logs` add up to
  `logs["loss"]`.
- Regularisers (retain NLL, KL on retain) are skipped — a zero on the right device, as in
  memorize.py — when their weight is 0 or their input was not computed. The term that defines a
  method (forget, target, reference) is required; a missing one raises MoxError naming it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mox_unlearn.errors import MoxError
from mox_unlearn.losses.base import RETAIN_KL, RETAIN_NLL, LossInputs, SeqStats, kl_ref_to_policy, register_loss


def _device(inputs: LossInputs) -> torch.device:
    for value in vars(inputs).values():
        if isinstance(value, SeqStats):
            return value.token_logps.device
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


def _zero(inputs: LossInputs) -> torch.Tensor:
    return torch.zeros((), device=_device(inputs))


def _need(inputs: LossInputs, *names: str) -> None:
    missing = [n for n in names if getattr(inputs, n) is None]
    if missing:
        raise MoxError(f"objective needs {', '.join(missing)} but the training loop did not provide it")


def _retain_nll(inputs: LossInputs, alpha_r: float) -> torch.Tensor:
    """α_r · NLL(retain); 0 when α_r = 0 or no retain batch was computed."""
    if alpha_r == 0 or inputs.retain is None:
        return _zero(inputs)
    return alpha_r * inputs.retain.nll()


def _retain_kl(inputs: LossInputs, lambda_kl: float) -> torch.Tensor:
    """λ_kl · KL(p_ref || p_θ) averaged over retain answer tokens; 0 when off or not computed."""
    if lambda_kl == 0 or inputs.retain_logits is None or inputs.ref_retain_logits is None:
        return _zero(inputs)
    norm = inputs.norms.get("retain")
    return lambda_kl * kl_ref_to_policy(inputs.ref_retain_logits, inputs.retain_logits, norm)


def _npo_term(policy: SeqStats, ref: SeqStats, beta: float) -> torch.Tensor:
    """−(2/β) · mean_i log σ(−β (logp_θ(y_i|x_i) − logp_ref(y_i|x_i))); (2/β)·ln 2 at θ = θ_ref."""
    ratio = policy.seq_logp() - ref.seq_logp()
    return -(2.0 / beta) * F.logsigmoid(-beta * ratio).mean()


def _dpo_term(win: SeqStats, ref_win: SeqStats, lose: SeqStats, ref_lose: SeqStats, beta: float) -> torch.Tensor:
    """−(2/β) · mean_i log σ(β[(logp_θ − logp_ref)(win_i) − (logp_θ − logp_ref)(lose_i)])."""
    margin = (win.seq_logp() - ref_win.seq_logp()) - (lose.seq_logp() - ref_lose.seq_logp())
    return -(2.0 / beta) * F.logsigmoid(beta * margin).mean()


def _finish(**terms: torch.Tensor):
    """Sum the weighted terms; logs hold the total and every term as floats."""
    loss = sum(terms.values())
    logs = {"loss": loss.item()}
    logs.update({name: t.item() for name, t in terms.items()})
    return loss, logs


@register_loss("nll", needs=("forget",))
def nll(inputs: LossInputs):
    """Plain fine-tuning on the forget set: NLL(forget).

    Not an unlearning objective by itself. It is the first stage of two baselines:
    - Task vectors (Ilharco et al. 2023, "Editing Models with Task Arithmetic", arXiv:2212.04089):
      fine-tune on the forget set, then negate the task vector, θ_ref − α(θ_ft − θ_ref), with the
      same extrapolation code MOX uses (`mox_unlearn.extrapolation`).
    - Who's Harry Potter (Eldan & Russinovich 2023, arXiv:2310.02238): the "reinforced" model is
      θ_ref fine-tuned further on the forget set.
    """
    _need(inputs, "forget")
    return _finish(forget=inputs.forget.nll())


@register_loss("ga", needs=("forget",))
def ga(inputs: LossInputs, gamma: float = 1.0):
    """Gradient ascent: −γ · NLL(forget).

    Source: TOFU, Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs",
    arXiv:2401.06121 (MOX paper Eq. 1). NLL is the token mean pooled over the batch, what HF's
    `outputs.loss` gives in TOFU's code. Unbounded below.
    """
    _need(inputs, "forget")
    return _finish(forget=-gamma * inputs.forget.nll())


@register_loss("graddiff", needs=("forget", "retain"), switches={"alpha_r": RETAIN_NLL})
def graddiff(inputs: LossInputs, gamma: float = 1.0, alpha_r: float = 1.0):
    """Gradient difference (the MOX paper's GAD): −γ · NLL(forget) + α_r · NLL(retain).

    Source: Liu, Liu & Stone 2022, "Continual Learning and Private Unlearning", arXiv:2203.12817
    (MOX paper Eq. 2); the TOFU `grad_diff` loss (Maini et al. 2024, arXiv:2401.06121) with both
    weights 1. Both terms are pooled token means over their own batch.
    """
    _need(inputs, "forget")
    return _finish(forget=-gamma * inputs.forget.nll(), retain=_retain_nll(inputs, alpha_r))


@register_loss("kl", needs=("forget", "retain_logits", "ref_retain_logits"), switches={"lambda_kl": RETAIN_KL})
def kl(inputs: LossInputs, gamma: float = 1.0, lambda_kl: float = 1.0):
    """KL minimisation: −γ · NLL(forget) + λ_kl · KL(p_ref || p_θ) on retain answer tokens.

    Source: TOFU, Maini et al. 2024, arXiv:2401.06121 ("KL" baseline). Choice: TOFU's code averages
    the KL over every position of the retain sequences (prompt and padding included); we average it
    over retain answer positions only, the same KL term as MOX's Eq. 4, so the two are comparable.
    """
    _need(inputs, "forget")
    return _finish(forget=-gamma * inputs.forget.nll(), kl=_retain_kl(inputs, lambda_kl))


@register_loss("npo", needs=("forget", "ref_forget", "retain"), switches={"alpha_r": RETAIN_NLL})
def npo(inputs: LossInputs, beta: float = 0.1, gamma: float = 1.0, alpha_r: float = 1.0):
    """NPO (+ retain NLL): −γ·(2/β)·mean_i log σ(−β(logp_θ − logp_ref)(y_i|x_i)) + α_r·NLL(retain).

    Source: Zhang, Lin, Bai & Mei 2024, "Negative Preference Optimization: From Catastrophic Collapse
    to Effective Unlearning", arXiv:2404.05868 (MOX paper Eq. 3; the retain term is their NPO-RT).
    β = 0.1 as in the paper's TOFU runs. Sequence log-probs are summed over answer tokens; the mean
    is over the sequences of the batch. At θ = θ_ref the NPO term equals (2/β)·ln 2; as β → 0 its
    gradient tends to GA's on the summed log-likelihood.
    """
    _need(inputs, "forget", "ref_forget")
    term = gamma * _npo_term(inputs.forget, inputs.ref_forget, beta)
    return _finish(npo=term, retain=_retain_nll(inputs, alpha_r))


@register_loss("simnpo", needs=("forget", "retain"), switches={"alpha_r": RETAIN_NLL})
def simnpo(inputs: LossInputs, beta: float = 2.5, delta: float = 0.0, gamma: float = 0.1375, alpha_r: float = 1.0):
    """SimNPO: −γ·(2/β)·mean_i log σ(−β·logp_θ(y_i|x_i)/|y_i| − δ) + α_r·NLL(retain).

    Source: Fan, Liu, Lin, Jia, Zhang, Mei & Liu 2024, "Simplicity Prevails: Rethinking Negative
    Preference Optimization for LLM Unlearning", arXiv:2410.07163. Reference-free: the reward is the
    length-normalised log-likelihood, |y_i| = number of answer tokens of item i.

    Sign: the paper's objective has σ(−(β/|y|)·log π_θ(y|x) − γ); since log π_θ ≤ 0 the argument is
    large when the answer is likely, and minimising the loss pushes the average log-likelihood
    down. The paper calls the margin γ; here it is `delta`, and `gamma` is the forget weight.
    The authors' code (OPTML-Group/Unlearn-Simple, TOFU `simnpo_grad_diff`) computes
    σ(β·(NLL_sum/|y| − γ)), i.e. the margin is multiplied by β there (β·δ, not δ); the two agree
    at the TOFU setting δ = 0. We follow the paper's form.

    Defaults: TOFU forget05 — β = 2.5, δ = 0, forget weight 0.1375, retain weight 1 (their README
    command `npo_coeff=0.1375 beta=2.5`, `grad_diff_coeff` = 1; forget10 uses 0.125 and β = 4.5).
    The released model card writes the same numbers as λ = 0.1375 on the *retain* term; the code
    puts 0.1375 on the forget term and 1 on the retain term, which is what we do.
    """
    _need(inputs, "forget")
    length = inputs.forget.n_tokens().clamp(min=1)
    reward = inputs.forget.seq_logp() / length
    term = -gamma * (2.0 / beta) * F.logsigmoid(-beta * reward - delta).mean()
    return _finish(simnpo=term, retain=_retain_nll(inputs, alpha_r))


@register_loss("idkpo", needs=("target", "retain"), switches={"alpha_r": RETAIN_NLL})
def idkpo(inputs: LossInputs, alpha_r: float = 1.0):
    """TOFU's "Preference Optimization" (PO / IdkPO): NLL(target) + α_r · NLL(retain).

    Source: Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs", arXiv:2401.06121
    (`idk` loss). `target` = forget prompt → a refusal ("I don't know"-style) answer. TOFU's code
    concatenates the refusal and retain batches into one forward pass, which pools their tokens
    into one mean; we take the two means separately and add them (equal weights), so a long retain
    answer does not outweigh the refusal.
    """
    _need(inputs, "target")
    return _finish(target=inputs.target.nll(), retain=_retain_nll(inputs, alpha_r))


@register_loss(
    "dpo", needs=("forget", "ref_forget", "target", "ref_target", "retain"), switches={"alpha_r": RETAIN_NLL}
)
def dpo(inputs: LossInputs, beta: float = 0.1, gamma: float = 1.0, alpha_r: float = 1.0):
    """DPO with a refusal as the preferred answer and the forget answer as the dispreferred one:

        −γ·(2/β)·mean_i log σ(β[(logp_θ − logp_ref)(target_i) − (logp_θ − logp_ref)(forget_i)])
        + α_r·NLL(retain).

    Source: Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
    Reward Model", arXiv:2305.18290; used for unlearning with "I don't know" targets as in TOFU /
    NPO's IdkDPO (Zhang et al. 2024, arXiv:2404.05868). β = 0.1. The 2/β scale follows NPO's code so
    that DPO and NPO losses are on the same scale; at θ = θ_ref the DPO term is (2/β)·ln 2.
    """
    _need(inputs, "forget", "ref_forget", "target", "ref_target")
    term = gamma * _dpo_term(inputs.target, inputs.ref_target, inputs.forget, inputs.ref_forget, beta)
    return _finish(dpo=term, retain=_retain_nll(inputs, alpha_r))


@register_loss(
    "altpo", needs=("forget", "ref_forget", "target", "ref_target", "retain"), switches={"alpha_r": RETAIN_NLL}
)
def altpo(inputs: LossInputs, beta: float = 0.1, gamma: float = 1.0, alpha_r: float = 1.0):
    """AltPO: DPO preferring an *alternate* answer over the forget answer, plus retain NLL:

        −γ·(2/β)·mean_i log σ(β[(logp_θ − logp_ref)(alt_i) − (logp_θ − logp_ref)(forget_i)])
        + α_r·NLL(retain).

    Source: Mekala, Dorna, Dubey, Lalwani, Koleczek, Rungta, Hasan & Lobo 2024, "Alternate
    Preference Optimization for Unlearning Factual Knowledge in Large Language Models",
    arXiv:2409.13474 (COLING 2025). `target` holds the alternate: a plausible but different answer
    to the forget question, generated by θ_ref before training and cached. What we read in the
    authors' code (molereddy/Alternate-Preference-Optimization, `subdpo` → `dpo` in
    `dataloader.py`): the DPO loss with the alternate as winner and the forget answer as loser,
    with the 2/β scale, plus `retain_wt`·NLL(retain), `retain_wt` = 1. There is no separate NLL term
    on the alternates (their `subnpo` / `subdiff` variants with one are ablations). Their runs pair
    each forget question with several alternates (5 generated, one pair per row); pairing is the data
    loader's job, the loss sees one alternate per row. β is tuned per model (their guidance:
    {0.05, 0.1, 0.5}); we default to 0.1, the same as `dpo`.
    """
    _need(inputs, "forget", "ref_forget", "target", "ref_target")
    term = gamma * _dpo_term(inputs.target, inputs.ref_target, inputs.forget, inputs.ref_forget, beta)
    return _finish(altpo=term, retain=_retain_nll(inputs, alpha_r))


@register_loss(
    "llmu", needs=("forget", "target", "retain_logits", "ref_retain_logits"), switches={"lambda_kl": RETAIN_KL}
)
def llmu(inputs: LossInputs, forget_weight: float = 0.5, random_weight: float = 1.0, lambda_kl: float = 1.0):
    """LLMU: −w_f·NLL(forget) + w_r·NLL(target) + λ_kl·KL(p_ref || p_θ) on retain answer tokens.

    Source: Yao, Xu & Liu 2023, "Large Language Model Unlearning", arXiv:2310.10683 (NeurIPS 2024).
    `target` = forget prompt → the answer of a randomly drawn retain item (their "random mismatch"
    term). Weights from their code (kevinyaobytedance/llm_unlearn): bad_weight 0.5, random_weight 1,
    normal_weight 1. Choice: their KL runs over every position of the normal-data sequence; we use
    retain answer positions, the same KL as MOX and `kl`.
    """
    _need(inputs, "forget")
    forget = -forget_weight * inputs.forget.nll()
    if random_weight == 0:
        random = _zero(inputs)
    else:
        _need(inputs, "target")
        random = random_weight * inputs.target.nll()
    return _finish(forget=forget, random=random, kl=_retain_kl(inputs, lambda_kl))


def _token_mean(values: torch.Tensor, norm: float | None) -> torch.Tensor:
    """Mean of per-token values [N]; with `norm`, their sum divided by it (see SeqStats.norm)."""
    return values.mean() if norm is None else values.sum() / norm


def _mse(a: torch.Tensor, b: torch.Tensor, norm: float | None = None) -> torch.Tensor:
    """Mean over rows of ‖a − b‖² / H, in fp32; 0 for zero rows (a batch without answer tokens)."""
    if a.shape[0] == 0:
        return a.sum().float() * 0.0
    per_row = (a.float() - b.float().expand_as(a)).pow(2).mean(dim=-1)
    return _token_mean(per_row, norm)


@register_loss(
    "rmu",
    needs=("forget_hidden", "retain_hidden", "ref_retain_hidden", "control"),
    switches={"alpha_r": ("retain_hidden", "ref_retain_hidden")},
)
def rmu(inputs: LossInputs, steering_coeff: float = 6.5, alpha_r: float = 1200.0):
    """RMU: MSE(h_ℓ(forget), c·u) + α_r · MSE(h_ℓ(retain), h_ℓ^ref(retain)).

    MSE(a, b) = mean over the N answer positions of ‖a_n − b_n‖² / H (hidden size H), i.e. the
    element mean that `torch.nn.functional.mse_loss` takes. u = `inputs.control` (re-normalised here
    to unit length, so c alone sets the target norm); h_ℓ = hidden states at the RMU layer.

    Source: Li et al. 2024, "The WMDP Benchmark: Measuring and Reducing Malicious Use With
    Unlearning", arXiv:2403.03218 (Representation Misdirection for Unlearning). Defaults are the
    released Zephyr-7B setting (`cais/Zephyr_RMU`, `run_rmu_zephyr.ipynb`): c = 6.5 and α = 1200,
    layer 7 (the loop chooses the layer). `rmu/unlearn.py`'s argparse defaults are c = 20, α = 100;
    other models in the paper use other values. We keep α_r = 1200 rather than 1: c and α were tuned
    together, and the retain MSE starts at 0 and stays tiny per element, so with α_r = 1 the retain
    term would be about three orders of magnitude weaker than in the published balance. Both need
    re-tuning for a new model (activation norms differ per model and layer).

    Choices: WMDP averages over every token of the (raw-text) batch, padding included; we average
    over answer positions (all text tokens for raw-text forget sets). WMDP draws u with torch.rand
    (uniform on [0, 1)^H, then normalised), which the loop should reproduce.
    """
    _need(inputs, "forget_hidden", "control")
    u = inputs.control.float()
    u = u / u.norm().clamp(min=1e-12)
    forget = _mse(inputs.forget_hidden, steering_coeff * u, inputs.norms.get("forget"))
    if alpha_r == 0 or inputs.retain_hidden is None or inputs.ref_retain_hidden is None:
        retain = _zero(inputs)
    else:
        retain = alpha_r * _mse(inputs.retain_hidden, inputs.ref_retain_hidden, inputs.norms.get("retain"))
    return _finish(forget=forget, retain=retain)


@register_loss("whp", needs=("forget_logits", "ref_forget_logits", "reinforced_forget_logits"))
def whp(inputs: LossInputs, alpha_w: float = 1.0):
    """Who's Harry Potter: cross-entropy of the policy against soft "generic" targets.

        v_g = v_b − α_w · ReLU(v_r − v_b),  p_g = softmax(v_g)
        loss = mean_n [ −Σ_v p_g[n, v] · log softmax(v_θ)[n, v] ]

    over the N forget answer positions; v_b = reference (baseline) logits, v_r = logits of the
    reinforced model (θ_ref fine-tuned further on the forget set with `nll`), v_θ = policy logits.
    Source: Eldan & Russinovich 2023, "Who's Harry Potter? Approximate Unlearning in LLMs",
    arXiv:2310.02238, Eq. 1.

    Choices: the paper fine-tunes on the generic predictions as hard labels (and also replaces
    "anchored" terms through a GPT-4-made dictionary, which we do not reproduce); we use the soft
    distribution softmax(v_g), which keeps the whole generic ranking and has the same argmax. The
    target is a constant (no gradient). α_w = 1: the paper introduces α without a value we could
    confirm from the sources available to us; MUSE's WHP baseline (Shi et al. 2024,
    arXiv:2407.06460, `whos_harry_potter.py`) uses α = 1, which we follow.
    """
    _need(inputs, "forget_logits", "ref_forget_logits", "reinforced_forget_logits")
    logits = inputs.forget_logits
    if logits.shape[0] == 0:
        return _finish(whp=logits.sum().float() * 0.0)
    with torch.no_grad():
        v_b = inputs.ref_forget_logits.float()
        v_g = v_b - alpha_w * F.relu(inputs.reinforced_forget_logits.float() - v_b)
        target = torch.softmax(v_g, dim=-1)
    ce = _token_mean(-(target * torch.log_softmax(logits.float(), dim=-1)).sum(dim=-1), inputs.norms.get("forget"))
    return _finish(whp=ce)
