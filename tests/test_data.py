"""Records, formatting, collation and pairing (mox_unlearn.data): offline, tiny tokenizer only."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from mox_unlearn.data import (
    IGNORE_INDEX,
    PromptFormat,
    RecordSet,
    collate,
    encode_qa,
    encode_records,
    encode_texts,
    ensure_pad_token,
    epoch_plan,
    load_records,
    load_refusals,
    prompt_ids,
    refusal_choices,
)
from mox_unlearn.errors import MoxError

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
PLAIN = PromptFormat()


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def jsonl(path: Path, rows: list) -> str:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def chat_tokenizer(tokenizer):
    """A copy of the session tokenizer with a small chat template (the fixture stays untouched)."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = CHAT_TEMPLATE
    return tok


# ---------------------------------------------------------------------------------------------
# load_records: formats


def test_jsonl_and_json_list(qa_files):
    forget, retain = qa_files
    f = load_records(str(forget), name="forget")
    r = load_records(str(retain), name="retain")
    assert (f.kind, len(f), f.source) == ("qa", 4, str(forget))
    assert (r.kind, len(r)) == ("qa", 6)
    assert f.records[0]["question"] == "Where was Alia Vorn born?"


def test_jsonl_skips_blank_lines_and_keeps_extra_keys(tmp_path):
    rows = [{"question": "q1", "answer": "a1", "perturbed_answer": ["x", "y"], "id": 3}]
    spec = write(tmp_path / "f.jsonl", "\n" + json.dumps(rows[0]) + "\n\n   \n")
    rs = load_records(spec)
    assert rs.records == rows


def test_json_of_strings_is_text(tmp_path):
    rs = load_records(write(tmp_path / "t.json", json.dumps(["doc one", "doc two"])))
    assert rs.kind == "text"
    assert rs.records == [{"text": "doc one"}, {"text": "doc two"}]


def test_json_objects_with_text(tmp_path):
    rs = load_records(write(tmp_path / "t.json", json.dumps([{"text": "a doc", "url": "u"}])))
    assert rs.kind == "text" and rs.records == [{"text": "a doc", "url": "u"}]


def test_json_object_with_one_list(tmp_path):
    rs = load_records(write(tmp_path / "d.json", json.dumps({"data": [{"question": "q", "answer": "a"}], "v": 1})))
    assert rs.kind == "qa" and len(rs) == 1


def test_txt_is_one_document(tmp_path):
    body = "First line.\n\nSecond paragraph.\n"
    rs = load_records(write(tmp_path / "doc.txt", body))
    assert rs.kind == "text" and rs.records == [{"text": body}]


def test_kind_forced(qa_files, tmp_path):
    forget, _ = qa_files
    assert load_records(str(forget), kind="qa").kind == "qa"
    with pytest.raises(MoxError, match=r'forget\.jsonl:1: record has no "text" key'):
        load_records(str(forget), kind="text")
    with pytest.raises(MoxError, match=r"t\.json\[0\]: record must be a JSON object, got str"):
        load_records(write(tmp_path / "t.json", json.dumps(["doc"])), kind="qa")
    with pytest.raises(MoxError, match="unknown record kind 'pairs'"):
        load_records(str(forget), kind="pairs")


# ---------------------------------------------------------------------------------------------
# load_records: bad input, one message each, naming file and line / index


def test_missing_answer_names_line(tmp_path):
    rows = [{"question": "q", "answer": "a"}] * 6 + [{"question": "q7"}]
    spec = jsonl(tmp_path / "forget.jsonl", rows)
    with pytest.raises(MoxError, match=r'forget\.jsonl:7: record has no "answer" key$'):
        load_records(spec, name="forget")


def test_line_numbers_count_blank_lines(tmp_path):
    spec = write(tmp_path / "f.jsonl", '{"question": "q", "answer": "a"}\n\n{"question": "q", "answer": " "}\n')
    with pytest.raises(MoxError, match=r'f\.jsonl:3: "answer" must be a non-empty string, got an empty string'):
        load_records(spec)


def test_non_string_answer_names_index(tmp_path):
    rows = [{"question": "q", "answer": "a"}] * 3 + [{"question": "q", "answer": 7}]
    spec = write(tmp_path / "retain.json", json.dumps(rows))
    with pytest.raises(MoxError, match=r'retain\.json\[3\]: "answer" must be a non-empty string, got int'):
        load_records(spec, name="retain")


