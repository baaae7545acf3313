"""Statistics gathered from a model: the only evaluation code that touches one.

Everything here is batched, runs under `torch.no_grad`, sorts items by length so batches carry
little padding, and returns per-item results in the caller's order. Metrics (metrics.py) are pure
functions of what these return.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mox_unlearn.data.formatting import IGNORE_INDEX, PromptFormat, collate, encode_qa, prompt_ids
from mox_unlearn.losses import sequence_stats


@dataclass
class AnswerStats:
    """Teacher-forced statistics of one answer given its question (answer tokens + EOS only).

    token_logps: [n] log p(answer token | prefix); correct: [n] teacher-forced argmax == token;
    input_ids: the whole sequence, whose last n tokens are the answer tokens; ends_with_eos: the last
    scored position is the EOS appended to the answer (False where truncation cut it, or for raw text).
    """

    token_logps: np.ndarray
    correct: np.ndarray
    input_ids: tuple[int, ...] = ()
    ends_with_eos: bool = False
    # with `moments`: per answer position, the mean and variance of log p(v) under the model's own
    # next-token distribution (Min-K%++); None otherwise
    token_mu: np.ndarray | None = None
    token_sigma2: np.ndarray | None = None

    def _content(self, a: np.ndarray | None) -> np.ndarray | None:
        return a[:-1] if a is not None and self.ends_with_eos else a

    @property
    def content_moments(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(token_mu, token_sigma2) without the EOS position, like `content_logps`."""
        return self._content(self.token_mu), self._content(self.token_sigma2)

    @property
    def content_logps(self) -> np.ndarray:
        """`token_logps` without the EOS position: what extraction strength, exact memorization and min-k
        score (open-unlearning's `tokenwise_logprobs` drops it). Probability and truth ratio keep it."""
        return self.token_logps[:-1] if self.ends_with_eos else self.token_logps

    @property
    def content_correct(self) -> np.ndarray:
        """`correct` without the EOS position (see `content_logps`)."""
        return self.correct[:-1] if self.ends_with_eos else self.correct

    def observations(self):
        """(context, next token, log p) for each answer position, for collapse_from_observations."""
        start = len(self.input_ids) - self.n_tokens
        for j, lp in enumerate(self.token_logps):
            yield self.input_ids[: start + j], self.input_ids[start + j], float(lp)

    @property
    def n_tokens(self) -> int:
        return int(self.token_logps.size)

    @property
    def nll_sum(self) -> float:
        return float(-self.token_logps.sum())

    @property
    def nll_avg(self) -> float:
        return self.nll_sum / max(self.n_tokens, 1)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _by_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so memory peaks early)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _bar(total: int, desc: str | None):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=desc is None, leave=False)


@torch.no_grad()
def score_examples(
    model,
    examples: list[dict],
    pad_id: int,
    *,
    batch_size: int = 16,
    desc: str | None = None,
    eos_id: int | None = None,
    moments: bool = False,
) -> list[AnswerStats]:
    """Teacher-forced log-probs and argmax correctness of the labelled tokens of encoded examples.

    With `eos_id`, an example whose last label is that id is marked `ends_with_eos` (see AnswerStats);
    with `moments`, the mean and variance of log p over the vocabulary at each answer position too."""
    model.eval()
    device = _device(model)
    results: list[AnswerStats | None] = [None] * len(examples)
    with _bar(len(examples), desc) as bar:
        for idx in _by_length([len(e["input_ids"]) for e in examples], batch_size):
            batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx], pad_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            stats = sequence_stats(logits, batch["labels"])
            hits = logits[:, :-1].argmax(-1) == batch["labels"][:, 1:]
            mu = sigma2 = None
            if moments:
                logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [B, T-1, V]
                mu = (logp.exp() * logp).sum(-1)
                sigma2 = (logp.exp() * logp.square()).sum(-1) - mu.square()
            for row, i in enumerate(idx):
                m = stats.mask[row]
                labels = examples[i].get("labels") or ()
                results[i] = AnswerStats(
                    stats.token_logps[row][m].double().cpu().numpy(),
                    hits[row][m].cpu().numpy(),
                    tuple(examples[i]["input_ids"]),
                    ends_with_eos=eos_id is not None and bool(labels) and labels[-1] == eos_id,
                    token_mu=None if mu is None else mu[row][m].double().cpu().numpy(),
                    token_sigma2=None if sigma2 is None else sigma2[row][m].double().cpu().numpy(),
                )
            bar.update(len(idx))
    return results  # type: ignore[return-value]


