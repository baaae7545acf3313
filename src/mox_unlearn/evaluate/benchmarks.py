"""Benchmarks and their summary metrics as data: what `mox eval` runs, what `mox report` and the
experiments put in their column headers, and which way each number is better. Definitions in
docs/metrics.md. Adding a benchmark = one `Benchmark` entry (its loader, the files a local copy holds,
its summary metrics) plus a `Metric` row for every new summary number; tests/test_eval.py checks
that every summary key a benchmark writes has a row here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mox_unlearn.errors import MoxError

TOFU_HUB_ID = "locuslab/TOFU"
MUSE_HUB_ID = "muse-bench/MUSE-News"
MUSE_BOOKS_HUB_ID = "muse-bench/MUSE-Books"  # the Harry Potter books; the same files and metrics as News

ARROWS = {"higher": "↑", "lower": "↓", "zero": "→0"}


@dataclass(frozen=True)
class Metric:
    key: str  # the summary key in result files
    short: str  # table header
    name: str
    better: str  # "higher", "lower", or "zero" (closest to 0, e.g. PrivLeak)
    definition: str

    @property
    def header(self) -> str:
        return f"{self.short} ({ARROWS[self.better]})"


METRICS: dict[str, Metric] = {
    m.key: m
    for m in (
        Metric(
            "forget_quality",
            "FQ",
            "Forget Quality",
            "higher",
            "KS-test p-value between this model's forget-set truth ratios and the retain model's (TOFU)",
        ),
        Metric(
            "model_utility",
            "MU",
            "Model Utility",
            "higher",
            "harmonic mean of answer probability, ROUGE-L recall and truth ratio on retain, Real Authors and "
            "World Facts (TOFU)",
        ),
        Metric("forget_rouge", "F-RL", "Forget ROUGE-L", "lower", "ROUGE-L recall of greedy answers, forget set"),
        Metric("retain_rouge", "R-RL", "Retain ROUGE-L", "higher", "ROUGE-L recall of greedy answers, retain set"),
        Metric(
            "privleak",
            "PrivLeak",
            "Privacy leakage",
            "zero",
            "relative gap between this model's min-k membership AUC (forget vs holdout) and the retain model's",
        ),
        Metric("verbmem_f", "VerbMem-F", "Verbatim memorization", "lower", "ROUGE-L F1 of continuations (MUSE)"),
        Metric("knowmem_f", "KnowMem-F", "Knowledge memorization, forget", "lower", "ROUGE-L of QA answers (MUSE)"),
        Metric("knowmem_r", "KnowMem-R", "Knowledge memorization, retain", "higher", "ROUGE-L of QA answers (MUSE)"),
    )
}


def _tofu_files(forget_split: str) -> list[str]:
    from mox_unlearn.evaluate import tofu  # imported when used: the registry itself stays light (`mox --help`)

    tofu.check_forget_split(forget_split)
    names = [s.format(forget=forget_split) for s in tofu.SPLITS.values()] + [forget_split.replace("forget", "holdout")]
    return [f"{name}.jsonl" for name in names]


def _muse_files(forget_split: str) -> list[str]:
    from mox_unlearn.evaluate import muse

    # "a|b": either file (see muse.FILES)
    return [
        "|".join(f"{subset}/{st}.json" for st in ((stems,) if isinstance(stems, str) else stems))
        for subset, stems, _ in muse.FILES.values()
    ]


def _run_tofu(model, tokenizer, *, data: str, **kw: Any) -> dict:
    from mox_unlearn.evaluate import tofu

    return tofu.evaluate_tofu(model, tokenizer, data=data, **kw)


def _precheck_tofu(*, data: str, forget_split: str, retain_result: str | None, limit: int | None) -> None:
    from mox_unlearn.evaluate import tofu

    tofu.check_retain_result(retain_result, data, forget_split, limit)


def _run_muse(model, tokenizer, *, data: str, **kw: Any) -> dict:
    from mox_unlearn.evaluate import muse

    keys = ("retain_result", "batch_size", "limit", "max_length", "mia_reference", "mia_gradnorm")
    return muse.evaluate_muse(model, tokenizer, data=data, **{k: kw[k] for k in keys if k in kw})


@dataclass(frozen=True)
class Benchmark:
    name: str
    hub_id: str
    summary: tuple[str, ...]  # METRICS keys of its result's "summary", in order
    columns: tuple[str, ...]  # the summary metrics a `mox report` table shows
    files: Callable[[str], list[str]]  # forget split -> the files a local --data folder must hold
    run: Callable[..., dict]  # (model, tokenizer, data=, forget_split=, retain_result=, ...) -> result
    precheck: Callable[..., None] | None = None  # (data=, forget_split=, retain_result=, limit=): before any model


MUSE_SUMMARY = ("verbmem_f", "knowmem_f", "knowmem_r", "privleak")

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "tofu",
            TOFU_HUB_ID,
            ("forget_quality", "model_utility", "forget_rouge", "retain_rouge", "privleak"),
            ("forget_quality", "model_utility", "forget_rouge", "retain_rouge"),
            _tofu_files,
            _run_tofu,
            _precheck_tofu,
        ),
        # MUSE's two corpora: the same files, metrics and settings (as in open-unlearning), another hub id
        *(
            Benchmark(name, hub_id, MUSE_SUMMARY, MUSE_SUMMARY, _muse_files, _run_muse)
            for name, hub_id in (("muse", MUSE_HUB_ID), ("muse-books", MUSE_BOOKS_HUB_ID))
        ),
    )
}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise MoxError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]
