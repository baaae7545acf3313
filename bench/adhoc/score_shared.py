"""Scoring 7 answers per question (TOFU retain_perturbed): every answer as a whole sequence (answer_stats)
against one prompt pass per question (score_continuations), two alternating rounds (docs/performance.md
section 7). Ad-hoc script, kept as it was run:

    OMP_NUM_THREADS=2 python bench/adhoc/score_shared.py MODEL_DIR 32
"""

import json
import sys
import time

import torch

from mox_unlearn.data.formatting import PromptFormat, prompt_ids
from mox_unlearn.evaluate.stats import answer_stats, score_continuations
from mox_unlearn.io.loading import load_model, load_tokenizer

path, n = sys.argv[1], int(sys.argv[2])
tok = load_tokenizer(path)
model = load_model(path, torch.float32).eval()
recs = [json.loads(line) for line in open("/work/shared/data/tofu/retain_perturbed.jsonl")][:n]
qs = [r["question"] for r in recs]
lists = [[r["answer"], r["paraphrased_answer"], *r["perturbed_answer"]] for r in recs]
fmt = PromptFormat(chat_template=sys.argv[3] if len(sys.argv) > 3 else "auto")

print("mean prompt tokens", sum(len(prompt_ids(tok, q, fmt)) for q in qs) / n)
for _ in range(2):
    t0 = time.perf_counter()
    flat_q = [q for q, a in zip(qs, lists) for _ in a]
    old = answer_stats(model, tok, flat_q, [x for a in lists for x in a], fmt, batch_size=16)
    t1 = time.perf_counter()
    new = score_continuations(model, tok, qs, lists, fmt, batch_size=16)
    t2 = time.perf_counter()
    print(f"old {t1 - t0:.1f} s  shared {t2 - t1:.1f} s")
