"""The analyses that probe an unlearned model rather than train it better: relearn (a relearning attack,
paper Table 6 / App. H), examples (greedy answers side by side, Table 4 / App. D) and overlap (forget
and retain facts about the same people, Table 5 / App. G).

Each function takes a Workspace, returns its rows, and writes OUT/<name>/<name>.{json,csv,md,png}.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from mox_unlearn.data import load_records
from mox_unlearn.errors import MoxError
from mox_unlearn.experiments.training import finish, metrics_row
from mox_unlearn.experiments.workspace import Workspace, _say, cache_keys, first_done
from mox_unlearn.report import figure, fq_mu_axes, log_value, save_figure

RELEARN_METRICS = ("probability", "rouge", "truth_ratio")
OVERLAP_METHODS = ("mox", "ga", "idkpo")  # Table 5: MOX, GA and PO (TOFU's IdkPO)
OVERLAP_PERCENTS = (1, 5, 10)  # the evaluation reads TOFU's split names forget01 / forget05 / forget10


def compared_models(ws: Workspace) -> list[tuple[str, str]]:
    """(row name, model folder) of original, retrained (where there is one), MOX at the run's α and each
    compare method, all trained with the shared settings (the runs other analyses reuse)."""
    models = [("original", str(ws.target))]
    if ws.retain:
        models.append(("retrained", str(ws.retain)))
    run, u = ws.run_method("mox")
    models.append((f"mox-a{u.alpha:g}", str(run / "model")))
    for name in ws.cfg.compare_methods:
        run, _ = ws.run_method(name)
        models.append((name, str(run / "model")))
    return models


# ----------------------------------------------------------------------------- relearn (Table 6)


def relearn(ws: Workspace) -> dict:
    """Benign relearning (Hu et al.): fine-tune each model with plain NLL on the first half of the forget
    split for N steps, then measure how much of the other half (never relearnt) comes back. Knowledge that
    was only hidden returns on questions the attacker never showed; knowledge that was removed does not."""
    cfg = ws.cfg
    budgets = _budgets(cfg.relearn_steps)
    if cfg.relearn_lr is not None and cfg.relearn_lr <= 0:
        raise MoxError(f"relearn_lr must be > 0 (or null for the shared unlearning lr), got {cfg.relearn_lr}")
    learn, held = relearn_halves(ws)
    learn_file = ws.write_split(f"relearn-{cfg.forget_split}-first-half", learn)
    rows = []
    for name, model in compared_models(ws):
        before = score_answers(ws, model, held)
        for n in budgets:
            run, u = relearn_run(ws, name, model, learn_file, n)
            after = score_answers(ws, run / "model", held)
            rows.append(_relearn_row(name, n, before, after))
    note = (
        f"Relearning attack after Hu et al. (benign relearning): every model fine-tuned with plain NLL "
        f"(method finetune) on the first half of {cfg.forget_split} ({len(learn)} records) for N optimizer steps "
        f"(lr {u.lr:g}, the shared batch size, no warm-up), then scored on the second half ({len(held)} records, "
        "never relearnt). Probability = exp(−mean answer-token NLL); ROUGE = ROUGE-L recall of greedy answers; "
        "truth ratio = mean max(0, 1 − R) (higher = the true answer beats the perturbed ones), from the "
        f"{cfg.forget_split}_perturbed records. recovery = after − before. Full fine-tuning only: "
        "LoRA relearning (as in Hu et al.) comes later with peft."
    )
    return finish(ws, "relearn", rows, "Relearning attack (paper Table 6)", _plot_relearn, note)


def _budgets(steps: Sequence[int]) -> list[int]:
    if not steps or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in steps):
        raise MoxError(f"relearn_steps must be a non-empty list of positive step counts, got {list(steps)}")
    return list(dict.fromkeys(steps))


def relearn_halves(ws: Workspace) -> tuple[list[dict], list[dict]]:
    """(relearn set, evaluation records): the forget split's first half by index, and its second half
    without any question of the first, carrying the *_perturbed split's keys where that split has them."""
    split = ws.cfg.forget_split
    records = load_records(ws.split_spec(split), name=split, kind="qa").records
    if len(records) < 2:
        raise MoxError(f"relearn needs at least 2 records in {split}, got {len(records)}")
    learn = records[: len(records) // 2]
    seen = {r["question"] for r in learn}
    held = [r for r in records[len(records) // 2 :] if r["question"] not in seen]
    if not held:
        raise MoxError(f"every question of {split}'s second half is also in its first half; nothing to score")
    rich = _perturbed_by_question(ws, f"{split}_perturbed")
    held = [rich.get(r["question"], r) for r in held]
    limit = getattr(ws.cfg, "eval_limit", None)
    return learn, held[:limit] if limit else held


def _perturbed_by_question(ws: Workspace, split: str) -> dict[str, dict]:
    """The evaluation records of `split` by question; empty where the data has no such split."""
    try:
        records = load_records(ws.split_spec(split), name=split, kind="qa").records
    except MoxError:
        return {}
    return {r["question"]: r for r in records}


def relearn_run(ws: Workspace, name: str, model: str | Path, learn_file: str, steps: int):
    """Fine-tune `model` with plain NLL on `learn_file` for `steps` optimizer steps (cached run).

    No warm-up: with a budget of a few steps, a warm-up from lr 0 would waste the attacker's first step.
    No retain set: the attacker only shows forget data."""
    u = ws.unlearn_config(
        "finetune",
        model=str(model),
        forget=learn_file,
        max_steps=steps,
        save_memorized=False,
        save_epochs=False,
        warmup_epochs=0.0,
        objective=None,
        loss={},
        targeted=False,
        momentum=False,
    )
    u.retain = None
    if ws.cfg.relearn_lr is not None:
        u.lr = ws.cfg.relearn_lr
    return ws.train(f"relearn-{name}-n{steps}", u), u


def score_answers(ws: Workspace, model: str | Path, records: Sequence[dict]) -> dict:
    """Probability, ROUGE-L recall of greedy answers and (where the records have perturbed answers) the
    truth ratio of `model` on `records`, with the workspace's evaluation settings; cached under OUT/evals."""
    c = ws.cfg
    questions = [r["question"] for r in records]
    keys = cache_keys(
        lambda spelled: [spelled(model), questions, c.eval_max_new_tokens, c.eval_batch_size, c.max_length], ws.root
    )
    path = first_done([ws.root / "evals" / f"answers-{Path(model).parent.name}-{k}.json" for k in keys])
    if path.is_file():
        return json.loads(path.read_text())
    _say(f"scoring {model} on {len(records)} held-out forget records")
    result = _score(model, records, c.eval_batch_size, c.eval_max_new_tokens, c.max_length)
    from mox_unlearn.io.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(result) + "\n")
    return result


def _score(
    model_dir: str | Path, records: Sequence[dict], batch_size: int, max_new_tokens: int, max_length: int
) -> dict:
    """The three numbers of `score_answers`, computed as TOFU's evaluation computes them."""
    from mox_unlearn.data.formatting import PromptFormat
    from mox_unlearn.evaluate import metrics as M
    from mox_unlearn.evaluate.run import load_eval_model
    from mox_unlearn.evaluate.stats import answer_stats, generate_answers, score_continuations

    model, tok = load_eval_model(str(model_dir), "float32")
    fmt, kw = PromptFormat(), dict(batch_size=batch_size, max_length=max_length)
    questions, answers = [r["question"] for r in records], [r["answer"] for r in records]
    stats = answer_stats(model, tok, questions, answers, fmt, **kw)
    prob = M.probability([s.nll_sum for s in stats], [s.n_tokens for s in stats])
    generated = generate_answers(model, tok, questions, fmt, max_new_tokens=max_new_tokens, batch_size=batch_size)
    truth = None
    if all(isinstance(r.get("paraphrased_answer"), str) and r.get("perturbed_answer") for r in records):
        lists = [[r["paraphrased_answer"], *r["perturbed_answer"]] for r in records]
        scored = score_continuations(model, tok, questions, lists, fmt, **kw)
        true, pert = [row[0] for row in scored], [row[1:] for row in scored]
        ratio = M.truth_ratio([s.nll_avg for s in true], [[p.nll_avg for p in ps] for ps in pert])
        truth = M.truth_ratio_retain(ratio)
    return {
        "probability": float(prob.mean()),
        "rouge": float(M.rouge_l(generated, answers, kind="recall").mean()),
        "truth_ratio": truth,
        "generations": generated,
    }


def _relearn_row(name: str, steps: int, before: dict, after: dict) -> dict:
    row: dict = {"model": name, "budget": steps}
    for m in RELEARN_METRICS:
        b, a = before[m], after[m]
        row.update({f"{m}_before": b, f"{m}_after": a, f"{m}_recovery": None if a is None or b is None else a - b})
    return row


def _plot_relearn(rows: list[dict], path: Path) -> Path:
    fig, axes = figure(1, 3, size=(14, 4))
    titles = {
        "rouge": "Forget ROUGE-L recovery",
        "probability": "Forget probability recovery",
        "truth_ratio": "Forget truth-ratio recovery",
    }
    for name in dict.fromkeys(r["model"] for r in rows):
        pts = [r for r in rows if r["model"] == name]
        for ax, metric in zip(axes[0], titles):
            ys = [r[f"{metric}_recovery"] for r in pts]
            if any(y is not None for y in ys):
                ax.plot([r["budget"] for r in pts], [float("nan") if y is None else y for y in ys], "o-", label=name)
    budgets = sorted({r["budget"] for r in rows})
    for ax, title in zip(axes[0], titles.values()):
        ax.set_title(f"{title} (after − before)", fontsize=9)
        ax.set_xticks(budgets)
        ax.set_xlabel("relearning budget (optimizer steps)")
        ax.axhline(0, color="k", lw=0.6)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- examples (Table 4)


def examples(ws: Workspace) -> dict:
    """The first `examples` forget questions with every model's greedy answer, read from the stored
    evaluations (the same generations the ROUGE columns of the other analyses score)."""
    cfg = ws.cfg
    if isinstance(cfg.examples, bool) or not isinstance(cfg.examples, int) or cfg.examples < 1:
        raise MoxError(f"examples must be a positive number of forget questions, got {cfg.examples!r}")
    records = load_records(ws.split_spec(f"{cfg.forget_split}_perturbed"), name="forget", kind="qa").records
    results = [(name, ws.evaluate(model, name)) for name, model in compared_models(ws)]
    n = min(cfg.examples, len(records), *(len(_generations(r)) for _, r in results))
    rows = []
    for i in range(n):
        q = records[i]["question"]
        rows.append(
            {"example": i, "question": q, "model": "gold", "answer": records[i]["answer"], "rouge_l_recall": None}
        )
        for name, result in results:
            rouge = result["metrics"]["forget_rouge"]
            rows.append(
                {
                    "example": i,
                    "question": q,
                    "model": name,
                    "answer": rouge["generations"][i],
                    "rouge_l_recall": rouge["per_item"][i],
                }
            )
    note = (
        f"Greedy answers (at most {cfg.eval_max_new_tokens} new tokens) to the first {n} {cfg.forget_split} "
        "questions, from each model's TOFU evaluation; `gold` is the dataset's answer, and rouge_l_recall scores "
        "each answer against it."
    )
    return finish(ws, "examples", rows, "Unlearning examples (paper Table 4)", _plot_examples, note)


def _generations(result: dict) -> list[str]:
    gens = result["metrics"]["forget_rouge"].get("generations")
    if not isinstance(gens, list):
        raise MoxError(f"the evaluation of {result.get('model')} stores no forget generations; evaluate it again")
    return gens


def _plot_examples(rows: list[dict], path: Path) -> Path:
    models = list(dict.fromkeys(r["model"] for r in rows if r["model"] != "gold"))
    cols = list(dict.fromkeys(r["example"] for r in rows))
    grid = [[float("nan")] * len(cols) for _ in models]
    for r in rows:
        if r["model"] != "gold":
            grid[models.index(r["model"])][cols.index(r["example"])] = r["rouge_l_recall"]
    fig, axes = figure(1, 1, size=(1.2 + 0.7 * len(cols), 1.0 + 0.45 * len(models)))
    ax = axes[0][0]
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i, line in enumerate(grid):
        for j, v in enumerate(line):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.6 else "k")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(models)), models)
    ax.set_xlabel("forget example")
    ax.set_title("ROUGE-L recall of greedy answers", fontsize=9)
    fig.colorbar(image, ax=ax)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- overlap (Table 5)


