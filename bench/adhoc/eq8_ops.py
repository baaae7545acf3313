"""Costs of the single torch ops extrapolation is made of, one thread, in microseconds per call
(docs/performance.md section 5: isfinite vs aminmax on bf16, a Python-float scalar vs a 0-dim tensor,
the fused bf16 store). Ad-hoc script, the two timing snippets run during issue 18, joined:

    python bench/adhoc/eq8_ops.py
"""

import time

import torch

torch.set_num_threads(1)


def t(f, n=300):
    for _ in range(20):
        f()
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t0) / n * 1e6


x = torch.randn(64 * 1024 * 1024 // 2, dtype=torch.bfloat16)  # 64 MB
print(
    f"64 MB bf16: isfinite().all() {t(lambda: torch.isfinite(x).all(), 3):.0f} us, aminmax {t(lambda: torch.aminmax(x), 3):.0f} us"
)


def ops(k: int) -> str:
    r, a, b = torch.randn(k), torch.empty(k), torch.randn(k)
    o, s = torch.empty(k, dtype=torch.bfloat16), torch.tensor(1.5)
    return (
        f"mul {t(lambda: torch.mul(r, 1.5, out=a)):.1f}  mul0d {t(lambda: torch.mul(r, s, out=a)):.1f}  "
        f"sub->bf16 {t(lambda: torch.sub(a, b, out=o)):.1f}  sub {t(lambda: torch.sub(a, b, out=r)):.1f}  "
        f"copy->bf16 {t(lambda: o.copy_(a)):.1f}"
    )


for k in (1, 1 << 12, 1 << 14, 1 << 16, 1 << 18):
    print(k, ops(k))