def answer_stats(
    model,
    tokenizer,
    questions: Sequence[str],
    answers: Sequence[str],
    fmt: PromptFormat,
    *,
    batch_size: int = 16,
    max_length: int = 512,
    desc: str | None = None,
    moments: bool = False,
) -> list[AnswerStats]:
    """AnswerStats of each (question, answer) pair, formatted exactly as in training (`moments`: see
    score_examples)."""
    examples = [encode_qa(tokenizer, q, a, fmt, max_length) for q, a in zip(questions, answers)]
    return score_examples(
        model,
        examples,
        tokenizer.pad_token_id,
        batch_size=batch_size,
        desc=desc,
        eos_id=tokenizer.eos_token_id,
        moments=moments,
    )


def answer_grad_norms(
    model,
    tokenizer,
    questions: Sequence[str],
    answers: Sequence[str],
    fmt: PromptFormat,
    *,
    p: float = 2.0,
    max_length: int = 512,
    desc: str | None = None,
) -> np.ndarray:
    """GradNorm attack statistics (open-unlearning mia/gradnorm.py; Wang et al. 2024, arXiv:2402.17012):
    for each answer alone, the gradient of its mean token NLL (answer tokens, EOS position dropped) with
    respect to every parameter, and the mean over parameters of each gradient's p-norm (`grad_norms`)."""
    examples = [encode_qa(tokenizer, q, a, fmt, max_length) for q, a in zip(questions, answers)]
    return grad_norms(model, examples, tokenizer.pad_token_id, p=p, eos=tokenizer.eos_token_id, desc=desc)


def text_grad_norms(
    model, tokenizer, texts: Sequence[str], *, p: float = 2.0, max_length: int = 512, desc: str | None = None
) -> np.ndarray:
    """`answer_grad_norms` of raw texts (each truncated to max_length tokens, every token after the first
    scored, as `text_stats`): MUSE's GradNorm attack."""
    examples = [{"input_ids": ids, "labels": list(ids)} for ids in _text_ids(tokenizer, texts, max_length)]
    return grad_norms(model, examples, tokenizer.pad_token_id, p=p, desc=desc)