def overlap(ws: Workspace) -> dict:
    """Carve `overlap_percent`% of retain90's facts as the forget set, so forgotten and retained facts
    describe the same people, and unlearn it with MOX, GA and IdkPO. FQ needs a model trained without
    exactly those facts, which only the demo can train."""
    cfg = ws.cfg
    if not ws.demo:
        raise MoxError("overlap needs the demo benchmark: FQ needs a model retrained without the carved facts")
    if cfg.overlap_percent not in OVERLAP_PERCENTS:
        valid = ", ".join(map(str, OVERLAP_PERCENTS))
        raise MoxError(f"overlap_percent must be one of {valid}, got {cfg.overlap_percent!r}")
    p = cfg.overlap_percent
    data, gold = overlap_benchmark(ws)
    forget, retain = data / f"forget{p:02d}.jsonl", data / f"retain{100 - p}.jsonl"
    gold_row = {"model": "retrained", **metrics_row(_overlap_evaluate(ws, gold, "retrained", None))}
    gold_file = _overlap_eval_path(ws, gold, "retrained")
    rows = [{"model": "original", **metrics_row(_overlap_evaluate(ws, ws.target, "original", gold_file))}, gold_row]
    for name in OVERLAP_METHODS:
        run, u = ws.run_method(
            name,
            label=f"overlap-{name}",
            model=str(ws.target),
            forget=str(forget),
            retain=str(retain),
            save_epochs=False,
        )
        label = f"mox-a{u.alpha:g}" if name == "mox" else name
        rows.append({"model": label, **metrics_row(_overlap_evaluate(ws, run / "model", label, gold_file))})
    n_forget, n_retain = (len(load_records(str(f)).records) for f in (forget, retain))
    note = (
        f"{p}% of retain90's facts ({n_forget}, a seeded sample) carved as the forget set, the other {n_retain} "
        "kept as the retain set: forgotten and retained facts describe the same people. `retrained` learnt the "
        "target's corpus without any phrasing of a carved fact (from the cached stage-1 model, like the demo's "
        "retain model) and is FQ's gold standard; the unlearned models start from the target, with the shared "
        "settings (PO in the paper = IdkPO here). retain_perturbed is the demo's without the carved facts, so "
        "Model Utility measures retained facts only."
    )
    return finish(ws, "overlap", rows, "Unlearning with semantic overlap (paper Table 5)", _plot_overlap, note)


