"""How a TOFU result was scored: the prompt convention and the tokenizer, recorded in every result file.

Forget Quality and PrivLeak compare a model's per-item statistics with a retain model's. That is only
meaningful when both were scored on the same tokens: the same prompt (template, chat template, system
prompt), the same prompt/answer boundary and the same tokenizer. open-unlearning's TOFU prompt, for
instance, ends in "Answer: " and so never scores the first answer token on subword tokenizers; its
TOFU_EVAL.json records none of this. `scoring_convention` writes down what we did, and
`check_retain_convention` compares it with what a retain result says (docs/metrics.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from mox_unlearn.data.formatting import PromptFormat, encode_qa, uses_chat_template
from mox_unlearn.errors import MoxError

log = logging.getLogger(__name__)

# Which positions each statistic scores; part of the convention, so results from before the EOS fix
# (min-k, ES and EM included EOS) are told apart from current ones.
POSITIONS = {
    "probability, truth_ratio, collapse": "answer tokens + EOS",
    "extraction_strength, exact_memorization, mia_min_k": "answer tokens, EOS dropped",
}
# A fixed question/answer whose token ids capture template, boundary and tokenization in one hash.
_PROBE = ("Where was Alia Vorn born, and what does she write?", "In Quellport, 1961; mystery novels.")


BOUNDARY_WORDS = {
    "separate": "prompt and answer tokenized apart; the first answer token is scored",
    "joint": "prompt + answer tokenized together (open-unlearning); labels start after the prompt's token count",
}


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the vocabulary (token → id, added tokens included) and the special tokens."""
    specials = {k: getattr(tokenizer, k, None) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    return _sha({"vocab": sorted(tokenizer.get_vocab().items()), "special": specials})


def scoring_convention(tokenizer, fmt: PromptFormat) -> dict:
    """What decides which tokens a TOFU result scored: prompt settings, positions, tokenizer, and a probe."""
    chat = uses_chat_template(tokenizer, fmt)
    prompt: dict[str, Any] = {"chat_template": chat, "boundary": BOUNDARY_WORDS[fmt.boundary]}
    if chat:
        prompt.update(template_sha=_sha(tokenizer.chat_template), system_prompt=fmt.system_prompt)
        if fmt.chat_template_kwargs:
            prompt["chat_template_kwargs"] = dict(fmt.chat_template_kwargs)
    else:
        prompt.update(question_template=fmt.question_template, answer_prefix=fmt.answer_prefix)
    probe = encode_qa(tokenizer, *_PROBE, fmt, max_length=4096)
    return {
        "prompt": prompt,
        "positions": dict(POSITIONS),
        "tokenizer_sha": tokenizer_fingerprint(tokenizer),
        "probe_sha": _sha(probe),
    }


_PARTS = {
    "prompt": "prompt",
    "positions": "choice of scored positions",
    "tokenizer_sha": "tokenizer",
    "probe_sha": "tokenization of a probe question",
}


def convention_differences(mine: dict, theirs: dict) -> list[str]:
    """The parts of two conventions that differ, in words (empty when they agree)."""
    return [_PARTS.get(key, key) for key in sorted(set(mine) | set(theirs)) if mine.get(key) != theirs.get(key)]


def check_retain_convention(
    mine: dict | None, theirs: dict | None, source: Any, *, allow_mismatch: bool = False
) -> str:
    """Compare this evaluation's convention with the retain result's; return a note for the result file.

    A retain result scored differently is refused (FQ would compare two different statistics) unless
    `allow_mismatch`, which turns the refusal into a warning. One that records no convention (an
    open-unlearning TOFU_EVAL.json, a result from an older mox) cannot be checked: a warning says so.
    `mine` is None for a result of an older mox being compared after the fact.
    """
    if mine is None or theirs is None:
        which = f"{source} records" if theirs is None else "the evaluated result records"
        note = (
            f"{which} no prompt convention or tokenizer (an open-unlearning TOFU_EVAL.json or an older "
            "mox result), so it cannot be checked that both models were scored on the same tokens; "
            "open-unlearning's TOFU prompt ends in 'Answer: ' and skips the first answer token on subword tokenizers "
            "(evaluate with its prompt preset, e.g. --prompt open-unlearning-qa, to score the same tokens)"
        )
        log.warning(note)
        return note
    diff = convention_differences(mine, theirs)
    if not diff:
        return "same prompt convention and tokenizer"
    note = f"{source} was scored with a different {' and '.join(diff)} than this evaluation"
    if not allow_mismatch:
        raise MoxError(
            f"{note}: FQ / PrivLeak would compare different statistics "
            "(evaluate the retain model the same way, or pass --allow-convention-mismatch)"
        )
    log.warning(note + " (compared anyway: --allow-convention-mismatch)")
    return note
