"""Benchmark `mox extrapolate` against the I/O floor: n alphas at the cost of the bytes (issue 18).

    python bench/extrapolate.py [--size-gb 1.0] [--shards 4] [--shard-size 256MB] [--many 5] [--repeats 3]
                                [--workdir DIR] [--json FILE] [--profile]

Builds two random model-like checkpoints (ref, mem; Llama-shaped bf16 tensors, sharded with an index
and a config.json), then runs each case in a fresh Python process while the parent samples
/proc/<pid>/status every ~10 ms:
  floor x1   a plain process: read every byte of ref and mem, write ref's tensors once with safetensors'
             save_file (file by file, from the mapped input) and fsync each file: the I/O of one alpha
  floor xN   the same, writing ref's tensors N times: the I/O of N alphas
  1 alpha    extrapolate_folders with one alpha
  N alphas   extrapolate_folders with --many alphas in one pass
Every case fsyncs what it writes (mox does, io/atomic.py), so all are timed until the bytes are on disk.
Memory is RssAnon (heap, not the memory-mapped input pages, which are file-backed and reclaimable).
Inputs are in the page cache (a warm-up runs first), `sync` runs between runs so each starts without a
backlog of dirty pages, and the cases run round-robin --repeats times (min and median reported). Output is
deleted after each run and the whole scratch folder at the end.

--profile adds one in-process run of the N-alpha case that times, per worker thread, the arithmetic
(eq8_chunk), the finiteness checks and the writes (os.pwrite), and prints where the time went.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIN_FREE_BYTES = 8 * 10**9
VOCAB, HIDDEN, INTER = 32000, 2048, 5632  # Llama-style shapes (TinyLlama-1.1B sized matrices)


# ----------------------------------------------------------------------------- checkpoint builder


def layer_shapes(i: int) -> list[tuple[str, tuple[int, ...]]]:
    p = f"model.layers.{i}."
    return [
        (p + "input_layernorm.weight", (HIDDEN,)),
        (p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
        (p + "self_attn.k_proj.weight", (HIDDEN, HIDDEN)),
        (p + "self_attn.v_proj.weight", (HIDDEN, HIDDEN)),
        (p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
        (p + "post_attention_layernorm.weight", (HIDDEN,)),
        (p + "mlp.gate_proj.weight", (INTER, HIDDEN)),
        (p + "mlp.up_proj.weight", (INTER, HIDDEN)),
        (p + "mlp.down_proj.weight", (HIDDEN, INTER)),
    ]


def model_shapes(size_bytes: int, itemsize: int) -> list[tuple[str, tuple[int, ...]]]:
    """Embedding + N decoder layers + norm + lm_head, with N chosen to land near `size_bytes`."""
    numel = lambda shapes: sum(math.prod(s) for _, s in shapes)  # noqa: E731
    ends = [
        ("model.embed_tokens.weight", (VOCAB, HIDDEN)),
        ("model.norm.weight", (HIDDEN,)),
        ("lm_head.weight", (VOCAB, HIDDEN)),
    ]
    per_layer = numel(layer_shapes(0)) * itemsize
    n_layers = max(1, round((size_bytes - numel(ends) * itemsize) / per_layer))
    layers = [t for i in range(n_layers) for t in layer_shapes(i)]
    return ends[:1] + layers + ends[1:]


def build_checkpoint(out: Path, shapes, n_shards: int, dtype, seed: int) -> None:
    """Write random tensors into `n_shards` shards of about equal size, holding one shard at a time."""
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    total = sum(torch.Size(s).numel() for _, s in shapes) * torch.finfo(dtype).bits // 8
    groups, cur, cur_bytes = [], [], 0
    for name, shape in shapes:
        cur.append((name, shape))
        cur_bytes += torch.Size(shape).numel() * torch.finfo(dtype).bits // 8
        if cur_bytes >= total / n_shards * (len(groups) + 1) - 1 or (name, shape) == shapes[-1]:
            groups.append(cur)
            cur = []
    weight_map = {}
    for i, group in enumerate(groups, start=1):
        fname = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        tensors = {n: (torch.randn(s, generator=g) * 0.02).to(dtype) for n, s in group}
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in tensors})
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    n_layers = sum(1 for n, _ in shapes if n.endswith("input_layernorm.weight"))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": n_layers,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "dtype": str(dtype).split(".")[-1],
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))


# ----------------------------------------------------------------------------- child side


def child_main(args: argparse.Namespace) -> None:
    """Run one case inside this fresh process and print one JSON line with the timing."""
    import torch  # noqa: F401  (same imports in every case, so the idle baseline matches)

    from mox_unlearn.extrapolation import extrapolate_folders

    time.sleep(0.2)  # let the parent sample the post-import baseline of this very process
    t0 = time.perf_counter()
    if args.child == "floor":
        floor_copy(Path(args.ref), Path(args.mem), Path(args.out), args.copies)
    elif args.child == "extrapolate":
        alphas = [float(a) for a in args.alphas.split(",")]
        extrapolate_folders(
            Path(args.ref), Path(args.mem), alphas, Path(args.out), shard_size=args.shard_size, progress=False
        )
    elif args.child == "idle":
        time.sleep(0.3)
    print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)


def floor_copy(ref: Path, mem: Path, out: Path, copies: int) -> None:
    """The I/O floor of `copies` alphas: read every byte of mem (safetensors maps files lazily, so an
    untouched tensor is never read) and of ref, and write ref's files `copies` times with save_file straight
    from the mapped input, each file fsync'ed. No arithmetic, no checks, no cards."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from mox_unlearn.io.reading import list_weight_files

    for path in sorted(set(list_weight_files(mem).values())):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                f.get_tensor(name).view(-1)[::4096].sum()  # one element per page: every page read
    ref_files = sorted(set(list_weight_files(ref).values()))
    for i in range(copies):
        folder = out / str(i)
        folder.mkdir(parents=True)
        for path in ref_files:
            with safe_open(str(path), framework="pt") as f:
                save_file(
                    {name: f.get_tensor(name) for name in f.keys()}, str(folder / path.name), metadata={"format": "pt"}
                )
            fd = os.open(folder / path.name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def profile_many(ref: Path, mem: Path, out: Path, alphas: list[float], shard_size: str) -> dict:
    """One in-process run of extrapolate_folders with the arithmetic, the checks and the writes timed in
    every thread (wall and thread CPU seconds, summed over threads)."""
    import threading
    from collections import defaultdict

    import mox_unlearn.extrapolation as ex
    import mox_unlearn.io.shards as shards

    acc: dict[str, float] = defaultdict(float)
    lock = threading.Lock()

    def timed(mod, name):
        real = getattr(mod, name)

        def wrapper(*a, **k):
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return real(*a, **k)
            finally:
                with lock:
                    acc[f"{name} wall s"] += time.perf_counter() - t0
                    acc[f"{name} cpu s"] += time.thread_time() - c0

        setattr(mod, name, wrapper)
        return real

    parts = [(ex, "eq8_chunk"), (ex, "cannot_overflow"), (ex, "check_finite"), (shards, "_pwrite_all")]
    reals = [timed(mod, name) for mod, name in parts]
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        ex.extrapolate_folders(ref, mem, alphas, out, shard_size=shard_size, progress=False)
    finally:
        for (mod, name), real in zip(parts, reals):
            setattr(mod, name, real)
    result = {"wall s": time.perf_counter() - t0, "process cpu s": time.process_time() - c0, **acc}
    shutil.rmtree(out)
    return result


# ----------------------------------------------------------------------------- parent side


def rss_anon_kib(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"^RssAnon:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def busy_cpu_seconds() -> float:
    """CPU seconds spent by the whole machine (all processes), from /proc/stat."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def wait_for_idle(max_wait: float) -> bool:
    """Wait until the machine is < 10% busy over one second (other work skews the timings)."""
    deadline = time.time() + max_wait
    while True:
        b0, t0 = busy_cpu_seconds(), time.time()
        time.sleep(1.0)
        if (busy_cpu_seconds() - b0) / ((time.time() - t0) * os.cpu_count()) < 0.10:
            return True
        if time.time() > deadline:
            return False


def run_case(argv: list[str], script: str = __file__) -> dict:
    """Start `script` as a child, sample its RssAnon every ~10 ms until it exits; return time, peak, CPU use."""
    cmd = [sys.executable, os.path.abspath(script), *argv]
    ru0, busy0 = resource.getrusage(resource.RUSAGE_CHILDREN), busy_cpu_seconds()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, samples = 0, 0
    try:
        while proc.poll() is None:
            kib = rss_anon_kib(proc.pid)
            if kib is not None:
                peak, samples = max(peak, kib), samples + 1
            time.sleep(0.01)
    except BaseException:
        proc.kill()  # interrupted: do not leave the child writing into a folder about to be removed
        proc.wait()
        raise
    out, err = proc.communicate()
    ru1, busy1 = resource.getrusage(resource.RUSAGE_CHILDREN), busy_cpu_seconds()
    if proc.returncode != 0:
        sys.exit(f"case {argv} failed (exit {proc.returncode}):\n{err[-3000:]}")
    child_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    result = json.loads(out.strip().splitlines()[-1])
    return {
        "seconds": result["seconds"],
        "peak_rss_anon_bytes": peak * 1024,
        "samples": samples,
        "child_cpu_s": child_cpu,
        "other_cpu_s": max(0.0, busy1 - busy0 - child_cpu),
    }


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*.safetensors"))


def machine() -> dict:
    model = ""
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    import torch

    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(int(mem) / 2**20, 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def measure(argv: list[str], read_bytes: int, out: Path, wait_idle: float) -> dict:
    """One run of one case; output bytes counted, then deleted and synced (not timed)."""
    idle = wait_for_idle(wait_idle) if wait_idle > 0 else None
    run = {**run_case(argv), "machine_was_idle": idle}
    run["read_bytes"], run["written_bytes"] = read_bytes, dir_bytes(out)
    run["bytes_per_s"] = (run["read_bytes"] + run["written_bytes"]) / run["seconds"]
    shutil.rmtree(out)
    os.sync()  # flush this case's dirty pages so the next case starts clean
    return run


def summarize(name: str, n_alpha: int, runs: list[dict]) -> dict:
    """Min and median time over repeats (the machine is shared and noisy), worst memory peak."""
    secs = [r["seconds"] for r in runs]
    first = runs[0]
    return {
        "case": name,
        "n_alpha": n_alpha,
        "min_s": min(secs),
        "median_s": statistics.median(secs),
        "seconds_all": secs,
        "read_bytes": first["read_bytes"],
        "written_bytes": first["written_bytes"],
        "peak_rss_anon_bytes": max(r["peak_rss_anon_bytes"] for r in runs),
        "other_cpu_s_max": max(r["other_cpu_s"] for r in runs),
        "child_cpu_s_min": min(r["child_cpu_s"] for r in runs),
        "runs": runs,
    }


def print_table(rows: list[dict], baseline: int) -> None:
    mib = lambda b: b / 2**20  # noqa: E731
    print(
        "| case | min s | median s | all runs s | read GB | written GB | CPU s (min) | peak RssAnon MiB | minus idle MiB | other CPU s (max) |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        runs = ", ".join(f"{s:.2f}" for s in r["seconds_all"])
        print(
            f"| {r['case']} | {r['min_s']:.2f} | {r['median_s']:.2f} | {runs} | {r['read_bytes'] / 1e9:.2f} | "
            f"{r['written_bytes'] / 1e9:.2f} | {r['child_cpu_s_min']:.1f} | {mib(r['peak_rss_anon_bytes']):.0f} | "
            f"{mib(r['peak_rss_anon_bytes'] - baseline):.0f} | {r['other_cpu_s_max']:.1f} |"
        )


def checks(rows: dict, shard: int) -> list[dict]:
    """Issue 18's targets on min times: N alphas <= 1.3x the floor writing N outputs; peak RssAnon <= the
    floor's + two shards per output. Informative: one alpha against its floor, N alphas against one."""
    many, one, floor_n, floor_1 = rows["many"], rows["1 alpha"], rows["floor many"], rows["floor 1"]
    out = [
        ("target", f"{many['case']} <= 1.3 x {floor_n['case']} (min s)", many["min_s"] / floor_n["min_s"], 1.3),
        ("info", f"{one['case']} <= 1.3 x {floor_1['case']} (min s)", one["min_s"] / floor_1["min_s"], 1.3),
        ("info", f"{many['case']} / {one['case']} (min s)", many["min_s"] / one["min_s"], None),
    ]
    for r, floor in ((many, floor_n), (one, floor_1)):
        extra = r["peak_rss_anon_bytes"] - floor["peak_rss_anon_bytes"]
        out.append(
            (
                "target",
                f"{r['case']}: peak RssAnon - {floor['case']}'s <= 2 shards x {r['n_alpha']} outputs (MiB)",
                extra / 2**20,
                2 * shard * r["n_alpha"] / 2**20,
            )
        )
    return [
        {"kind": kind, "check": text, "value": value, "bound": bound, "ok": bound is None or value <= bound}
        for kind, text, value, bound in out
    ]


def parent_main(args: argparse.Namespace) -> int:
    import torch

    from mox_unlearn.io.shards import parse_size

    shard = parse_size(args.shard_size)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    need = (args.many + 3) * args.size_gb * 1e9
    free = shutil.disk_usage(args.workdir or tempfile.gettempdir()).free
    if free < need:
        sys.exit(
            f"only {free / 1e9:.1f} GB free in {args.workdir or tempfile.gettempdir()}; "
            f"this benchmark needs {need / 1e9:.0f} GB (use --workdir)"
        )
    # always a fresh subfolder, so cleaning up never touches anything that was there before
    work = Path(tempfile.mkdtemp(prefix="mox-bench-extrapolate-", dir=args.workdir))
    try:
        return run_all(args, work, shard, dtype)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_all(args, work: Path, shard: int, dtype) -> int:
    import torch

    itemsize = torch.finfo(dtype).bits // 8
    shapes = model_shapes(int(args.size_gb * 1e9), itemsize)
    print(
        f"building ref and mem: {len(shapes)} tensors, {args.dtype}, {args.shards} shards each, in {work}", flush=True
    )
    ref, mem, out = work / "ref", work / "mem", work / "out"
    build_checkpoint(ref, shapes, args.shards, dtype, seed=0)
    build_checkpoint(mem, shapes, args.shards, dtype, seed=1)
    model_bytes, n_files = dir_bytes(ref), len(list(ref.glob("*.safetensors")))
    os.sync()
    common = ["--ref", str(ref), "--mem", str(mem), "--out", str(out), "--shard-size", args.shard_size]
    alphas = [0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256][: args.many]
    cases = [  # key, label, argv, n_alpha
        ("floor 1", "floor x1", ["--child", "floor", "--copies", "1"], 1),
        ("floor many", f"floor x{args.many}", ["--child", "floor", "--copies", str(args.many)], args.many),
        ("1 alpha", "mox, 1 alpha", ["--child", "extrapolate", "--alphas", "4"], 1),
        (
            "many",
            f"mox, {args.many} alphas",
            ["--child", "extrapolate", "--alphas", ",".join(map(str, alphas))],
            args.many,
        ),
    ]
    print("warm-up (brings both inputs into the page cache)", flush=True)
    measure(cases[0][2] + common, 2 * model_bytes, out, 0)
    baseline = run_case(["--child", "idle", *common])["peak_rss_anon_bytes"]
    runs: dict[str, list[dict]] = {key: [] for key, *_ in cases}
    for rep in range(args.repeats):
        for key, label, argv, _ in cases:
            print(f"repeat {rep + 1}/{args.repeats}: {label}", flush=True)
            runs[key].append(measure(argv + common, 2 * model_bytes, out, args.wait_idle))
    rows = {key: summarize(label, n, runs[key]) for key, label, _, n in cases}
    results = checks(rows, shard)
    print(
        f"\nmodel: {model_bytes / 1e9:.3f} GB per checkpoint ({args.dtype}, {len(shapes)} tensors, "
        f"{n_files} shards); output shard cap {args.shard_size} = {shard / 2**20:.0f} MiB; idle RssAnon "
        f"(python + torch + mox_unlearn imported) {baseline / 2**20:.0f} MiB; inputs in page cache\n"
    )
    print_table(list(rows.values()), baseline)
    print()
    for c in results:
        bound = "" if c["bound"] is None else f" (bound {c['bound']:.3g})"
        tag = "PASS" if c["ok"] else "FAIL"
        print(f"[{tag}] ({c['kind']}) {c['check']}: {c['value']:.3g}{bound}")
    profile = None
    if args.profile:
        os.sync()
        profile = profile_many(ref, mem, out, alphas, args.shard_size)
        print(f"\nprofile of one in-process run, {args.many} alphas (seconds summed over threads):")
        for k, v in profile.items():
            print(f"  {k:<24}{v:8.2f}")
    if args.json:
        payload = {
            "command": " ".join(["python", Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "machine": machine(),
            "model_bytes": model_bytes,
            "shard_size_bytes": shard,
            "idle_rss_anon_bytes": baseline,
            "cases": list(rows.values()),
            "checks": results,
            "profile": profile,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0 if all(c["ok"] for c in results if c["kind"] == "target") else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=1.0, help="approximate size of each checkpoint")
    ap.add_argument("--shards", type=int, default=4, help="input shards per checkpoint")
    ap.add_argument("--shard-size", default="256MB", help="output shard cap")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--many", type=int, default=5, help="number of alphas in the multi-alpha case")
    ap.add_argument("--repeats", type=int, default=3, help="runs per case, round-robin; min and median reported")
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=120.0,
        help="before each run, wait up to this many seconds for the machine to be idle (0: don't)",
    )
    ap.add_argument("--workdir", help="where to put the scratch folder (a new subfolder, removed at the end)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--profile", action="store_true", help="also profile one in-process run of the N-alpha case")
    # internal: run one case in this (fresh) process
    ap.add_argument("--child", choices=["floor", "extrapolate", "idle"], help=argparse.SUPPRESS)
    ap.add_argument("--ref", help=argparse.SUPPRESS)
    ap.add_argument("--mem", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--alphas", help=argparse.SUPPRESS)
    ap.add_argument("--copies", type=int, default=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup in `finally` on kill
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