def test_empty_question(tmp_path):
    spec = jsonl(tmp_path / "f.jsonl", [{"question": "", "answer": "a"}])
    with pytest.raises(MoxError, match=r'f\.jsonl:1: "question" must be a non-empty string'):
        load_records(spec)


def test_null_and_list_values(tmp_path):
    with pytest.raises(MoxError, match=r'f\.jsonl:1: "answer" must be a non-empty string, got null'):
        load_records(jsonl(tmp_path / "f.jsonl", [{"question": "q", "answer": None}]))
    with pytest.raises(MoxError, match=r'g\.jsonl:1: "text" must be a non-empty string, got list'):
        load_records(jsonl(tmp_path / "g.jsonl", [{"text": ["a"]}]))


def test_blank_texts_kept_with_warning(tmp_path, caplog):
    """Real corpora contain blank documents (MUSE-News raw/forget.json[821]); they are kept."""
    with caplog.at_level("WARNING"):
        rs = load_records(write(tmp_path / "t.json", json.dumps(["ok", "  "])))
    assert rs.records == [{"text": "ok"}, {"text": "  "}]
    assert "1 blank text record(s)" in caplog.text and "t.json[1]" in caplog.text
    with pytest.raises(MoxError, match=r"forget set is empty: .*every text is blank"):
        load_records(write(tmp_path / "b.json", json.dumps(["", " \n"])), name="forget")


def test_bad_json_line(tmp_path):
    spec = write(tmp_path / "f.jsonl", '{"question": "q", "answer": "a"}\n{"question": "q", \n')
    with pytest.raises(MoxError, match=r"f\.jsonl:2: invalid JSON"):
        load_records(spec)


def test_bad_json_file(tmp_path):
    spec = write(tmp_path / "f.json", '[\n  {"question": "q", "answer": "a"},\n  {oops}\n]')
    with pytest.raises(MoxError, match=r"f\.json:3: invalid JSON"):
        load_records(spec)


def test_record_not_an_object(tmp_path):
    spec = write(tmp_path / "f.jsonl", '{"question": "q", "answer": "a"}\n[1, 2]\n')
    with pytest.raises(MoxError, match=r"f\.jsonl:2: record must be a JSON object, got list"):
        load_records(spec)
    with pytest.raises(MoxError, match=r"n\.json\[0\]: record must be a JSON object or a string, got int"):
        load_records(write(tmp_path / "n.json", "[5]"))


def test_unknown_keys(tmp_path):
    with pytest.raises(MoxError, match=r"u\.jsonl:1: cannot tell the record kind.*'prompt'"):
        load_records(jsonl(tmp_path / "u.jsonl", [{"prompt": "p", "gt": "g"}]))


def test_json_top_level_shapes(tmp_path):
    with pytest.raises(MoxError, match=r"two\.json: a JSON object must hold exactly one list.*'a', 'b'"):
        load_records(write(tmp_path / "two.json", json.dumps({"a": [], "b": []})))
    with pytest.raises(MoxError, match=r"s\.json: expected a JSON list of records, got str"):
        load_records(write(tmp_path / "s.json", '"just a string"'))
    with pytest.raises(MoxError, match=r'w\.json\["data"\]\[1\]: record has no "answer" key'):
        load_records(
            write(tmp_path / "w.json", json.dumps({"data": [{"question": "q", "answer": "a"}, {"question": "q"}]}))
        )


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(MoxError, match=r"^forget file not found: .*nope\.jsonl$"):
        load_records(str(path), name="forget")


@pytest.mark.parametrize(
    "name, content", [("e.jsonl", "\n\n"), ("e.json", "[]"), ("e.txt", "  \n"), ("d.json", '{"data": []}')]
)
def test_empty_set(tmp_path, name, content):
    spec = write(tmp_path / name, content)
    with pytest.raises(MoxError, match=r"^forget set is empty: "):
        load_records(spec, name="forget")


def test_unknown_extension(tmp_path):
    spec = write(tmp_path / "f.csv", "question,answer\n")
    with pytest.raises(MoxError, match=r"f\.csv.*unknown extension '\.csv'.*\.jsonl, \.json, \.txt or hf:"):
        load_records(spec)


