"""`mox extrapolate` against mergekit's task_arithmetic on the same inputs, measured side by side.

    python bench/extrapolate_vs_mergekit.py [--size-gb 1.0] [--shards 4] [--repeats 3] [--json FILE]

mergekit is not a dependency of mox-unlearn: install it for this benchmark only, e.g. in a virtual
environment that sees the project's packages, and run the benchmark with that interpreter:

    python -m venv --system-site-packages /tmp/mkvenv && /tmp/mkvenv/bin/pip install mergekit
    /tmp/mkvenv/bin/python bench/extrapolate_vs_mergekit.py

Inputs: two random Llama-shaped bf16 checkpoints (ref seed 0, mem seed 1; 4 safetensors shards with an
index; builder shared with bench/extrapolate.py). Cases, each in a fresh child process whose RssAnon
(heap; the memory-mapped inputs are file-backed and do not count) the parent samples every ~10 ms:

  floor      read every tensor of ref and mem, write ref's: the bytes a 1-alpha extrapolation moves
  mox        extrapolate_folders(ref, mem, [4]) — what `mox extrapolate --alpha 4` runs
  mergekit   run_merge of task_arithmetic, base_model ref, mem with weight -4, normalize false,
             computed in float32 and written in bfloat16 (out_dtype): (1+4)·ref − 4·mem, the same numerics
  mox 5α     extrapolate_folders(ref, mem, [0.5, 1, 2, 4, 8]) in one pass
  floor x5   read ref and mem, write ref's tensors 5 times: the bytes the 5-alpha case moves

The cases run round-robin, --repeats times, so slow phases of a shared machine hit every case alike;
the table gives min and median wall time (child-side, imports excluded) and the worst peak. The mox
and mergekit outputs are compared tensor by tensor (names, shapes, dtypes, values) after the first
round. The scratch folder is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extrapolate import build_checkpoint, dir_bytes, machine, model_shapes, run_case  # noqa: E402

ALPHA = 4.0
MANY = [0.5, 1.0, 2.0, 4.0, 8.0]


# ----------------------------------------------------------------------------- child side


def child(args: argparse.Namespace) -> None:
    import torch  # noqa: F401  (every case imports the same modules before the clock starts)

    from mox_unlearn.extrapolation import extrapolate_folders

    if args.child == "mergekit":
        from mergekit.config import MergeConfiguration
        from mergekit.merge import MergeOptions, run_merge
    time.sleep(0.2)  # the parent samples this process's post-import baseline
    ref, mem, out = Path(args.ref), Path(args.mem), Path(args.out)
    t0 = time.perf_counter()
    if args.child == "floor":
        floor_copy(ref, mem, out, args.shard_size)
    elif args.child == "floor-many":
        floor_copy(ref, mem, out, args.shard_size, copies=len(MANY))
    elif args.child == "mox":
        extrapolate_folders(ref, mem, [ALPHA], out, shard_size=args.shard_size, progress=False)
    elif args.child == "mox-many":
        extrapolate_folders(ref, mem, MANY, out, shard_size=args.shard_size, progress=False)
    elif args.child == "mergekit":
        config = MergeConfiguration.model_validate(
            {
                "merge_method": "task_arithmetic",
                "base_model": str(ref),
                "models": [{"model": str(mem), "parameters": {"weight": -ALPHA}}],
                "parameters": {"normalize": False},
                "dtype": "float32",
                "out_dtype": "bfloat16",
            }
        )
        run_merge(
            config,
            str(out),
            options=MergeOptions(
                copy_tokenizer=False,
                lazy_unpickle=True,
                safe_serialization=True,
                out_shard_size=args.shard_bytes,
                quiet=True,
            ),
        )
    elif args.child != "idle":
        raise SystemExit(f"unknown case {args.child}")
    print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)


def floor_copy(ref: Path, mem: Path, out: Path, shard_size: str, copies: int = 1) -> None:
    """Read every byte of ref and of mem (into a scratch buffer: safetensors maps files lazily, so a
    tensor that is never touched is never read) and write ref's tensors `copies` times: the I/O of an
    extrapolation to `copies` alphas, with no arithmetic."""
    import torch
    from safetensors import safe_open

    from mox_unlearn.io.reading import list_weight_files
    from mox_unlearn.io.shards import ShardWriter

    ref_files, mem_files = list_weight_files(ref), list_weight_files(mem)
    with ExitStack() as stack:
        handles = {
            path: stack.enter_context(safe_open(str(path), framework="pt"))
            for path in {*ref_files.values(), *mem_files.values()}
        }
        writers = [
            stack.enter_context(ShardWriter(out if copies == 1 else out / str(i), shard_size)) for i in range(copies)
        ]
        scratch = torch.empty(0, dtype=torch.uint8)
        for name in sorted(ref_files):
            m = handles[mem_files[name]].get_tensor(name).reshape(-1).view(torch.uint8)
            if scratch.numel() < m.numel():
                scratch = torch.empty(m.numel(), dtype=torch.uint8)
            scratch[: m.numel()].copy_(m)
            r = handles[ref_files[name]].get_tensor(name)
            for writer in writers:
                writer.add(name, r)


# ----------------------------------------------------------------------------- parent side


def compare(mox_out: Path, mk_out: Path) -> dict:
    """Tensor-by-tensor agreement of the two outputs."""
    import torch
    from safetensors import safe_open

    from mox_unlearn.io.reading import list_weight_files

    a, b = list_weight_files(mox_out), list_weight_files(mk_out)
    result = {
        "same_names": sorted(a) == sorted(b),
        "tensors": len(a),
        "bitwise_equal": 0,
        "max_abs_diff": 0.0,
        "dtype_mismatch": 0,
    }
    for name in sorted(set(a) & set(b)):
        with safe_open(str(a[name]), framework="pt") as f, safe_open(str(b[name]), framework="pt") as g:
            x, y = f.get_tensor(name), g.get_tensor(name)
        if x.dtype != y.dtype or x.shape != y.shape:
            result["dtype_mismatch"] += 1
            continue
        result["bitwise_equal"] += int(torch.equal(x, y))
        result["max_abs_diff"] = max(result["max_abs_diff"], (x.float() - y.float()).abs().max().item())
    return result


def measure(argv: list[str], out: Path, read_bytes: int, keep: Path | None = None) -> dict:
    run = run_case(argv, __file__)
    run["written_bytes"] = dir_bytes(out)
    run["bytes_per_s"] = (read_bytes + run["written_bytes"]) / run["seconds"]
    if keep is not None:
        os.replace(out, keep)
    else:
        shutil.rmtree(out)
    os.sync()  # each case starts without a backlog of dirty pages
    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size-gb", type=float, default=1.0)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--shard-size", default="256MB")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir")
    p.add_argument("--json")
    p.add_argument("--child")
    p.add_argument("--ref"), p.add_argument("--mem"), p.add_argument("--out")
    p.add_argument("--shard-bytes", type=int)
    args = p.parse_args()
    if args.child:
        child(args)
        return 0
    try:
        import mergekit  # noqa: F401
    except ImportError:
        sys.exit(
            "mergekit is not importable here; see the docstring: install it in a separate environment "
            "and run this script with that environment's python"
        )
    work = Path(tempfile.mkdtemp(prefix="mox-bench-mergekit-", dir=args.workdir))
    try:
        return run_all(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_all(args: argparse.Namespace, work: Path) -> int:
    from importlib.metadata import version

    import torch

    from mox_unlearn.io.shards import parse_size

    shapes = model_shapes(int(args.size_gb * 1e9), 2)
    ref, mem, out = work / "ref", work / "mem", work / "out"
    print(f"building ref and mem ({len(shapes)} tensors, bf16, {args.shards} shards) in {work}", flush=True)
    build_checkpoint(ref, shapes, args.shards, torch.bfloat16, seed=0)
    build_checkpoint(mem, shapes, args.shards, torch.bfloat16, seed=1)
    model_bytes = dir_bytes(ref)
    common = [
        "--ref",
        str(ref),
        "--mem",
        str(mem),
        "--out",
        str(out),
        "--shard-size",
        args.shard_size,
        "--shard-bytes",
        str(parse_size(args.shard_size)),
    ]
    cases = {
        "floor": "floor (read 2, write 1)",
        "mox": "mox, alpha 4",
        "mergekit": "mergekit task_arithmetic, alpha 4",
        "mox-many": "mox, 5 alphas in one pass",
        "floor-many": "floor x5 (read 2, write 5)",
    }
    print("warm-up (inputs into the page cache)", flush=True)
    measure(["--child", "floor", *common], out, 2 * model_bytes)
    idle = run_case(["--child", "idle", *common], __file__)["peak_rss_anon_bytes"]
    runs: dict[str, list[dict]] = {k: [] for k in cases}
    agreement = None
    for rep in range(args.repeats):
        for key in cases:
            print(f"round {rep + 1}/{args.repeats}: {cases[key]}", flush=True)
            keep = work / f"kept-{key}" if rep == 0 and key in ("mox", "mergekit") else None
            runs[key].append(measure(["--child", key, *common], out, 2 * model_bytes, keep))
        if rep == 0:
            agreement = compare(work / "kept-mox", work / "kept-mergekit")  # one alpha: no alpha-A subfolder
            shutil.rmtree(work / "kept-mox"), shutil.rmtree(work / "kept-mergekit")
            print(f"outputs: {agreement}", flush=True)
    rows = {}
    for key, label in cases.items():
        secs = [r["seconds"] for r in runs[key]]
        rows[key] = {
            "case": label,
            "min_s": min(secs),
            "median_s": statistics.median(secs),
            "all_s": secs,
            "written_bytes": runs[key][0]["written_bytes"],
            "read_bytes": 2 * model_bytes,
            "peak_rss_anon_bytes": max(r["peak_rss_anon_bytes"] for r in runs[key]),
            "other_cpu_s_max": max(r["other_cpu_s"] for r in runs[key]),
        }
        rows[key]["gb_per_s"] = (rows[key]["read_bytes"] + rows[key]["written_bytes"]) / rows[key]["min_s"] / 1e9
    mib = lambda b: b / 2**20  # noqa: E731
    print(f"\nmodel {model_bytes / 1e9:.3f} GB per checkpoint, {len(shapes)} tensors; idle RssAnon {mib(idle):.0f} MiB")
    print(
        "| case | min s | median s | all runs s | read GB | written GB | GB/s (min) | peak RssAnon MiB | minus idle MiB |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in rows.values():
        print(
            f"| {r['case']} | {r['min_s']:.2f} | {r['median_s']:.2f} | {', '.join(f'{s:.2f}' for s in r['all_s'])} | "
            f"{r['read_bytes'] / 1e9:.2f} | {r['written_bytes'] / 1e9:.2f} | {r['gb_per_s']:.2f} | "
            f"{mib(r['peak_rss_anon_bytes']):.0f} | {mib(r['peak_rss_anon_bytes'] - idle):.0f} |"
        )
    mox, mk, floor, many, floor5 = rows["mox"], rows["mergekit"], rows["floor"], rows["mox-many"], rows["floor-many"]
    targets = [
        ("mox at least 2x faster than mergekit (min times)", mk["min_s"] / mox["min_s"], 2.0, ">="),
        (
            "mox peak RssAnon no more than mergekit's (ratio)",
            mox["peak_rss_anon_bytes"] / mk["peak_rss_anon_bytes"],
            1.0,
            "<=",
        ),
        ("mox within 1.5x of the read+write floor", mox["min_s"] / floor["min_s"], 1.5, "<="),
        ("5 alphas in one pass under 2x one alpha", many["min_s"] / mox["min_s"], 2.0, "<"),
        ("(info) 5 alphas within 1.5x of the floor x5", many["min_s"] / floor5["min_s"], 1.5, "<="),
    ]
    print("\n| target | ratio | bound | result |\n|---|---:|---:|---|")
    checks = []
    for name, value, bound, op in targets:
        ok = {">=": value >= bound, "<=": value <= bound, "<": value < bound}[op]
        checks.append({"target": name, "ratio": value, "bound": f"{op} {bound}", "ok": ok})
        print(f"| {name} | {value:.2f} | {op} {bound} | {'pass' if ok else 'FAIL'} |")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "mergekit": version("mergekit"),
                    "model_bytes": model_bytes,
                    "idle_rss_anon_bytes": idle,
                    "agreement": agreement,
                    "rows": rows,
                    "checks": checks,
                    "runs": runs,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
