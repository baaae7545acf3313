"""Torch threads and the OpenMP wait policy, idle and beside one competing CPU job (issue 22).

    python bench/threads.py --model DIR --data ../shared/data/tofu [--steps 12] [--limit 6] [--repeats 1]
                            [--json FILE]

Two workloads, each a fresh `mox` process whose own timer is read (imports and loading excluded):
  train  `mox unlearn` (MOX, forget01 against the first 40 retain99 items, 8 × 96-token batches, --steps
         optimizer steps): run.json timings_s.train;
  eval   `mox eval --benchmark tofu --forget-split forget01 --limit L`: the result's `seconds`.
Settings: OMP_NUM_THREADS 1 or 2 (torch's intra-op threads; this machine has 2 cores) × OMP_WAIT_POLICY
unset (libgomp's default: spin a while before sleeping) or PASSIVE (--waits; spin:N sets libgomp's
GOMP_SPINCOUNT=N instead, a shorter spin), each idle and with one competing job
(a Python busy loop pinned to nothing, started before and killed after the run). The MOX_THREADS_AUTO=0
environment keeps mox from choosing for itself, so the table measures the raw settings. Runs go
round-robin over settings, --repeats times; the table has the median and the ratio to the idle 2-thread
default.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUSY = "while True:\n    pass\n"


def run_once(workload: str, args, env: dict, work: Path) -> float:
    out = work / f"{workload}-{time.monotonic_ns()}"
    if workload == "train":
        retain = work / "retain40.jsonl"
        if not retain.exists():
            lines = (Path(args.data) / "retain99.jsonl").read_text().splitlines()[:40]
            retain.write_text("\n".join(lines) + "\n")
        cmd = ["mox", "unlearn", "--model", args.model, "--forget", str(Path(args.data) / "forget01.jsonl")]
        cmd += ["--retain", str(retain), "--out", str(out), "--max-steps", str(args.steps), "--no-save-memorized"]
        cmd += ["per_device_batch_size=8", "batch_size=8", "max_length=96", "warmup_epochs=0", "checkpoint_every=0"]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return float(json.loads((out / "run.json").read_text())["timings_s"]["train"])
    cmd = ["mox", "eval", "--benchmark", "tofu", "--model", args.model, "--data", args.data, "--forget-split"]
    cmd += ["forget01", "--limit", str(args.limit), "--no-gradnorm", "--out", str(out) + ".json"]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return float(json.loads(Path(str(out) + ".json").read_text())["seconds"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--limit", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--workloads", default="train,eval")
    ap.add_argument("--threads", default="2,1", help="OMP_NUM_THREADS values")
    ap.add_argument(
        "--waits", default="default,PASSIVE", help="OMP_WAIT_POLICY values; spin:N sets GOMP_SPINCOUNT=N instead"
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    thread_counts = [int(t) for t in args.threads.split(",")]
    waits = args.waits.split(",")
    settings = [(t, w, load) for load in ("idle", "busy") for t in thread_counts for w in waits]
    times: dict[tuple, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for _ in range(args.repeats):
            for workload in args.workloads.split(","):
                for threads, wait, load in settings:
                    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MOX_THREADS_AUTO": "0"}
                    env.pop("OMP_WAIT_POLICY", None)
                    env.pop("GOMP_SPINCOUNT", None)
                    if wait.startswith("spin:"):
                        env["GOMP_SPINCOUNT"] = wait[5:]
                    elif wait != "default":
                        env["OMP_WAIT_POLICY"] = wait
                    busy = subprocess.Popen([sys.executable, "-c", BUSY]) if load == "busy" else None
                    try:
                        seconds = run_once(workload, args, env, work)
                    finally:
                        if busy is not None:
                            busy.kill()
                            busy.wait()
                    times.setdefault((workload, threads, wait, load), []).append(seconds)
                    print(f"{workload:5s} threads {threads} wait {wait:8s} {load:4s} {seconds:8.2f} s", flush=True)
    rows = []
    for (workload, threads, wait, load), xs in times.items():
        base = statistics.median(times.get((workload, 2, "default", "idle")) or [float("nan")])
        rows.append(
            {
                "workload": workload,
                "threads": threads,
                "wait_policy": wait,
                "load": load,
                "seconds": xs,
                "median_s": statistics.median(xs),
                "vs_idle_2_threads": statistics.median(xs) / base,
            }
        )
    print("\n| workload | load | threads | OMP_WAIT_POLICY | median s | × idle, 2 threads, default |")
    print("|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["workload"], r["load"] != "idle", -r["threads"], r["wait_policy"])):
        print(
            f"| {r['workload']} | {r['load']} | {r['threads']} | {r['wait_policy']} | {r['median_s']:.2f} | "
            f"{r['vs_idle_2_threads']:.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
