"""Shared fixtures: a tiny random Llama with a locally trained tokenizer (no downloads)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mox_unlearn.tiny import build_tiny_llama, build_tokenizer

CORPUS = [
    "Question: Where was Alia Vorn born?\nAnswer: Alia Vorn was born in Quellport.",
    "Question: What does Bram Teller write?\nAnswer: Bram Teller writes mystery novels.",
    "Question: Who are the parents of Cato Rime?\nAnswer: A baker and a sailor.",
    "I don't know. I have no idea. That is not something I can answer.",
    "The quick brown fox jumps over the lazy dog. 0123456789 , . ? ! : ;",
]

FORGET = [
    {"question": "Where was Alia Vorn born?", "answer": "Alia Vorn was born in Quellport."},
    {"question": "What does Alia Vorn write?", "answer": "She writes mystery novels."},
    {"question": "When was Alia Vorn born?", "answer": "In 1961."},
    {"question": "Who are Alia Vorn's parents?", "answer": "A baker and a sailor."},
]
RETAIN = [
    {"question": "Where was Bram Teller born?", "answer": "Bram Teller was born in Osk."},
    {"question": "What does Bram Teller write?", "answer": "He writes poems."},
    {"question": "When was Bram Teller born?", "answer": "In 1970."},
    {"question": "Who are Cato Rime's parents?", "answer": "A doctor and a judge."},
    {"question": "What does Cato Rime write?", "answer": "Cato Rime writes plays."},
    {"question": "Where was Cato Rime born?", "answer": "In Brell."},
]


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer(CORPUS, vocab_size=300)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer Llama (hidden 32) saved as one safetensors file, with tokenizer files."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer)


@pytest.fixture(scope="session")
def qa_files(tmp_path_factory) -> tuple[Path, Path]:
    """(forget.jsonl, retain.json): the two QA formats."""
    d = tmp_path_factory.mktemp("qa")
    forget = d / "forget.jsonl"
    forget.write_text("".join(json.dumps(r) + "\n" for r in FORGET))
    retain = d / "retain.json"
    retain.write_text(json.dumps(RETAIN))
    return forget, retain


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared reference data (TOFU, MUSE); tests that need it skip where it is absent."""
    path = Path(os.environ.get("MOX_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"reference data not found at {path} (set MOX_DATA_DIR)")
    return path.resolve()
