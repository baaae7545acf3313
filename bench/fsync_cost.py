"""What durability costs: `mox extrapolate` with and without the fsync of its outputs (issue 16 class 9).

    python bench/fsync_cost.py [--sizes-gb 0.27 1.0] [--alphas 1 5] [--repeats 3] [--workdir DIR] [--json FILE]

Every output of mox is written to a temp folder, fsync'ed (each file, then each folder) and renamed into
place (src/mox_unlearn/io/atomic.py). This measures what the fsync adds, side by side: each case runs
`mox extrapolate` in a fresh process, once as shipped ("fsync") and once with io.atomic's `_fsync` replaced
by a no-op ("no fsync"), round-robin, on the same inputs (bench/extrapolate.py's Llama-shaped random bf16
checkpoints, sharded, in the page cache after a warm-up run).

Without fsync the command returns while its bytes are still dirty pages in the page cache; the kernel
writes them later, and that disk time is only deferred, not saved. So two times are reported per run:
  command      the process's wall time (what a user waits for at the prompt)
  + sync       the wall time including a `sync` right after it (the bytes actually on disk)
`sync` also runs before each run, so none starts with another's backlog. The ratio fsync / no fsync of
"command" is the cost a user sees; of "+ sync" the cost of durability itself.

A second, small case times 200 `write_text_atomic` calls of 1 KB (results, logs, config files) each way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extrapolate import build_checkpoint, model_shapes  # noqa: E402  (the same checkpoints as its benchmark)

CHILD = """
import sys
from mox_unlearn.io import atomic
if sys.argv[1] == "off":
    atomic._fsync = lambda path: None
from mox_unlearn.cli import main
sys.exit(main(sys.argv[2:]))
"""

SMALL = """
import sys, time, tempfile
from pathlib import Path
from mox_unlearn.io import atomic
if sys.argv[1] == "off":
    atomic._fsync = lambda path: None
    atomic.os.fsync = lambda fd: None
with tempfile.TemporaryDirectory(dir=sys.argv[2]) as d:
    t = time.perf_counter()
    for i in range(200):
        atomic.write_text_atomic(Path(d) / f"r{i % 20}.json", "x" * 1024)
    print(time.perf_counter() - t)
"""


def sync() -> float:
    t = time.perf_counter()
    os.sync()
    return time.perf_counter() - t


def run_extrapolate(mode: str, ref: Path, mem: Path, out: Path, alphas: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    sync()
    argv = ["extrapolate", "--ref", str(ref), "--mem", str(mem), "--out", str(out)]
    for a in range(1, alphas + 1):
        argv += ["--alpha", str(a)]
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", CHILD, mode, *argv], check=True, stdout=subprocess.DEVNULL)
    command = time.perf_counter() - t
    flush = sync()
    shutil.rmtree(out, ignore_errors=True)
    return {"command": command, "with_sync": command + flush}


def run_small(mode: str, work: Path) -> float:
    sync()
    res = subprocess.run([sys.executable, "-c", SMALL, mode, str(work)], check=True, capture_output=True, text=True)
    return float(res.stdout.strip())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sizes-gb",
        type=float,
        nargs="+",
        default=[0.27, 1.0],
        help="target sizes (the builder lands near them: 0.27 -> 0.36 GB, 1.0 -> 0.98 GB)",
    )
    ap.add_argument("--alphas", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    results = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"}
    rows = []
    with tempfile.TemporaryDirectory(prefix="mox-fsync-", dir=args.workdir) as tmp:
        work = Path(tmp)
        for size in args.sizes_gb:
            shapes = model_shapes(int(size * 1e9), 2)
            ref, mem = work / f"ref-{size}", work / f"mem-{size}"
            build_checkpoint(ref, shapes, 2, torch.bfloat16, seed=0)
            build_checkpoint(mem, shapes, 2, torch.bfloat16, seed=1)
            run_extrapolate("on", ref, mem, work / "out", 1)  # warm-up: inputs into the page cache
            for alphas in args.alphas:
                runs = {"on": [], "off": []}
                for _ in range(args.repeats):
                    for mode in ("on", "off"):
                        runs[mode].append(run_extrapolate(mode, ref, mem, work / "out", alphas))
                row = {"size_gb": sum(f.stat().st_size for f in ref.glob("*.safetensors")) / 1e9, "alphas": alphas}
                for mode, rs in runs.items():
                    for key in ("command", "with_sync"):
                        values = [r[key] for r in rs]
                        row[f"{mode}_{key}_min"] = min(values)
                        row[f"{mode}_{key}_median"] = statistics.median(values)
                row["ratio_command"] = row["on_command_min"] / row["off_command_min"]
                row["ratio_with_sync"] = row["on_with_sync_min"] / row["off_with_sync_min"]
                rows.append(row)
                print(
                    f"{size:.2f} GB x {alphas} α: command fsync {row['on_command_min']:.2f} s / no fsync "
                    f"{row['off_command_min']:.2f} s = {row['ratio_command']:.2f}x; + sync "
                    f"{row['on_with_sync_min']:.2f} / {row['off_with_sync_min']:.2f} = {row['ratio_with_sync']:.2f}x",
                    flush=True,
                )
            shutil.rmtree(ref)
            shutil.rmtree(mem)
        small = {"on": [], "off": []}
        for _ in range(args.repeats):
            for mode in ("on", "off"):
                small[mode].append(run_small(mode, work))
    results["extrapolate"] = rows
    results["small_files"] = {m: {"min": min(v), "median": statistics.median(v)} for m, v in small.items()}
    s = results["small_files"]
    print(
        f"200 write_text_atomic of 1 KB: fsync {s['on']['min'] * 1e3:.0f} ms / no fsync {s['off']['min'] * 1e3:.0f} ms "
        f"({s['on']['min'] / 200 * 1e3:.2f} ms vs {s['off']['min'] / 200 * 1e3:.2f} ms a file)"
    )
    print("\n| model | α | command: fsync | no fsync | ratio | + sync: fsync | no fsync | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size_gb']:.2f} GB | {r['alphas']} | {r['on_command_min']:.2f} s | {r['off_command_min']:.2f} s | "
            f"{r['ratio_command']:.2f}× | {r['on_with_sync_min']:.2f} s | {r['off_with_sync_min']:.2f} s | "
            f"{r['ratio_with_sync']:.2f}× |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
