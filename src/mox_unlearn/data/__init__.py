"""Records in, token ids out: reading and validating sets, formatting prompts, pairing batches.

* `records`: `load_records` reads .jsonl / .json / .txt files and ``hf:`` specs into a `RecordSet`.
* `formatting`: prompts (chat template or plain), QA / raw-text encoding, padding, refusals.
* `pairing`: the deterministic forget/retain micro-batch plan of each epoch.
"""

from .formatting import (
    IGNORE_INDEX,
    PromptFormat,
    collate,
    encode_qa,
    encode_records,
    encode_texts,
    ensure_pad_token,
    load_refusals,
    prompt_ids,
)
from .pairing import epoch_plan, refusal_choices
from .records import RecordSet, load_records, read_json, read_text

__all__ = [
    "IGNORE_INDEX",
    "PromptFormat",
    "RecordSet",
    "collate",
    "encode_qa",
    "encode_records",
    "encode_texts",
    "ensure_pad_token",
    "epoch_plan",
    "load_records",
    "load_refusals",
    "prompt_ids",
    "read_json",
    "read_text",
    "refusal_choices",
]