def overlap_benchmark(ws: Workspace) -> tuple[Path, Path]:
    """(data folder, gold-standard model) of the overlap benchmark, generated and trained once per
    demo model and percent under OUT/overlap-data/."""
    from mox_unlearn.demo.profiles import DemoSizes, overlap_splits, write_tofu_layout
    from mox_unlearn.demo.run import _pretrain

    cfg, p = ws.cfg, ws.cfg.overlap_percent
    root = _overlap_root(ws)
    data = root / "data"
    if not (data / "train_retain.jsonl").is_file():
        _say(f"carving {p}% of the retain facts -> {data}")
        meta = {"seed": cfg.seed, "sizes": dict(cfg.sizes), "percent": p, "demo": str(ws.cache)}
        write_tofu_layout(overlap_splits(cfg.seed, DemoSizes(**cfg.sizes), p), data, meta=meta)
    stage1 = Path(ws.cache) / "stage1" / "model"
    return data, _pretrain(
        stage1,
        data / "train_retain.jsonl",
        root / "retain",
        cfg,
        cfg.profile_epochs,
        "the overlap retain model (the target corpus without the carved facts)",
    )


def _overlap_root(ws: Workspace) -> Path:
    """OUT/overlap-data/p<percent>-<key>: the key names the demo models (their cache folder is keyed by
    data and training settings), so other settings never reuse a stale gold model."""
    keys = cache_keys(lambda spelled: [spelled(ws.cache), ws.cfg.overlap_percent], ws.root)
    return first_done([ws.root / "overlap-data" / f"p{ws.cfg.overlap_percent}-{k}" for k in keys])