def grad_norms(
    model, examples: Sequence[dict], pad_id: int, *, p: float = 2.0, eos: int | None = None, desc: str | None = None
) -> np.ndarray:
    """Per example (input_ids / labels), the mean over parameters of the p-norm of the gradient of its mean
    scored-token NLL; with `eos`, a last scored position whose label is `eos` is left out. One backward pass
    per example; the gradients are dropped afterwards and the model is left as it was (eval mode, no
    grads). open-unlearning switches the model to train mode for it (dropout on where a model has any);
    this keeps eval mode, so the numbers are deterministic."""
    if p not in (1.0, 2.0, float("inf")):
        raise ValueError(f"p must be 1, 2 or inf, got {p}")
    model.eval()
    device = _device(model)
    params = [t for t in model.parameters() if t.requires_grad]
    out = np.zeros(len(examples))
    with _bar(len(examples), desc) as bar, torch.enable_grad():
        for i, ex in enumerate(examples):
            batch = {k: v.to(device) for k, v in collate([ex], pad_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            stats = sequence_stats(logits, batch["labels"])
            logps = stats.token_logps[0][stats.mask[0]]
            if eos is not None and ex["labels"][-1] == eos and logps.numel() > 1:
                logps = logps[:-1]
            grads = torch.autograd.grad(-logps.mean(), params, allow_unused=True)
            norms = [g.detach().float().norm(p=p) for g in grads if g is not None]
            out[i] = float(torch.stack(norms).mean())
            bar.update(1)
    return out


@torch.no_grad()
def score_continuations(
    model,
    tokenizer,
    questions: Sequence[str],
    answer_lists: Sequence[Sequence[str]],
    fmt: PromptFormat,
    *,
    batch_size: int = 16,
    max_length: int = 512,
    desc: str | None = None,
) -> list[list[AnswerStats]]:
    """AnswerStats of several answers per question (e.g. the true, paraphrased and perturbed answers of TOFU),
    running each question's prompt once for all of its answers.

    The same statistics as `answer_stats` on every (question, answer) pair, from the same token ids
    (`encode_qa`): a prompt pass over left-padded prompts keeps their KV cache and the logits of the last
    prompt token (which predict every answer's first token); each answer is then run on a copy of its
    question's cache, so prompt tokens are computed once instead of once per answer, and the output layer
    runs only where an answer token is predicted. Models whose forward takes no `position_ids` or cache are
    scored a whole sequence per answer, as `answer_stats` does. Float results agree with it to rounding (different kernels, same arithmetic).
    """
    cache_kw = _cache_keyword(model)
    examples = [
        [encode_qa(tokenizer, q, a, fmt, max_length) for a in answers] for q, answers in zip(questions, answer_lists)
    ]
    splits = [_shared_prefix(exs) if exs else 0 for exs in examples]
    # no cache to run on, or nothing shared to cache: every answer scored as a whole sequence
    if cache_kw is None or any(exs and c == 0 for exs, c in zip(examples, splits)):
        flat = score_examples(
            model,
            [ex for exs in examples for ex in exs],
            tokenizer.pad_token_id,
            batch_size=batch_size,
            desc=desc,
            eos_id=tokenizer.eos_token_id,
        )
        return _regroup(flat, answer_lists)
    model.eval()
    device = _device(model)
    eos = tokenizer.eos_token_id
    out: list[list[AnswerStats | None]] = [[None] * len(answers) for answers in answer_lists]
    prompts = [list(exs[0]["input_ids"][:c]) if exs else [] for exs, c in zip(examples, splits)]
    order = sorted((i for i in range(len(questions)) if examples[i]), key=lambda i: -len(prompts[i]))
    with _bar(sum(map(len, answer_lists)), desc) as bar:
        for qs in (order[i : i + batch_size] for i in range(0, len(order), batch_size)):
            batch = collate([{"input_ids": prompts[q]} for q in qs], tokenizer.pad_token_id, padding_side="left")
            mask = batch["attention_mask"].to(device)  # [Q, P]
            plens = mask.sum(-1)  # [Q] real prompt tokens
            cache = _new_cache(model)
            first = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                **{cache_kw: cache},
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1]  # [Q, V]: the last column is every row's last prompt token
            # each answer's tail: its ids after the shared prompt (with boundary "joint" the first answer
            # tokens can be unscored context that differs between answers), with their labels
            tails = {
                (r, k): {"input_ids": ex["input_ids"][splits[q] :], "labels": ex["labels"][splits[q] :]}
                for r, q in enumerate(qs)
                for k, ex in enumerate(examples[q])
            }
            rows = sorted(tails, key=lambda rk: -len(tails[rk]["input_ids"]))
            for chunk in (rows[i : i + batch_size] for i in range(0, len(rows), batch_size)):
                qrow = torch.tensor([r for r, _ in chunk], device=device)  # [R] prompt row of each answer
                tb = collate([tails[rk] for rk in chunk], tokenizer.pad_token_id)
                tgt, tmask = tb["input_ids"].to(device), tb["attention_mask"].to(device)  # [R, C] each
                tlabels = tb["labels"].to(device)
                sub = copy.deepcopy(cache)
                sub.batch_select_indices(qrow)
                logits = model(
                    input_ids=tgt,
                    attention_mask=torch.cat([mask[qrow], tmask], dim=1),
                    position_ids=plens[qrow, None] + torch.arange(tgt.shape[1], device=device),
                    **{cache_kw: sub},
                    use_cache=True,
                ).logits  # [R, C, V]: position j predicts answer token j + 1
                i_row, i_col = (tlabels != IGNORE_INDEX).nonzero(as_tuple=True)  # [N] scored tokens, row-major
                picked = logits[i_row, (i_col - 1).clamp(min=0)]  # [N, V]
                starts = i_col == 0
                picked[starts] = first[qrow[i_row[starts]]].to(picked.dtype)
                labels = tlabels[i_row, i_col]
                logps = -F.cross_entropy(picked.float(), labels, reduction="none").double().cpu().numpy()
                hits = (picked.argmax(-1) == labels).cpu().numpy()
                bounds = np.cumsum([0] + [_answer_len(tails[rk]) for rk in chunk])
                for j, (r, k) in enumerate(chunk):
                    ex = examples[qs[r]][k]
                    span = slice(bounds[j], bounds[j + 1])
                    out[qs[r]][k] = AnswerStats(
                        logps[span],
                        hits[span],
                        tuple(ex["input_ids"]),
                        ends_with_eos=eos is not None and ex["labels"][-1] == eos,
                    )
                bar.update(len(chunk))
    return out  # type: ignore[return-value]


def _cache_keyword(model) -> str | None:
    """The name under which the model's forward takes a KV cache (transformers 5 renamed `past_key_values`
    to `cache`), or None when its forward takes no position_ids, cache or logits_to_keep: then
    score_continuations scores every answer as a whole sequence instead."""
    import inspect

    params = inspect.signature(model.forward).parameters
    if not all(p in params for p in ("position_ids", "logits_to_keep")):
        return None
    return next((k for k in ("cache", "past_key_values") if k in params), None)


def _new_cache(model):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def _shared_prefix(examples: list[dict]) -> int:
    """How many leading ids one question's encoded answers share before the first scored token of any:
    the prompt, or with boundary "joint" possibly less (the prompt's last token can merge with an answer)."""
    first = examples[0]["input_ids"]
    n = min(
        next((i for i, lab in enumerate(ex["labels"]) if lab != IGNORE_INDEX), len(ex["labels"])) for ex in examples
    )
    for ex in examples[1:]:
        ids = ex["input_ids"]
        n = next((i for i in range(min(n, len(ids))) if ids[i] != first[i]), min(n, len(ids)))
    return n


def _answer_len(example: dict) -> int:
    return sum(1 for label in example["labels"] if label != IGNORE_INDEX)


def _regroup(flat: list, answer_lists: Sequence[Sequence[str]]) -> list[list]:
    out, pos = [], 0
    for answers in answer_lists:
        out.append(flat[pos : pos + len(answers)])
        pos += len(answers)
    return out


@torch.no_grad()
def generate_greedy(
    model,
    tokenizer,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    stop_strings: Sequence[str] = (),
    desc: str | None = None,
) -> list[str]:
    """Greedy continuations of token-id prompts: left-padded batches, KV cache, stop at EOS or a stop string.

    The text is cut at the first stop string and stripped.
    """
    model.eval()
    device = _device(model)
    outputs: list[str] = [""] * len(prompts)
    kwargs = dict(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with _bar(len(prompts), desc) as bar:
        for idx in _by_length([len(p) for p in prompts], batch_size):
            batch = collate([{"input_ids": prompts[i]} for i in idx], tokenizer.pad_token_id, padding_side="left")
            batch = {k: v.to(device) for k, v in batch.items()}
            if stop_strings:
                from transformers import StoppingCriteriaList

                stop = _DecodedStop(tokenizer, stop_strings, batch["input_ids"].shape[1])
                kwargs["stopping_criteria"] = StoppingCriteriaList([stop])
            generated = model.generate(**batch, **kwargs, temperature=None, top_p=None, top_k=None)
            new = generated[:, batch["input_ids"].shape[1] :]
            for row, i in enumerate(idx):
                outputs[i] = cut_at_stop(tokenizer.decode(new[row], skip_special_tokens=True), stop_strings)
            bar.update(len(idx))
    return outputs


class _DecodedStop:
    """Stop a row once its decoded continuation contains a stop string. transformers' own stop_strings
    criterion precomputes token-to-string tables that fail on some tokenizers (word-level ones raise
    "substring not found"); decoding works with every tokenizer, and since the text is cut at the first
    stop string afterwards (cut_at_stop), where generation stops does not change the answer."""

    def __init__(self, tokenizer, stop_strings: Sequence[str], prompt_len: int):
        self.tokenizer, self.stops, self.prompt_len = tokenizer, list(stop_strings), prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len :], skip_special_tokens=True)
        done = [any(stop in text for stop in self.stops) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """Text up to the first occurrence of any stop string, stripped."""
    cut = min((pos for s in stop_strings if (pos := text.find(s)) >= 0), default=len(text))
    return text[:cut].strip()


def generated_top_token_rate(tokenizer, texts: Sequence[str]) -> float:
    """Def. 2.2's most-frequent-token rate of generated texts, re-tokenized; 1.0 when nothing at all was
    generated (an empty answer every time is as collapsed as an answer can be)."""
    from mox_unlearn.evaluate.metrics import top_token_rate

    tokens = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return top_token_rate(tokens) if any(tokens) else 1.0


def generate_answers(
    model,
    tokenizer,
    questions: Sequence[str],
    fmt: PromptFormat,
    *,
    max_new_tokens: int = 200,
    batch_size: int = 16,
    stop_strings: Sequence[str] = (),
    desc: str | None = None,
) -> list[str]:
    """Greedy answers to questions, prompted exactly as in training."""
    prompts = [prompt_ids(tokenizer, q, fmt) for q in questions]
    return generate_greedy(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        stop_strings=stop_strings,
        desc=desc,
    )


def text_stats(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int = 8,
    max_length: int = 512,
    desc: str | None = None,
    moments: bool = False,
) -> list[AnswerStats]:
    """AnswerStats of raw texts (each truncated to max_length tokens; every token after the first scored),
    for membership inference."""
    examples = [{"input_ids": ids, "labels": list(ids)} for ids in _text_ids(tokenizer, texts, max_length)]
    return score_examples(model, examples, tokenizer.pad_token_id, batch_size=batch_size, desc=desc, moments=moments)


def _text_ids(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    return [
        list(tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"])
        for text in texts
    ]


def text_token_logprobs(
    model, tokenizer, texts: Sequence[str], *, batch_size: int = 8, max_length: int = 512, desc: str | None = None
) -> list[np.ndarray]:
    """Per-token log-probs of raw texts (each truncated to max_length tokens), for membership inference."""
    stats = text_stats(model, tokenizer, texts, batch_size=batch_size, max_length=max_length, desc=desc)
    return [s.token_logps for s in stats]
