"""Turning records into token ids and labels, and batches into padded tensors.

Conventions every loss relies on:

* ``labels`` are aligned with ``input_ids`` (not shifted; the model shifts) and are ``-100``
  wherever a token is not a target (the prompt of a QA pair, and padding);
* the prompt and the answer are tokenized separately and concatenated, so the boundary between
  them is exact whatever the tokenizer merges across it;
* ``attention_mask`` comes from the sequence lengths, never from ``input_ids != pad_id``: when the
  pad token is the EOS token that comparison would hide the real, labelled EOS.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from importlib import resources
from typing import TYPE_CHECKING, Any

from ..errors import MoxError, first_line

if TYPE_CHECKING:  # torch is imported where it is used: configs and data are read without it
    import torch
from .records import RecordSet, check_text, read_text, texts_of

IGNORE_INDEX = -100
CHAT_TEMPLATE_MODES = ("auto", "never", "always")


BOUNDARIES = ("separate", "joint")


@dataclass
class PromptFormat:
    """How a question becomes a prompt, and where the scored answer starts.

    With a chat template (``chat_template`` "auto" and the tokenizer has one, or "always") the
    question is the user turn (after an optional system turn; ``chat_template_kwargs`` such as
    ``date_string`` go to the template) and the answer follows the generation prompt directly.
    Without one, ``question_template`` is filled in and ``answer_prefix`` separates it from the
    answer; ``system_prompt`` is then not used.

    ``boundary`` says how prompt and answer become tokens:

    * ``separate`` (mox's default): the prompt and the answer are tokenized apart and concatenated,
      so every answer token is scored whatever the tokenizer would merge across the boundary;
    * ``joint`` (open-unlearning's ``preprocess_chat_instance``): prompt + answer is tokenized as one
      text (the whole conversation, with a chat template), EOS is appended unless the text already
      ends in it, and the labels are that sequence after as many tokens as the prompt alone has. On a
      subword tokenizer the prompt's last token (e.g. "Answer: "'s space) merges with the answer's
      first, which is then not scored.

    ``preset`` names a set of these fields (see PRESETS), e.g. ``open-unlearning-llama3`` for
    open-unlearning's released Llama-3.2 TOFU models; a preset sets every field it names, whatever
    else was given.
    """

    chat_template: str = "auto"
    question_template: str = "Question: {question}\nAnswer:"
    answer_prefix: str = " "
    system_prompt: str | None = None
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    boundary: str = "separate"
    preset: str | None = None

    def __post_init__(self) -> None:
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise MoxError(f"unknown prompt preset {self.preset!r}; valid: {', '.join(PRESETS)}")
            for key, value in PRESETS[self.preset].items():
                setattr(self, key, dict(value) if isinstance(value, dict) else value)
        if self.chat_template not in CHAT_TEMPLATE_MODES:
            raise MoxError(f"chat_template must be one of {', '.join(CHAT_TEMPLATE_MODES)}, got {self.chat_template!r}")
        if self.boundary not in BOUNDARIES:
            raise MoxError(f"boundary must be one of {', '.join(BOUNDARIES)}, got {self.boundary!r}")
        if not isinstance(self.chat_template_kwargs, dict):
            raise MoxError(f"chat_template_kwargs must be a mapping, got {self.chat_template_kwargs!r}")
        try:
            self.question_template.format(question="")
        except (KeyError, IndexError, ValueError) as e:
            raise MoxError(
                f"question_template {self.question_template!r} must use only the {{question}} field: {e!r}"
            ) from e
        if "{question}" not in self.question_template:
            raise MoxError(f"question_template {self.question_template!r} has no {{question}} field")


_OU_SYSTEM = "You are a helpful assistant."
# open-unlearning's TOFU prompting (configs/model/*.yaml `template_args`, src/data/utils.py
# `preprocess_chat_instance`), one preset per family of its model configs. Without a chat template its
# prompt is user_start_tag + question + user_end_tag + asst_start_tag, and the answer follows directly.
PRESETS: dict[str, dict] = {
    # mox's own: every field's default (so the preset cannot drift from them)
    "mox": {
        f.name: f.default_factory() if f.default is MISSING else f.default
        for f in fields(PromptFormat)
        if f.name != "preset"
    },
    # phi-1_5, Llama-2-7b-hf, Llama-2-13b-hf
    "open-unlearning-qa": {
        "chat_template": "never",
        "question_template": "Question: {question}\nAnswer: ",
        "answer_prefix": "",
        "system_prompt": None,
        "chat_template_kwargs": {},
        "boundary": "joint",
    },
    # Llama-2-7b-chat-hf (its chat format written out, not the tokenizer's template)
    "open-unlearning-llama2-chat": {
        "chat_template": "never",
        "question_template": "[INST] {question} [/INST]",
        "answer_prefix": "",
        "system_prompt": None,
        "chat_template_kwargs": {},
        "boundary": "joint",
    },
    # Llama-3.1-8B / 3.2-1B / 3.2-3B-Instruct (the released TOFU models) and zephyr-7b-beta
    "open-unlearning-llama3": {
        "chat_template": "always",
        "system_prompt": _OU_SYSTEM,
        "chat_template_kwargs": {"date_string": "10 Apr 2025"},
        "boundary": "joint",
    },
    # Qwen2.5-*-Instruct, Phi-3.5-mini-instruct
    "open-unlearning-chat": {
        "chat_template": "always",
        "system_prompt": _OU_SYSTEM,
        "chat_template_kwargs": {},
        "boundary": "joint",
    },
    # gemma-7b-it (no system turn)
    "open-unlearning-gemma": {
        "chat_template": "always",
        "system_prompt": None,
        "chat_template_kwargs": {},
        "boundary": "joint",
    },
}


def ensure_pad_token(tokenizer) -> None:
    """Give a tokenizer without a pad token one, reusing EOS.

    We deliberately do not add a new token: that would grow the vocabulary and resize the
    embeddings, and the extrapolation θ_ref + α(θ_ref − θ_mem) needs the reference and the
    memorization models to have identical shapes. Reusing EOS is safe because `collate` builds
    the attention mask from lengths, so a real EOS is never mistaken for padding.
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise MoxError(
                f"the tokenizer of {tokenizer.name_or_path} has neither a pad token nor an EOS token (to pad "
                "with and to end every answer); set eos_token in its tokenizer_config.json"
            )
        tokenizer.pad_token = tokenizer.eos_token


def uses_chat_template(tokenizer, fmt: PromptFormat) -> bool:
    """Resolve ``fmt.chat_template`` against what the tokenizer offers."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if fmt.chat_template == "always" and not has_template:
        raise MoxError("chat_template is 'always' but the tokenizer has no chat template")
    return has_template and fmt.chat_template != "never"


def _messages(fmt: PromptFormat, question: str, answer: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": fmt.system_prompt}] if fmt.system_prompt else []
    messages.append({"role": "user", "content": question})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def _render(tokenizer, fmt: PromptFormat, messages: list[dict], *, generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, tokenize=False, **fmt.chat_template_kwargs
        )
    except Exception as e:  # jinja2's TemplateError / TemplateSyntaxError, or a template's raise_exception
        raise MoxError(
            f"the chat template of {getattr(tokenizer, 'name_or_path', 'the tokenizer')} fails: "
            f"{type(e).__name__}: {first_line(e)}; fix it, or pass prompt.chat_template=never to use "
            "prompt.question_template instead"
        ) from None


def prompt_ids(tokenizer, question: str, fmt: PromptFormat, max_length: int | None = None) -> list[int]:
    """Token ids of the prompt for `question`, ending where the answer's first token goes (with
    ``boundary: joint``, cut to `max_length` as open-unlearning cuts it)."""
    if uses_chat_template(tokenizer, fmt):
        text = _render(tokenizer, fmt, _messages(fmt, question), generation_prompt=True)
        # The rendered template already carries BOS and role markers: add nothing more.
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    text = fmt.question_template.format(question=question)
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    return ids[:max_length] if fmt.boundary == "joint" and max_length else ids


def check_prompt(tokenizer, fmt: PromptFormat) -> None:
    """Render one prompt, so a chat template that fails (or a tokenizer without EOS) is refused before
    any model loads rather than in the middle of an evaluation."""
    _require_eos(tokenizer)
    prompt_ids(tokenizer, "Who wrote this?", fmt)


def _require_eos(tokenizer) -> None:
    if tokenizer.eos_token_id is None:
        raise MoxError(f"the tokenizer of {tokenizer.name_or_path} has no EOS token; it is needed to end every answer")


def encode_qa(tokenizer, question: str, answer: str, fmt: PromptFormat, max_length: int) -> dict:
    """``{"input_ids", "labels"}`` for one QA pair: prompt masked with -100, answer + EOS labelled.

    Too long sequences lose tokens from the end of the answer; a prompt that leaves no room for
    a single answer token is an error rather than a silently empty target. With ``fmt.boundary``
    "joint" the ids are open-unlearning's (see PromptFormat).
    """
    _require_eos(tokenizer)
    if max_length < 2:
        raise MoxError(f"max_length must be at least 2, got {max_length}")
    if fmt.boundary == "joint":
        return _encode_joint(tokenizer, question, answer, fmt, max_length)
    prompt = prompt_ids(tokenizer, question, fmt)
    answer_text = answer if uses_chat_template(tokenizer, fmt) else fmt.answer_prefix + answer
    target = list(tokenizer(answer_text, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    _check_room(len(prompt), max_length)
    input_ids = (prompt + target)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt) + target)[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def _check_room(n_prompt: int, max_length: int) -> None:
    if n_prompt >= max_length:
        raise MoxError(
            f"the prompt is longer than max_length allows ({n_prompt} prompt tokens, max_length {max_length}): "
            "no answer token would be trained; raise max_length or shorten the question"
        )


def _encode_joint(tokenizer, question: str, answer: str, fmt: PromptFormat, max_length: int) -> dict:
    """open-unlearning's ids: the whole text tokenized at once, EOS appended unless it ends in one, labels
    from the prompt's own token count on. Its chat path does not truncate; here a conversation longer
    than `max_length` is cut like the plain one (never the case for TOFU at 512 tokens)."""
    if uses_chat_template(tokenizer, fmt):
        prompt = prompt_ids(tokenizer, question, fmt)
        whole = _render(tokenizer, fmt, _messages(fmt, question, answer), generation_prompt=False)
        ids = list(tokenizer(whole, add_special_tokens=False)["input_ids"])[:max_length]
    else:
        prompt = prompt_ids(tokenizer, question, fmt, max_length)
        whole = fmt.question_template.format(question=question) + fmt.answer_prefix + answer
        ids = list(tokenizer(whole, add_special_tokens=True)["input_ids"])[:max_length]
    if not ids or ids[-1] != tokenizer.eos_token_id:
        ids.append(tokenizer.eos_token_id)
    _check_room(len(prompt), len(ids))
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * len(prompt) + ids[len(prompt) :]}


def reference_answer(tokenizer, question: str, answer: str, fmt: PromptFormat, max_length: int) -> str:
    """The text generated answers are compared with (ROUGE): the answer itself, or with ``boundary: joint``
    what open-unlearning compares with: the decoded conversation minus the decoded prompt, stripped."""
    if fmt.boundary != "joint":
        return answer
    ids = encode_qa(tokenizer, question, answer, fmt, max_length)["input_ids"]
    prompt = prompt_ids(tokenizer, question, fmt, max_length)

    def decode(x):
        return tokenizer.decode(x, skip_special_tokens=True, clean_up_tokenization_spaces=True)

    return decode(ids).replace(decode(prompt), "").strip()


def encode_records(
    tokenizer, rs: RecordSet, fmt: PromptFormat, max_length: int, *, answer_key: str = "answer"
) -> list[dict]:
    """Encode a whole set: QA pairs with `encode_qa` (answer from `answer_key`), texts with `encode_texts`.

    `answer_key` lets evaluation encode e.g. TOFU's ``paraphrased_answer`` with the same prompt.
    """
    if rs.kind == "text":
        return encode_texts(tokenizer, texts_of(rs), max_length)
    out = []
    for i, record in enumerate(rs.records):
        loc = f"{rs.source}[{i}]"
        if answer_key not in record:
            raise MoxError(f'{loc}: record has no "{answer_key}" key')
        check_text(loc, answer_key, record[answer_key])
        try:
            out.append(encode_qa(tokenizer, record["question"], record[answer_key], fmt, max_length))
        except MoxError as e:
            raise MoxError(f"{loc}: {e}") from e
    return out


def encode_texts(tokenizer, texts: list[str], max_length: int) -> list[dict]:
    """Raw-text examples: each text cut into consecutive chunks of at most `max_length` tokens.

    Every token is a target (labels == input_ids). A trailing chunk of fewer than 2 tokens is
    dropped, since a single token gives the shifted loss nothing to predict.
    """
    if max_length < 2:
        raise MoxError(f"max_length must be at least 2, got {max_length}")
    out = []
    for text in texts:
        if not text.strip():  # blank documents are allowed in text sets; they train nothing
            continue
        # verbose=False: long documents are expected here, we chunk them ourselves.
        ids = list(tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])
        for start in range(0, len(ids), max_length):
            chunk = ids[start : start + max_length]
            if len(chunk) >= 2:
                out.append({"input_ids": chunk, "labels": list(chunk)})
    return out


def collate(examples: list[dict], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad a list of examples to the longest into LongTensors of shape [batch, longest].

    ``input_ids`` are padded with `pad_id`, ``labels`` (when present) with -100, and
    ``attention_mask`` is 1 on the real tokens of each example (from its length) and 0 on padding.
    Left padding is for batched generation, where every prompt must end at the last column.
    """
    if padding_side not in ("right", "left"):
        raise MoxError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if not examples:
        raise MoxError("cannot collate an empty batch")
    lengths = [len(ex["input_ids"]) for ex in examples]
    longest = max(lengths)
    batch = {
        "input_ids": _pad([ex["input_ids"] for ex in examples], pad_id, longest, padding_side),
        "attention_mask": _pad([[1] * n for n in lengths], 0, longest, padding_side),
    }
    if "labels" in examples[0]:
        if any(len(ex["labels"]) != n for ex, n in zip(examples, lengths)):
            raise MoxError("every example's labels must be as long as its input_ids")
        batch["labels"] = _pad([ex["labels"] for ex in examples], IGNORE_INDEX, longest, padding_side)
    return batch


def _pad(rows: list[list[int]], fill: int, longest: int, side: str) -> torch.Tensor:
    import torch  # here, so that reading configs and data (and `mox --help`) does not load torch

    """Pad each row with `fill` up to `longest` on `side`; a [len(rows), longest] LongTensor."""
    padded = [
        list(row) + [fill] * (longest - len(row)) if side == "right" else [fill] * (longest - len(row)) + list(row)
        for row in rows
    ]
    return torch.tensor(padded, dtype=torch.long)


def load_refusals(path: str | None) -> list[str]:
    """Refusal targets ("I don't know"-style) for the targeted variant, one string a line.

    This is the format of TOFU's ``idontknow.jsonl`` (plain text despite the name). Without a
    path, the packaged default list is used, so the targeted variant needs no extra file.
    """
    if path is None:
        source = "the packaged refusals.txt"
        text = resources.files("mox_unlearn").joinpath("resources", "refusals.txt").read_text(encoding="utf-8")
    else:
        source = str(path)
        text = read_text(path, "refusals")
    refusals = [line.strip() for line in text.splitlines() if line.strip()]
    if not refusals:
        raise MoxError(f"refusals file is empty: {source}")
    return refusals