# ---------------------------------------------------------------------------------------------
# load_records: hf: specs


@pytest.fixture
def fake_load_dataset(monkeypatch):
    """Replace datasets.load_dataset, recording the call; returns the list of calls. Offline mode, so that the
    hub is not asked first (tests/test_ux.py covers that request)."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    calls = []

    def fake(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        return datasets.Dataset.from_list([{"question": "q", "answer": "a"}])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    return calls


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("hf:locuslab/TOFU", ("locuslab/TOFU", None, "train")),
        ("hf:locuslab/TOFU:forget01", ("locuslab/TOFU", "forget01", "train")),
        ("hf:muse-bench/MUSE-News:knowmem:forget_qa", ("muse-bench/MUSE-News", "knowmem", "forget_qa")),
        ("hf:some/set::test", ("some/set", None, "test")),
    ],
)
def test_hf_spec_parsing(fake_load_dataset, spec, expected):
    rs = load_records(spec)
    assert fake_load_dataset == [expected]
    assert rs.kind == "qa" and rs.source == spec and len(rs) == 1


def test_hf_bad_spec():
    with pytest.raises(MoxError, match="bad dataset spec"):
        load_records("hf:")
    with pytest.raises(MoxError, match="bad dataset spec"):
        load_records("hf:a:b:c:d")


def test_hf_errors_are_one_line(monkeypatch):
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def boom(*a, **k):
        raise ValueError("Unknown split 'x'.\nShould be one of ['train'].")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(MoxError) as info:
        load_records("hf:org/set:cfg:x")
    msg = str(info.value)
    assert "\n" not in msg and "hf:org/set:cfg:x" in msg and "Unknown split 'x'. Should be one of" in msg


def test_hf_local_dataset_dir(tmp_path, monkeypatch):
    """A local folder of data files is a valid dataset id (no network needed)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    d = tmp_path / "myset"
    d.mkdir()
    jsonl(d / "train.jsonl", [{"question": "q0", "answer": "a0"}, {"question": "q1", "answer": ""}])
    with pytest.raises(MoxError, match=r'myset\[1\]: "answer" must be a non-empty string'):
        load_records(f"hf:{d}")
    jsonl(d / "train.jsonl", [{"question": "q0", "answer": "a0"}])
    cache2 = tmp_path / "cache2"  # a fresh cache, so the rewritten file is read again
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache2)
    rs = load_records(f"hf:{d}")
    assert rs.records == [{"question": "q0", "answer": "a0"}]


# ---------------------------------------------------------------------------------------------
# Formatting


def test_prompt_format_validation():
    with pytest.raises(MoxError, match="chat_template must be one of"):
        PromptFormat(chat_template="sometimes")
    with pytest.raises(MoxError, match="question_template"):
        PromptFormat(question_template="Q: {q}")


def test_plain_prompt_has_bos(tokenizer):
    ids = prompt_ids(tokenizer, "Where was Alia Vorn born?", PLAIN)
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Question: Where was Alia Vorn born?\nAnswer:"


def test_encode_qa_masks_prompt(tokenizer):
    q, a = "Where was Alia Vorn born?", "Alia Vorn was born in Quellport."
    prompt = prompt_ids(tokenizer, q, PLAIN)
    answer = tokenizer(" " + a, add_special_tokens=False)["input_ids"]
    ex = encode_qa(tokenizer, q, a, PLAIN, max_length=256)
    n = len(prompt)
    assert ex["input_ids"] == prompt + answer + [tokenizer.eos_token_id]
    assert len(ex["labels"]) == len(ex["input_ids"])
    assert ex["labels"][:n] == [IGNORE_INDEX] * n
    assert ex["labels"][n:] == answer + [tokenizer.eos_token_id]
    assert IGNORE_INDEX not in ex["labels"][n:]


def test_answer_prefix(tokenizer):
    fmt = PromptFormat(question_template="Q: {question}\nA:", answer_prefix="")
    ex = encode_qa(tokenizer, "Who?", "A baker.", fmt, max_length=64)
    n = len(prompt_ids(tokenizer, "Who?", fmt))
    assert ex["input_ids"][n:-1] == tokenizer("A baker.", add_special_tokens=False)["input_ids"]


