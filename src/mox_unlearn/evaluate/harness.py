"""General utility and hazardous knowledge through EleutherAI's lm-evaluation-harness (MMLU, WMDP, ...).

`mox eval --benchmark lm-eval --tasks mmlu,wmdp_bio,wmdp_cyber --model DIR --out R.json` runs lm-eval's
Python API (`simple_evaluate` on an `HFLM` wrapping the model mox already loaded, so its dtype and device
settings apply) and writes mox's usual result shape: `summary` (one number per task: its accuracy, see
`main_metric`) and `metrics` (every number lm-eval reports, with its standard error). lm-eval is an
optional extra: `pip install "mox-unlearn[lm-eval]"`. Tasks are lm-eval's own registry names; `tasks_dir`
adds a folder of task YAML files of your own (lm-eval's format), e.g. a local multiple-choice set.
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mox_unlearn.errors import MoxError

INSTALL = 'pip install "mox-unlearn[lm-eval]"'
# preferred order of the number that stands for a task in the summary
MAIN_METRICS = ("acc,none", "acc_norm,none", "exact_match,strict-match", "exact_match,none", "f1,none")


def check_installed() -> None:
    if importlib.util.find_spec("lm_eval") is None:
        raise MoxError(f"--benchmark lm-eval needs lm-evaluation-harness, which is not installed: {INSTALL}")


def parse_tasks(text: str | None) -> list[str]:
    tasks = [t.strip() for t in (text or "").split(",") if t.strip()]
    if not tasks:
        raise MoxError("--benchmark lm-eval needs --tasks, e.g. --tasks mmlu,wmdp_bio,wmdp_cyber")
    return tasks


def task_manager(tasks: Sequence[str], tasks_dir: str | None = None):
    """lm-eval's TaskManager that knows `tasks`, or a one-line error naming the first unknown one (with the
    closest names). Indexing lm-eval's own ~15,000 task configs takes seconds; when `tasks_dir` alone has
    every task asked for, that is skipped."""
    check_installed()
    from lm_eval.tasks import TaskManager

    if tasks_dir is not None:
        folder = Path(tasks_dir).expanduser()
        if not folder.is_dir():
            raise MoxError(f"--tasks-dir {tasks_dir}: no such folder")
        local = TaskManager(include_path=str(folder), include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            check_overlap(local, tasks)
            return local
    manager = TaskManager(include_path=None if tasks_dir is None else str(Path(tasks_dir).expanduser()))
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        close = difflib.get_close_matches(unknown[0], manager.all_tasks, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else " (lm-eval --tasks list shows them)"
        raise MoxError(f"unknown lm-eval task {unknown[0]!r}{hint}")
    check_overlap(manager, tasks)
    return manager


def _members(index: dict, tags: dict[str, list[str]], item: Any, path: frozenset = frozenset()) -> set[str]:
    """The individual tasks one entry of a group's `task:` list (or a --tasks name) runs: a group's and a
    tag's members recursively, an inline task config by its name."""
    if isinstance(item, dict):  # an inline config inside a group: a sub-group or one task
        return _members(index, tags, item["task"], path) if "group" in item else {str(item.get("task"))}
    if isinstance(item, list):
        return set().union(*(_members(index, tags, x, path) for x in item))
    entry = index.get(item)
    kind = getattr(getattr(entry, "kind", None), "name", "TASK")
    if item in path or kind not in ("GROUP", "TAG"):
        return {item}
    children = (getattr(entry, "cfg", None) or {}).get("task", []) if kind == "GROUP" else tags.get(item, [])
    return _members(index, tags, children, path | {item})


def check_overlap(manager, tasks: Sequence[str]) -> None:
    """Refuse, before any model loads, --tasks that name one task twice through a group (mmlu and
    mmlu_anatomy, say): lm-eval runs each task once and fails on them after the model is loaded. Read from
    lm-eval's task index without building a task; skipped on lm-eval versions without that index."""
    index = getattr(manager, "task_index", None)
    if not isinstance(index, dict):
        return
    tags: dict[str, list[str]] = {}
    for name, entry in index.items():
        for tag in getattr(entry, "tags", None) or ():
            tags.setdefault(tag, []).append(name)
    owner: dict[str, str] = {}
    for name in dict.fromkeys(tasks):
        kind = getattr(getattr(index.get(name), "kind", None), "name", "TASK")
        # a tag is a list of tasks, each its own top-level item to lm-eval; a group keeps its members
        items = [(m, m) for m in sorted(tags.get(name, []))] if kind == "TAG" else [(name, name)]
        for item, source in items:
            for leaf in sorted(_members(index, tags, item)):
                if owner.get(leaf, source) != source:
                    raise MoxError(
                        f"--tasks: task {leaf!r} is in both {owner[leaf]!r} and {source!r}; lm-eval runs each "
                        "task once, so name only one of them"
                    )
                owner[leaf] = source


