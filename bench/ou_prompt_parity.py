"""Token-id parity with open-unlearning's own data code, on every TOFU evaluation split.

    python bench/ou_prompt_parity.py --ou-repo /path/to/open-unlearning --data ../shared/data/tofu \
        --tokenizer NAME=DIR [--tokenizer NAME=DIR ...] [--json FILE]

For each tokenizer and each prompt preset of mox that applies to it (the plain ones always, the chat ones
where the tokenizer has a chat template), this imports `preprocess_chat_instance` from the open-unlearning
checkout (called as its QADataset calls it, without few-shot examples) (src/data/utils.py: torch, datasets and numpy only) and compares, for every record of
forget01/05/10_perturbed, retain_perturbed, real_authors_perturbed and world_facts_perturbed and every
answer it scores (answer, paraphrased_answer, each perturbed_answer):
  * input_ids and labels (predict_with_generate=False) with mox's `encode_qa`;
  * the generation prompt (predict_with_generate=True: input_ids) with mox's `prompt_ids`;
  * the ROUGE ground truth (open-unlearning's eval_text_similarity: decoded labels minus decoded prompt)
    with mox's `reference_answer`.
It also counts how many items the default (mox) preset would score differently, which is why the presets
exist. open-unlearning is not a dependency of mox; the checkout is only read.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from transformers import AutoTokenizer

from mox_unlearn.data.formatting import PromptFormat, encode_qa, ensure_pad_token, prompt_ids, reference_answer
from mox_unlearn.data.records import load_records

SPLITS = (
    "forget01_perturbed",
    "forget05_perturbed",
    "forget10_perturbed",
    "retain_perturbed",
    "real_authors_perturbed",
    "world_facts_perturbed",
)
SYSTEM = "You are a helpful assistant."
# open-unlearning's template_args (configs/model/*.yaml) for each preset of mox
TEMPLATE_ARGS = {
    "open-unlearning-qa": dict(
        apply_chat_template=False, user_start_tag="Question: ", user_end_tag="\n", asst_start_tag="Answer: "
    ),
    "open-unlearning-llama2-chat": dict(
        apply_chat_template=False, user_start_tag="[INST] ", user_end_tag=" [/INST]", asst_start_tag=""
    ),
    "open-unlearning-llama3": dict(apply_chat_template=True, system_prompt=SYSTEM, date_string="10 Apr 2025"),
    "open-unlearning-chat": dict(apply_chat_template=True, system_prompt=SYSTEM),
    "open-unlearning-gemma": dict(apply_chat_template=True),
}
MAX_LENGTH = 512  # open-unlearning's TOFU evaluation datasets


def load_ou(repo: Path):
    spec = importlib.util.spec_from_file_location("ou_data_utils", repo / "src" / "data" / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.preprocess_chat_instance


class V4ChatIds:
    """The tokenizer as open-unlearning sees it under the transformers 4.x it pins: there,
    apply_chat_template(tokenize=True) returns a list of ids; transformers 5 returns a BatchEncoding."""

    def __init__(self, tokenizer):
        self._tok = tokenizer

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, *args, **kwargs):
        return self._tok(*args, **kwargs)

    def apply_chat_template(self, *args, **kwargs):
        if kwargs.get("tokenize", True):
            kwargs.setdefault("return_dict", False)
        return self._tok.apply_chat_template(*args, **kwargs)


def answers_of(record: dict) -> list[str]:
    out = [record["answer"]]
    if isinstance(record.get("paraphrased_answer"), str):
        out.append(record["paraphrased_answer"])
    return out + list(record.get("perturbed_answer") or [])


def compare(preprocess, tokenizer, preset: str, pairs: list[tuple[str, str]]) -> dict:
    fmt, tags = PromptFormat(preset=preset), TEMPLATE_ARGS[preset]
    default = PromptFormat()
    counts = dict(pairs=len(pairs), ids=0, labels=0, generation_prompt=0, reference=0, mox_default_differs=0)

    def decode(x):
        return tokenizer.decode(x, skip_special_tokens=True, clean_up_tokenization_spaces=True)

    for q, a in pairs:
        item = preprocess(V4ChatIds(tokenizer), tags, [q], [a], MAX_LENGTH)
        gen = preprocess(V4ChatIds(tokenizer), tags, [q], [a], MAX_LENGTH, predict_with_generate=True)
        ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
        ex = encode_qa(tokenizer, q, a, fmt, MAX_LENGTH)
        counts["ids"] += ex["input_ids"] == ids
        counts["labels"] += ex["labels"] == labels
        counts["generation_prompt"] += prompt_ids(tokenizer, q, fmt, MAX_LENGTH) == gen["input_ids"].tolist()
        truth = decode(gen["labels"].tolist()).replace(decode(gen["input_ids"].tolist()), "").strip()
        counts["reference"] += reference_answer(tokenizer, q, a, fmt, MAX_LENGTH) == truth
        counts["mox_default_differs"] += encode_qa(tokenizer, q, a, default, MAX_LENGTH)["labels"] != labels
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ou-repo", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="local TOFU folder (<split>.jsonl)")
    ap.add_argument("--tokenizer", action="append", required=True, help="NAME=DIR")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    preprocess = load_ou(args.ou_repo)
    pairs = []
    for split in SPLITS:
        records = load_records(str(args.data / f"{split}.jsonl"), name=split, kind="qa").records
        pairs += [(r["question"], a) for r in records for a in answers_of(r)]
    results, ok = [], True
    for spec in args.tokenizer:
        name, _, path = spec.partition("=")
        tok = AutoTokenizer.from_pretrained(path)
        ensure_pad_token(tok)
        presets = [p for p, t in TEMPLATE_ARGS.items() if not t["apply_chat_template"] or tok.chat_template]
        for preset in presets:
            c = compare(preprocess, tok, preset, pairs)
            same = all(c[k] == c["pairs"] for k in ("ids", "labels", "generation_prompt", "reference"))
            ok &= same
            results.append({"tokenizer": name, "preset": preset, **c, "all_equal": same})
            print(
                f"{name:10s} {preset:28s} pairs {c['pairs']:6d}  ids {c['ids']:6d}  labels {c['labels']:6d}  "
                f"gen-prompt {c['generation_prompt']:6d}  reference {c['reference']:6d}  "
                f"| mox default scores other labels on {c['mox_default_differs']:6d}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
