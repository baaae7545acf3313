"""Per decode step: transformers generate() against a bare greedy loop with the same forward, and one
1-token forward (docs/performance.md section 7). Ad-hoc script, kept as it was run:

    OMP_NUM_THREADS=2 python bench/adhoc/decode_step.py MODEL_DIR
"""

import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

path = sys.argv[1]
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
B, P, N = 16, 24, 100
ids = torch.randint(5, 4000, (B, P))
mask = torch.ones(B, P, dtype=torch.long)
mask[:4, :5] = 0
with torch.no_grad():
    for _ in range(2):
        t0 = time.perf_counter()
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=N,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        tg = time.perf_counter() - t0
    print("generate per step ms", tg / N * 1e3)
    # lean loop
    for _ in range(2):
        t0 = time.perf_counter()
        cache = DynamicCache(config=model.config)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        o = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        am = mask
        nxt = o.logits[:, -1].argmax(-1)
        toks = [nxt]
        last = pos[:, -1]
        for _ in range(N - 1):
            am = torch.cat([am, am.new_ones(B, 1)], 1)
            last = last + 1
            o = model(
                input_ids=nxt[:, None],
                attention_mask=am,
                position_ids=last[:, None],
                past_key_values=cache,
                use_cache=True,
            )
            nxt = o.logits[:, -1].argmax(-1)
            toks.append(nxt)
        tl = time.perf_counter() - t0
    lean = torch.stack(toks, 1)
    print("lean per step ms", tl / N * 1e3, "identical:", torch.equal(lean, out[:, P:]))
    t0 = time.perf_counter()
    for _ in range(50):
        model(input_ids=nxt[:, None], use_cache=False)
    print("bare 1-token forward no cache ms", (time.perf_counter() - t0) / 50 * 1e3)
