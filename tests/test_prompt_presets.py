"""Prompt presets: open-unlearning's TOFU token ids re-derived by hand, and what they change.

open-unlearning (src/data/utils.py, `preprocess_chat_instance`) tokenizes prompt + answer as one text,
appends EOS unless the ids already end in it, and labels everything after as many ids as the prompt
alone has. The reference below restates that rule on its own, for hand-written examples and the
byte-level BPE tokenizer of the tests, so a change to either side shows up here.
"""

from __future__ import annotations

import pytest
from conftest import CORPUS

from mox_unlearn.data.formatting import (
    IGNORE_INDEX,
    PRESETS,
    PromptFormat,
    encode_qa,
    prompt_ids,
    reference_answer,
)
from mox_unlearn.errors import MoxError
from mox_unlearn.evaluate.convention import convention_differences, scoring_convention
from mox_unlearn.tiny import build_tokenizer

EXAMPLES = [
    ("Where was Alia Vorn born?", "Alia Vorn was born in Quellport."),
    ("What does Bram Teller write?", "Bram Teller writes mystery novels."),
    ("Who are the parents of Cato Rime?", "A baker and a sailor."),
    ("Who?", "The quick brown fox."),
]
# A chat template that, like Llama-3's, takes a date_string and a system turn.
CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>{% if m['role'] == 'system' %}{{ date_string }} {% endif %}"
    "{{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def ou_reference(tokenizer, tags: dict, question: str, answer: str, max_length: int = 512):
    """open-unlearning's (input_ids, labels, generation prompt ids) for one QA pair, written from its rules."""
    if tags.get("apply_chat_template"):
        chat = [{"role": "system", "content": tags["system_prompt"]}] if tags.get("system_prompt") else []
        chat += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        extra = {"date_string": tags["date_string"]} if "date_string" in tags else {}
        whole = list(tokenizer.apply_chat_template(chat, tokenize=True, return_dict=False, **extra))
        prompt = list(
            tokenizer.apply_chat_template(
                chat[:-1], tokenize=True, add_generation_prompt=True, return_dict=False, **extra
            )
        )
    else:
        wrapped = tags["user_start_tag"] + question + tags["user_end_tag"] + tags["asst_start_tag"]
        whole = tokenizer(wrapped + answer, add_special_tokens=True, max_length=max_length, truncation=True)
        prompt = tokenizer(wrapped, add_special_tokens=True, max_length=max_length, truncation=True)
        whole, prompt = list(whole["input_ids"]), list(prompt["input_ids"])
    if whole[-1] != tokenizer.eos_token_id:
        whole.append(tokenizer.eos_token_id)
    return whole, [IGNORE_INDEX] * len(prompt) + whole[len(prompt) :], prompt


QA_TAGS = {"user_start_tag": "Question: ", "user_end_tag": "\n", "asst_start_tag": "Answer: "}
LLAMA2_CHAT_TAGS = {"user_start_tag": "[INST] ", "user_end_tag": " [/INST]", "asst_start_tag": ""}


@pytest.fixture(scope="module")
def chat_tokenizer():
    tok = build_tokenizer(CORPUS, vocab_size=300, chat_template=CHAT)
    tok.add_special_tokens({"additional_special_tokens": ["<|system|>", "<|user|>", "<|assistant|>"]})
    return tok


@pytest.mark.parametrize(
    "preset, tags", [("open-unlearning-qa", QA_TAGS), ("open-unlearning-llama2-chat", LLAMA2_CHAT_TAGS)]
)
def test_plain_presets_give_open_unlearnings_ids(tokenizer, preset, tags):
    fmt = PromptFormat(preset=preset)
    for q, a in EXAMPLES:
        ids, labels, gen = ou_reference(tokenizer, tags, q, a)
        ex = encode_qa(tokenizer, q, a, fmt, 512)
        assert ex["input_ids"] == ids and ex["labels"] == labels
        assert prompt_ids(tokenizer, q, fmt, 512) == gen


