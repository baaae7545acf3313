"""keep_fraction's mask before and after commit 1299ceb (float ceil + torch.topk, against the decimal ceil +
extrapolation.largest), for every tensor of each θ_mem at P 0.2 and 0.5 (docs/frontier.md, variants).
Ad-hoc script, kept as it was run:

    python bench/adhoc/variant_tie_check.py REF_MODEL_DIR RUN_DIR [RUN_DIR ...]   # runs with a memorized/
"""

import glob
import math
import sys
from fractions import Fraction

import torch
from safetensors.torch import load_file

from mox_unlearn.extrapolation import largest

ref_dir = sys.argv[1]
runs = sys.argv[2:]
ref = load_file(f"{ref_dir}/model.safetensors")
diff = total = 0
for run in runs:
    mem = load_file(glob.glob(f"{run}/memorized/*.safetensors")[0])
    for name, r in ref.items():
        d = (r.float() - mem[name].float()).reshape(-1).abs()
        for P in (0.2, 0.5):
            n = d.numel()
            old = torch.zeros(n, dtype=torch.bool)
            old[torch.topk(d, math.ceil(P * n), sorted=False).indices] = True
            new = largest(d, math.ceil(Fraction(repr(P)) * n))
            total += 1
            diff += int(not torch.equal(old, new))
            if not torch.equal(old, new):
                print(run, name, P, int(old.sum()), int(new.sum()), int((old != new).sum()))
print(f"{diff} of {total} (tensor, P) masks differ")