def main_metric(values: dict[str, Any], prefer: str | None = None) -> tuple[str, float] | None:
    """The number that stands for a task: `prefer` where the task reports it (a metric name, its "none"
    filter first, e.g. acc_norm; or "name,filter"), else accuracy where it has one (see MAIN_METRICS), else its
    first numeric metric that is not a standard error."""
    numbers = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if prefer:
        named = [k for k in numbers if k == prefer or ("," not in prefer and k.partition(",")[0] == prefer)]
        named.sort(key=lambda k: k.partition(",")[2] != "none")
        if named:
            return named[0], float(numbers[named[0]])
    for key in MAIN_METRICS:
        if isinstance(values.get(key), (int, float)):
            return key, float(values[key])
    for key, value in values.items():
        if (
            "_stderr" not in key
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and key != "sample_len"
        ):
            return key, float(value)
    return None


def to_result(raw: dict[str, Any], tasks: Sequence[str], prefer: str | None = None) -> dict[str, Any]:
    """mox's result shape from lm-eval's `simple_evaluate` output: `summary` task -> main metric (`prefer` where
    the task has it, see main_metric), `metrics` "<task> <metric>" -> value and stderr (every task and subtask
    lm-eval reports)."""
    results = raw.get("results") or {}
    summary: dict[str, float | None] = {}
    metrics: dict[str, dict[str, Any]] = {}
    for task, values in results.items():
        for key, value in values.items():
            if (
                "_stderr" in key
                or key == "sample_len"
                or not isinstance(value, (int, float))
                or isinstance(value, bool)
            ):
                continue
            name, _, filt = key.partition(",")
            stderr = values.get(f"{name}_stderr,{filt}")
            metrics[f"{task} {key}"] = {
                "value": float(value),
                "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                "per_item": None,
            }
    better = raw.get("higher_is_better") or {}
    summary_metric: dict[str, dict[str, Any] | None] = {}
    not_reported: dict[str, str] = {}
    not_preferred: dict[str, str] = {}
    for task in tasks:
        picked = main_metric(results.get(task) or {}, prefer)
        summary[task] = None if picked is None else picked[1]
        summary_metric[task] = None
        if picked is None:
            not_reported[task] = (
                "lm-eval reported no aggregate under this name (a tag, or a group without one): the numbers of "
                "its tasks are in metrics"
            )
            continue
        metrics.setdefault(f"{task} {picked[0]}", {"value": picked[1], "stderr": None, "per_item": None})
        metrics[f"{task} {picked[0]}"]["summary_of"] = task
        direction = (better.get(task) or {}).get(picked[0].partition(",")[0])
        summary_metric[task] = {"metric": picked[0], "higher_is_better": direction}
        if prefer and picked[0] != prefer and picked[0].partition(",")[0] != prefer:
            not_preferred[task] = f"reports no {prefer}; its summary number is {picked[0]}"
    return {
        "summary": summary,
        "summary_metric": summary_metric,
        "metrics": metrics,
        "tasks": list(tasks),
        "n_samples": raw.get("n-samples") or {},
        "n_shot": raw.get("n-shot") or {},  # what lm-eval used: a task's own num_fewshot: 0 wins over --num-fewshot
        "versions_lm_eval": raw.get("versions"),
        **({"not_reported": not_reported} if not_reported else {}),
        **({"summary_metric_missing": not_preferred} if not_preferred else {}),
    }


def evaluate_lm_eval(
    model,
    tokenizer,
    tasks: Sequence[str],
    *,
    tasks_dir: str | None = None,
    batch_size: int = 16,
    limit: int | None = None,
    num_fewshot: int | None = None,
    manager=None,
    chat_template: bool = False,
    metric: str | None = None,
) -> dict[str, Any]:
    """Run lm-eval's `simple_evaluate` on the loaded model; returns mox's result dict (see to_result).
    `chat_template`: prompts formatted with the tokenizer's chat template (lm-eval's apply_chat_template);
    `metric`: the summary number of every task that reports it (e.g. acc_norm)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    manager = manager or task_manager(tasks, tasks_dir)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    raw = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks),
        task_manager=manager,
        limit=limit,
        num_fewshot=num_fewshot,
        log_samples=False,
        **({"apply_chat_template": True} if chat_template else {}),
    )
    if raw is None:  # lm-eval returns None on processes other than the main one
        raise MoxError("lm-eval returned no results")
    out = to_result(raw, tasks, metric)
    out["lm_eval"] = {
        "version": getattr(lm_eval, "__version__", None),
        "num_fewshot": num_fewshot,
        "limit": limit,
        "chat_template": chat_template,
        "metric": metric,
    }
    return out