def test_llama3_preset_gives_open_unlearnings_ids_with_a_chat_template(chat_tokenizer):
    fmt = PromptFormat(preset="open-unlearning-llama3")
    tags = {"apply_chat_template": True, "system_prompt": "You are a helpful assistant.", "date_string": "10 Apr 2025"}
    for q, a in EXAMPLES:
        ids, labels, gen = ou_reference(chat_tokenizer, tags, q, a)
        ex = encode_qa(chat_tokenizer, q, a, fmt, 512)
        assert ex["input_ids"] == ids and ex["labels"] == labels
        assert prompt_ids(chat_tokenizer, q, fmt) == gen
    assert "10 Apr 2025" in chat_tokenizer.decode(gen)  # the date reached the template


def test_the_joint_boundary_scores_other_tokens_than_moxs_on_a_subword_tokenizer(tokenizer):
    """The point of the preset: on this BPE tokenizer "Answer: " + the answer's first word merge, so
    open-unlearning scores one token fewer than mox's separate boundary (measured in issue 19)."""
    ou = PromptFormat(preset="open-unlearning-qa")
    merged = 0
    for q, a in EXAMPLES:
        ex = encode_qa(tokenizer, q, a, ou, 512)
        prompt = prompt_ids(tokenizer, q, ou, 512)
        mine = encode_qa(tokenizer, q, a, PromptFormat(), 512)
        scored = sum(lab != IGNORE_INDEX for lab in ex["labels"])
        merged += ex["input_ids"][: len(prompt)] != prompt
        assert scored <= sum(lab != IGNORE_INDEX for lab in mine["labels"])
    assert merged > 0


def test_reference_answer_is_open_unlearnings_decoded_ground_truth(tokenizer):
    ou = PromptFormat(preset="open-unlearning-qa")
    for q, a in EXAMPLES:
        ids, _, gen = ou_reference(tokenizer, QA_TAGS, q, a)
        decode = lambda x: tokenizer.decode(x, skip_special_tokens=True, clean_up_tokenization_spaces=True)  # noqa: E731
        assert reference_answer(tokenizer, q, a, ou, 512) == decode(ids).replace(decode(gen), "").strip()
        assert reference_answer(tokenizer, q, a, PromptFormat(), 512) == a


def test_truncation_keeps_open_unlearnings_appended_eos(tokenizer):
    ou = PromptFormat(preset="open-unlearning-qa")
    q, a = EXAMPLES[1]
    n = len(prompt_ids(tokenizer, q, ou)) + 2
    ids, labels, _ = ou_reference(tokenizer, QA_TAGS, q, a, max_length=n)
    ex = encode_qa(tokenizer, q, a, ou, n)
    assert ex == {"input_ids": ids, "labels": labels} and len(ids) == n + 1 and ids[-1] == tokenizer.eos_token_id


def test_presets_set_their_fields_and_unknown_names_are_refused():
    assert PromptFormat(preset="mox") == PromptFormat(preset="mox", question_template="Q {question}")
    fmt = PromptFormat(preset="open-unlearning-llama3", system_prompt="other")
    assert fmt.system_prompt == "You are a helpful assistant." and fmt.chat_template_kwargs == {
        "date_string": "10 Apr 2025"
    }
    assert set(PRESETS) >= {"mox", "open-unlearning-qa", "open-unlearning-llama3"}
    with pytest.raises(MoxError, match="unknown prompt preset 'nope'; valid: mox, "):
        PromptFormat(preset="nope")
    with pytest.raises(MoxError, match="boundary must be one of separate, joint"):
        PromptFormat(boundary="glued")


def test_the_convention_of_a_result_records_the_boundary(tokenizer):
    """A retain result scored with one boundary is not comparable with a model scored with the other."""
    mine = scoring_convention(tokenizer, PromptFormat())
    ou = scoring_convention(tokenizer, PromptFormat(preset="open-unlearning-qa"))
    assert "prompt" in convention_differences(mine, ou) and "open-unlearning" in ou["prompt"]["boundary"]
    # mox's default convention is unchanged, so results written before the presets still compare
    assert mine["prompt"] == {
        "chat_template": False,
        "boundary": "prompt and answer tokenized apart; the first answer token is scored",
        "question_template": "Question: {question}\nAnswer:",
        "answer_prefix": " ",
    }