def test_chat_template_path(chat_tokenizer, tokenizer):
    q, a = "Where was Alia Vorn born?", "In Quellport."
    ids = prompt_ids(chat_tokenizer, q, PLAIN)
    # The template writes <s> itself; nothing else is added, so there is exactly one BOS.
    assert ids[0] == chat_tokenizer.bos_token_id and ids.count(chat_tokenizer.bos_token_id) == 1
    assert chat_tokenizer.decode(ids, skip_special_tokens=True) == f"user: {q}\nassistant:"
    ex = encode_qa(chat_tokenizer, q, a, PLAIN, max_length=256)
    answer = chat_tokenizer(a, add_special_tokens=False)["input_ids"]  # no answer_prefix with a template
    assert ex["input_ids"] == ids + answer + [chat_tokenizer.eos_token_id]
    assert ex["labels"] == [IGNORE_INDEX] * len(ids) + answer + [chat_tokenizer.eos_token_id]
    # "never" falls back to the plain format, same as a tokenizer without a template.
    never = PromptFormat(chat_template="never")
    assert prompt_ids(chat_tokenizer, q, never) == prompt_ids(tokenizer, q, PLAIN)


def test_chat_template_system_prompt(chat_tokenizer):
    fmt = PromptFormat(system_prompt="Be brief.")
    text = chat_tokenizer.decode(prompt_ids(chat_tokenizer, "Who?", fmt), skip_special_tokens=True)
    assert text == "system: Be brief.\nuser: Who?\nassistant:"


def test_chat_template_always_needs_one(tokenizer):
    with pytest.raises(MoxError, match="no chat template"):
        prompt_ids(tokenizer, "Who?", PromptFormat(chat_template="always"))


def test_truncation_keeps_prompt(tokenizer):
    q, a = "Where was Alia Vorn born?", "Alia Vorn was born in Quellport. " * 5
    n = len(prompt_ids(tokenizer, q, PLAIN))
    ex = encode_qa(tokenizer, q, a, PLAIN, max_length=n + 3)
    full = encode_qa(tokenizer, q, a, PLAIN, max_length=1000)
    assert len(ex["input_ids"]) == len(ex["labels"]) == n + 3
    assert ex["input_ids"] == full["input_ids"][: n + 3]
    assert ex["labels"] == [IGNORE_INDEX] * n + full["input_ids"][n : n + 3]


def test_prompt_too_long(tokenizer):
    n = len(prompt_ids(tokenizer, "Where was Alia Vorn born?", PLAIN))
    assert (
        encode_qa(tokenizer, "Where was Alia Vorn born?", "In 1961.", PLAIN, max_length=n + 1)["labels"][-1]
        != IGNORE_INDEX
    )
    with pytest.raises(MoxError, match="prompt is longer than max_length"):
        encode_qa(tokenizer, "Where was Alia Vorn born?", "In 1961.", PLAIN, max_length=n)