def _overlap_eval_path(ws: Workspace, model: str | Path, label: str) -> Path:
    c = ws.cfg
    limit = getattr(c, "eval_limit", None)
    keys = cache_keys(
        lambda spelled: [spelled(model), c.eval_max_new_tokens, c.eval_batch_size, c.max_length, limit], ws.root
    )
    return first_done([_overlap_root(ws) / "evals" / f"{label}-{k}.json" for k in keys])


def _overlap_evaluate(ws: Workspace, model: str | Path, label: str, gold_file: Path | None) -> dict:
    """TOFU metrics on the overlap data, FQ against the gold model (its own row: FQ against itself)."""
    from mox_unlearn.demo.run import evaluate
    from mox_unlearn.evaluate.tofu import add_forget_quality

    data, split = _overlap_root(ws) / "data", f"forget{ws.cfg.overlap_percent:02d}"
    path = _overlap_eval_path(ws, model, label)
    if not path.is_file():
        _say(f"evaluating {label} on the overlap forget set")
    result = evaluate(Path(model), data, ws.cfg, path, gold_file, forget_split=split)
    return add_forget_quality(result, path) if gold_file is None else result


def _plot_overlap(rows: list[dict], path: Path) -> Path:
    fig, axes = figure(1, 1, size=(7, 5))
    ax = axes[0][0]
    for r in rows:
        if r["model_utility"] is None:
            continue
        fq = log_value(r["forget_quality"])
        ax.scatter([r["model_utility"]], [fq], marker="s" if r["model"] in ("original", "retrained") else "o", s=50)
        ax.annotate(r["model"], (r["model_utility"], fq), textcoords="offset points", xytext=(4, 3), fontsize=8)
    fq_mu_axes(ax, "Semantic overlap: FQ vs MU")
    return save_figure(fig, path)
