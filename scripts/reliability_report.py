"""Run every fault-injection case of tests/fault_cases.py and write docs/reliability.md.

    OMP_NUM_THREADS=1 python scripts/reliability_report.py [--out docs/reliability.md]

The same cases tests/test_faults.py asserts: each is run through the real CLI in-process on a tiny
random model built here (no download), and its exit code and the line `mox` printed are recorded as
observed, so the document shows what the program does rather than what someone wrote it does.
Paths in the document are relative to the scratch folder the inputs were made in.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import CORPUS, FORGET, RETAIN  # noqa: E402  (the test suite's tiny model and QA sets)
from fault_cases import FAULTS, Outcome, build_inputs, fill, is_root, run_case  # noqa: E402

COMMAND = "OMP_NUM_THREADS=1 python scripts/reliability_report.py"


def base_inputs(root: Path) -> tuple[Path, Path, Path]:
    """The tests' session fixtures, made the same way: a 2-layer Llama with a local tokenizer, QA files."""
    from mox_unlearn.tiny import build_tiny_llama, build_tokenizer

    base = root / "base"
    model = build_tiny_llama(base / "tiny-llama", build_tokenizer(CORPUS, vocab_size=300))
    forget, retain = base / "forget.jsonl", base / "retain.json"
    forget.write_text("".join(json.dumps(r) + "\n" for r in FORGET))
    retain.write_text(json.dumps(RETAIN))
    return model, forget, retain


def cell(text: str) -> str:
    """One markdown table cell: pipes escaped, code-formatted."""
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`" if text else ""


def verdict(fault, outcome: Outcome | None, names: str) -> str:
    """ok when the case behaves as tests/test_faults.py requires, else what is wrong."""
    if outcome is None:
        return "skipped (running as root: chmod 000 does not stop root)"
    lines = outcome.lines()
    want = "mox: warning:" if fault.warning else "mox: " if fault.interrupted else "mox: error:"
    problems = []
    if len(lines) != 1 or not lines[0].startswith(want):
        problems.append(f"expected one '{want}' line, got {len(lines)}")
    if outcome.exit_code != (0 if fault.warning else 130 if fault.interrupted else 2):
        problems.append(f"exit {outcome.exit_code}")
    if "Traceback" in outcome.stderr:
        problems.append("traceback")
    if outcome.out_left and not (fault.warning or fault.keeps_out):
        problems.append("output left behind")
    if fault.keeps_out and not outcome.out_left:
        problems.append("the run folder the message points to is gone")
    if outcome.inputs_changed:
        problems.append(f"inputs changed: {outcome.inputs_changed}")
    if lines and names not in lines[0]:
        problems.append("does not name the input")
    return "ok" if not problems else "FAILED: " + "; ".join(problems)


CLASSES = {
    0: "first round: bad files, records, model folders, names and numbers",
    1: "faults while writing (a file-size limit standing for a full disk or a quota)",
    2: "signals (SIGTERM) outside the training loop, and during it",
    3: "outputs that would overwrite an input",
    4: "concurrency: a folder another running mox holds",
    5: "metadata checked, not trusted (shard index, values the dtype cannot hold)",
    6: "checks before the expensive work (model, config, tokenizer, data, retain result)",
    7: "typed settings",
    8: "third-party exceptions (chat templates, tokenizers, encodings, result rows, damaged run folders)",
    9: "durability (files a crash cut short)",
    10: "a success that would mean nothing",
}


def class_table() -> list[str]:
    """Cases per class of issue 16's list."""
    lines = ["| class | what | cases |", "|---|---|---|"]
    for k, what in CLASSES.items():
        lines.append(f"| {k or '–'} | {what} | {sum(f.klass == k for f in FAULTS)} |")
    return lines


def injected_note(fault) -> str:
    """The environment fault of a case, in words."""
    kind, _, arg = fault.fault.partition(":")
    return {
        "fsize": f" (RLIMIT_FSIZE {arg} bytes)",
        "sigterm": f" (SIGTERM at {arg})",
        "held": f" (flock held on {arg})",
        "another-writer": " (another process writes --out first)",
    }.get(kind, "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "reliability.md"))
    args = ap.parse_args()
    rows, verdicts = [], []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mox-faults-") as tmp:
        root = Path(tmp)
        paths = build_inputs(root, *base_inputs(root))
        rel = lambda text: text.replace(str(root) + "/", "")  # noqa: E731
        for fault in FAULTS:
            skip = fault.needs_non_root and is_root()
            outcome = None if skip else run_case(fault, root, paths)
            names = fill(fault.names, paths, root / "out" / fault.id)
            v = verdict(fault, outcome, names)
            verdicts.append(v)
            line = outcome.lines()[0] if outcome and outcome.lines() else ""
            code = "–" if outcome is None else str(outcome.exit_code)
            rows.append(
                f"| {fault.id} | {fault.klass or '–'} | {fault.input}{injected_note(fault)} "
                f"| {cell('mox ' + rel(fill(fault.command, paths, root / 'out' / fault.id)))} "
                f"| {code} | {cell(rel(line))} | {v} |"
            )
            print(f"{fault.id:<32} exit {code:>2}  {v}  {rel(line)[:100]}", file=sys.stderr)
    total = time.perf_counter() - start
    ok, skipped = verdicts.count("ok"), sum(v.startswith("skipped") for v in verdicts)
    failed = len(verdicts) - ok - skipped
    header = [
        "# Reliability: how `mox` answers bad input",
        "",
        f"Generated by `{COMMAND}` (from the repository root); do not edit by hand.",
        f"Cases: tests/fault_cases.py, asserted by tests/test_faults.py. {len(FAULTS)} cases: {ok} ok, {failed} failed, "
        f"{skipped} skipped; {total:.0f} s on {platform.machine()}, Python {platform.python_version()}.",
        "",
        "Each case runs the real CLI on a tiny random model (paths below are relative to the scratch folder "
        "the script made). What every case must do: print exactly one `mox: error:` line naming the offending "
        "input, exit with status 2, print no traceback (`mox --debug ...` prints it), leave no output folder "
        "behind, and leave every input byte for byte unchanged (hashed before and after; the run folders of the "
        "resume cases are inputs). The exceptions: forget-equals-retain prints one `mox: warning:` line, then the "
        "run goes on and exits 0; a stop (SIGTERM) prints one `mox:` line saying what was kept and exits 130; and "
        "cases that keep their run folder on purpose (a trained θ_mem to extrapolate with a smaller α, a checkpoint "
        "to resume from, another process's output) say so in the line. Environment faults are injected in-process "
        "(tests/fault_cases.py `injected`): a file-size limit, SIGTERM when a named function is first called, a "
        "flock held on a folder, another writer. Progress bars of work done before a fault shows may precede the "
        "line. `FAST` below stands for "
        "`per_device_batch_size=2 batch_size=2 max_length=64 lr=1e-3 warmup_epochs=0 --max-steps 1`.",
        "",
        *class_table(),
        "",
        "| case | class | input | command | exit | observed stderr line | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    from fault_cases import FAST

    text = "\n".join(header + [r.replace(FAST, "FAST") for r in rows]) + "\n"
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"written: {args.out} ({failed} failed)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