def test_no_eos_token(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.eos_token = None
    with pytest.raises(MoxError, match="no EOS token"):
        encode_qa(tok, "Who?", "Me.", PLAIN, max_length=64)


def test_encode_records(tokenizer, qa_files, tmp_path):
    forget, _ = qa_files
    rs = load_records(str(forget))
    out = encode_records(tokenizer, rs, PLAIN, max_length=128)
    assert len(out) == len(rs)
    assert out[2] == encode_qa(tokenizer, rs.records[2]["question"], rs.records[2]["answer"], PLAIN, 128)
    with pytest.raises(MoxError, match=r"forget\.jsonl\[0\]: the prompt is longer than max_length"):
        encode_records(tokenizer, rs, PLAIN, max_length=4)
    with pytest.raises(MoxError, match=r'forget\.jsonl\[0\]: record has no "paraphrased_answer" key'):
        encode_records(tokenizer, rs, PLAIN, max_length=128, answer_key="paraphrased_answer")


def test_encode_records_other_answer_key(tokenizer, tmp_path):
    rows = [{"question": "Who?", "answer": "A.", "paraphrased_answer": "B.", "perturbed_answer": ["C.", "D."]}]
    rs = load_records(jsonl(tmp_path / "p.jsonl", rows))
    ex = encode_records(tokenizer, rs, PLAIN, 64, answer_key="paraphrased_answer")[0]
    assert ex == encode_qa(tokenizer, "Who?", "B.", PLAIN, 64)
    with pytest.raises(MoxError, match=r'p\.jsonl\[0\]: "perturbed_answer" must be a non-empty string, got list'):
        encode_records(tokenizer, rs, PLAIN, 64, answer_key="perturbed_answer")


def test_encode_records_text_set(tokenizer):
    rs = RecordSet(kind="text", records=[{"text": "The quick brown fox."}], source="mem")
    assert encode_records(tokenizer, rs, PLAIN, 8) == encode_texts(tokenizer, ["The quick brown fox."], 8)


def test_encode_texts_chunks(tokenizer):
    text = "The quick brown fox jumps over the lazy dog. " * 4
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and len(ids) > 14
    out = encode_texts(tokenizer, [text, text], 7)
    per_text = [ids[i : i + 7] for i in range(0, len(ids), 7)]
    per_text = [c for c in per_text if len(c) >= 2]
    assert [ex["input_ids"] for ex in out] == per_text * 2
    assert all(len(ex["input_ids"]) <= 7 for ex in out)
    assert all(ex["labels"] == ex["input_ids"] for ex in out)
    assert encode_texts(tokenizer, ["", "   \n"], 7) == []


def test_encode_texts_drops_one_token_tail(tokenizer):
    ids = tokenizer("The quick brown fox.")["input_ids"]
    n = len(ids)
    out = encode_texts(tokenizer, ["The quick brown fox."], n - 1)  # leaves a 1-token tail
    assert [ex["input_ids"] for ex in out] == [ids[: n - 1]]
    out = encode_texts(tokenizer, ["The quick brown fox."], n - 2)  # leaves a 2-token tail
    assert [ex["input_ids"] for ex in out] == [ids[: n - 2], ids[n - 2 :]]


# ---------------------------------------------------------------------------------------------
# Padding


def test_collate_right():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}], pad_id=0)
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    assert all(t.dtype == torch.long and t.shape == (2, 3) for t in batch.values())
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_collate_left():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}], 0, "left")
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, -100, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_collate_pad_equal_to_eos(tokenizer):
    """With pad == eos, the real EOS keeps attention 1 and its label; only padding is masked."""
    eos = tokenizer.eos_token_id
    long = encode_qa(tokenizer, "Where was Alia Vorn born?", "Alia Vorn was born in Quellport.", PLAIN, 256)
    short = encode_qa(tokenizer, "Who?", "Me.", PLAIN, 256)
    batch = collate([long, short], pad_id=eos)
    n = len(short["input_ids"])
    assert batch["input_ids"][1, n - 1] == eos and batch["labels"][1, n - 1] == eos
    assert batch["attention_mask"][1].tolist() == [1] * n + [0] * (len(long["input_ids"]) - n)
    assert batch["attention_mask"][0].all()
    assert (batch["input_ids"][1, n:] == eos).all() and (batch["labels"][1, n:] == IGNORE_INDEX).all()


def test_collate_without_labels_and_errors():
    batch = collate([{"input_ids": [1, 2]}, {"input_ids": [3]}], pad_id=9, padding_side="left")
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].tolist() == [[1, 2], [9, 3]]
    with pytest.raises(MoxError, match="padding_side"):
        collate([{"input_ids": [1]}], 0, "middle")
    with pytest.raises(MoxError, match="empty batch"):
        collate([], 0)


def test_ensure_pad_token(tokenizer):
    tok = copy.deepcopy(tokenizer)
    vocab = len(tok)
    tok.pad_token = None
    ensure_pad_token(tok)
    assert tok.pad_token == tok.eos_token and tok.pad_token_id == tok.eos_token_id
    assert len(tok) == vocab  # no new token, so no embedding resize
    ensure_pad_token(tokenizer)  # already has one: untouched
    assert tokenizer.pad_token == "<pad>"


# ---------------------------------------------------------------------------------------------
# Pairing


def test_epoch_plan_covers_forget_once():
    plan = epoch_plan(10, 20, 4, seed=0, epoch=0)
    assert [len(f) for f, _ in plan] == [4, 4, 2]
    assert [len(r) for _, r in plan] == [4, 4, 2]
    assert sorted(i for f, _ in plan for i in f) == list(range(10))
    assert all(len(set(r)) == len(r) and all(0 <= i < 20 for i in r) for _, r in plan)


def test_epoch_plan_deterministic_and_varies():
    assert epoch_plan(50, 30, 8, seed=1, epoch=2) == epoch_plan(50, 30, 8, seed=1, epoch=2)
    orders = {tuple(i for f, _ in epoch_plan(50, 30, 8, seed=1, epoch=e) for i in f) for e in range(4)}
    assert len(orders) == 4
    assert epoch_plan(50, 30, 8, seed=1, epoch=0) != epoch_plan(50, 30, 8, seed=2, epoch=0)


def test_epoch_plan_drop_last_and_small_retain():
    plan = epoch_plan(10, 3, 4, seed=0, epoch=0, drop_last=True)
    assert [len(f) for f, _ in plan] == [4, 4]
    assert all(len(r) == 4 and all(0 <= i < 3 for i in r) for _, r in plan)  # with replacement
    assert all(r == [] for _, r in epoch_plan(5, 0, 2, seed=0, epoch=0))
    assert epoch_plan(0, 5, 2, seed=0, epoch=0) == []
    with pytest.raises(MoxError, match="batch_size"):
        epoch_plan(5, 5, 0, seed=0, epoch=0)


def test_refusal_choices():
    a = refusal_choices(40, 7, seed=3, epoch=1)
    assert a == refusal_choices(40, 7, seed=3, epoch=1)
    assert a != refusal_choices(40, 7, seed=3, epoch=2)
    assert len(a) == 40 and all(0 <= i < 7 for i in a)
    with pytest.raises(MoxError):
        refusal_choices(3, 0, seed=0, epoch=0)


# ---------------------------------------------------------------------------------------------
# Refusals


def test_default_refusals():
    refusals = load_refusals(None)
    assert len(refusals) >= 15 and len(set(refusals)) == len(refusals)
    assert all(r == r.strip() and r for r in refusals)


def test_refusals_file(tmp_path):
    spec = write(tmp_path / "idk.jsonl", "I don't know.\n\n  No idea.  \n")
    assert load_refusals(spec) == ["I don't know.", "No idea."]
    with pytest.raises(MoxError, match="refusals file is empty"):
        load_refusals(write(tmp_path / "empty.txt", "\n \n"))
    with pytest.raises(MoxError, match="refusals file not found"):
        load_refusals(str(tmp_path / "missing.txt"))


# ---------------------------------------------------------------------------------------------
# Real reference data (skipped where ../shared/data is absent)


def test_real_tofu_and_muse(data_dir, tokenizer):
    forget = load_records(str(data_dir / "tofu" / "forget01.jsonl"), name="forget")
    assert forget.kind == "qa" and len(forget) == 40
    perturbed = load_records(str(data_dir / "tofu" / "forget01_perturbed.jsonl"))
    assert len(perturbed) == 40
    assert {"paraphrased_answer", "perturbed_answer", "paraphrased_question"} <= set(perturbed.records[0])
    assert isinstance(perturbed.records[0]["perturbed_answer"], list)
    refusals = load_refusals(str(data_dir / "tofu" / "idontknow.jsonl"))
    assert len(refusals) == 100
    raw = load_records(str(data_dir / "muse-news" / "raw" / "forget.json"), name="forget")
    assert raw.kind == "text" and len(raw) == 889
    encoded = encode_records(tokenizer, forget, PLAIN, max_length=512)
    assert len(encoded) == 40 and all(ex["labels"][-1] == tokenizer.eos_token_id for ex in encoded)


def test_one_record_is_not_read_as_a_set_of_its_list_field(tmp_path):
    """A TOFU record (perturbed_answer is its one list) used to become a raw-text set of 3 strings."""
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"question": "q?", "answer": "a.", "perturbed_answer": ["x", "y", "z"]}))
    with pytest.raises(MoxError, match=r"one.json: one record \(keys answer, question\), not a set of records"):
        load_records(str(path), name="forget")
    path.write_text(json.dumps({"data": [{"question": "q?", "answer": "a."}]}))  # a set under one key: fine
    assert len(load_records(str(path), name="forget")) == 1
