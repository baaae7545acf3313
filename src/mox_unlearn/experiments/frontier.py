"""frontier: which method should a user pick? Every method tuned with the same budget, over seeds, and
picked by two rules fixed before any test number is seen (docs/frontier.md).

Budget, the same for every method: a learning-rate grid (the setting's lr × `frontier_lr_scales`, or
`frontier_lrs`), optional grids of method settings (`frontier_grids`, e.g. NPO's loss.beta), and the
method's own post-hoc knob, evaluated without training again: α (cfg.alphas) for methods that
extrapolate (MOX, task vectors), the epoch at which training stops (per-epoch weights; every epoch, or
`frontier_epochs` only) for the others.
Each (method, lr, setting, seed) is trained once, cached like every workspace run.

Every (knob value) model gets the TOFU test metrics (FQ against the retain model, MU, ROUGE, ...) and,
apart from them, validation statistics that need no retain model and touch no item the test metrics
score: retain utility (answer probability, ROUGE-L) on validation retain items as a relative drop
against θ_ref, and a KS test of forget vs validation-holdout min-k scores (alpha_selection.score_model).

Per method and seed, two pure rules pick one record among all (lr, setting, knob) of that seed:
  oracle        the highest test FQ with MU ≥ frontier_mu_ratio × the target's MU (what tables report);
  retrain_free  among records with validation utility drop ≤ select_tolerance, the forget set most like
                the validation holdout (KS p, then KS statistic, then median gap; what a practitioner
                can do); it reads only the `val_*` fields of a record.
The table gives mean ± std over seeds of each rule's pick per method.

Writes OUT/frontier/frontier.{json,csv,md}, frontier.png (FQ vs MU, Pareto fronts) and
frontier-seeds.png (per-method boxes over seeds).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mox_unlearn.errors import MoxError
from mox_unlearn.evaluate.benchmarks import METRICS
from mox_unlearn.evaluate.tofu import HOLDOUT_SPLITS
from mox_unlearn.experiments.frontier_rules import (
    ORACLE,
    REPORTED,
    RETRAIN_FREE,
    VAL,
    frontier_variant_list,
    grid_settings,
    log10_fq,
    lr_grid,
    num,
    pareto_front,
    select_all,
    setting_label,
    summarize,
)
from mox_unlearn.experiments.training import metrics_row
from mox_unlearn.experiments.workspace import Workspace, cache_keys, config_dict, epoch_snapshots, first_done
from mox_unlearn.report import is_frontier_result

VALIDATION_VERSION = 2  # in the validation cache key: bump when select_alpha's statistics change (2: min-k without EOS)


# ----------------------------------------------------------------------------- validation data


def unscored(pool: Sequence[dict], scored: Sequence[dict]) -> list[dict]:
    """Records of `pool` whose question is not among `scored`'s (the final evaluation's items)."""
    seen = {r["question"] for r in scored}
    return [r for r in pool if r["question"] not in seen]


def _first(rs, limit: int | None):
    from mox_unlearn.data import RecordSet

    return rs if limit is None else RecordSet(rs.kind, rs.records[:limit], rs.source)


def _part(name: str, pool, scored, override: str | None, max_items: int) -> tuple[Any, dict]:
    """One validation set: `override` when given, else the pool's items the evaluation does not score;
    when every item is scored, the scored ones, flagged `overlaps_test` (never silently)."""
    from mox_unlearn.alpha_selection import spread_sample
    from mox_unlearn.data import RecordSet, load_records

    if override:
        rs = load_records(override, name=f"validation {name}")
        info = {"source": override, "pool": len(rs), "overlaps_test": None}
    else:
        free = unscored(pool.records, scored.records)
        overlaps = not free
        rs = RecordSet(pool.kind, pool.records if overlaps else free, pool.source)
        info = {
            "source": pool.source,
            "pool": len(pool),
            "scored_by_evaluation": len(scored),
            "overlaps_test": overlaps,
        }
    rs = spread_sample(rs, max_items)
    return rs, {**info, "items": len(rs)}


def validation_sets(ws: Workspace, retain_spec: str):
    """(SelectionData, description): the forget set (what is unlearned), and retain and holdout items the
    final evaluation does not score (see docs/frontier.md for the choice on the demo and on TOFU)."""
    from mox_unlearn.alpha_selection import load_selection_data
    from mox_unlearn.data import RecordSet, load_records

    cfg, split, limit = ws.cfg, ws.cfg.forget_split, ws.cfg.eval_limit
    load = lambda spec, name: load_records(spec, name=name, kind="qa")  # noqa: E731
    truth_ratio = cfg.frontier_score == "truth_ratio"  # needs the perturbed records of the forget split
    forget = load(ws.split_spec(f"{split}_perturbed" if truth_ratio else split), "forget")
    retain, retain_info = _part(
        "retain",
        load(retain_spec, "retain"),
        _first(load(ws.split_spec("retain_perturbed"), "retain_perturbed"), limit),
        cfg.validation_retain,
        cfg.frontier_max_items,
    )
    pool: dict[str, dict] = {}
    for name in HOLDOUT_SPLITS:  # TOFU's and the demo's holdout splits are nested: their union is the largest
        try:
            spec = ws.split_spec(name)
        except MoxError:
            continue
        pool.update({r["question"]: r for r in load(spec, name).records})
    scored_holdout = _first(load(ws.split_spec(split.replace("forget", "holdout")), "holdout"), limit)
    holdout_pool = RecordSet("qa", list(pool.values()), f"{ws.data} ({' ∪ '.join(HOLDOUT_SPLITS)})")
    holdout, holdout_info = _part(
        "holdout", holdout_pool, scored_holdout, cfg.validation_holdout, cfg.frontier_max_items
    )
    data = load_selection_data(forget, holdout, retain, score=cfg.frontier_score, max_items=None)
    info = {
        "forget": {"source": forget.source, "items": len(forget)},
        "retain": retain_info,
        "holdout": holdout_info,
        "score": cfg.frontier_score,
    }
    return data, info


def validation_stats(scores: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, float | None]:
    """The `val_*` fields of a record: retain probability / ROUGE, their relative drops against θ_ref, the
    worst drop, and the forget-vs-holdout KS test."""
    from mox_unlearn.alpha_selection import relative_drop

    drops = {
        m: relative_drop(reference[f"retain_{m}"], scores[f"retain_{m}"])
        for m in ("probability", "rouge")
        if reference.get(f"retain_{m}") is not None
    }
    worst = None if any(num(d) is None for d in drops.values()) or not drops else max(drops.values())
    out = {
        f"{VAL}retain_probability": scores["retain_probability"],
        f"{VAL}retain_rouge": scores["retain_rouge"],
        **{f"{VAL}{m}_drop": d for m, d in drops.items()},
        f"{VAL}utility_drop": worst,
        f"{VAL}ks_stat": scores["ks_stat"],
        f"{VAL}ks_p": scores["ks_p"],
        f"{VAL}forget_minus_holdout": scores["forget_minus_holdout_median"],
    }
    return {k: num(v) for k, v in out.items()}


# ----------------------------------------------------------------------------- models


def validation_scores(ws: Workspace, model: str | Path, label: str, data, fmt) -> dict[str, Any]:
    """alpha_selection.score_model of one model on the validation sets; cached in OUT/evals/."""
    from mox_unlearn.alpha_selection import MIN_K, ScoreSettings, json_safe, score_model
    from mox_unlearn.evaluate.run import load_eval_model
    from mox_unlearn.io.atomic import write_text_atomic

    c = ws.cfg
    items = [[r["question"] for r in rs.records] for rs in (data.forget, data.holdout, data.retain)]

    def shape(spelled):
        return [
            VALIDATION_VERSION,
            spelled(model),
            items,
            c.frontier_score,
            MIN_K,
            dataclasses.asdict(fmt),
            c.eval_max_new_tokens,
            c.eval_batch_size,
            c.max_length,
        ]

    path = first_done([ws.root / "evals" / f"validation-{label}-{k}.json" for k in cache_keys(shape, ws.root)])
    if path.is_file():
        return json.loads(path.read_text())
    settings = ScoreSettings(
        score=c.frontier_score,
        fmt=fmt,
        batch_size=c.eval_batch_size,
        max_new_tokens=c.eval_max_new_tokens,
        max_length=c.max_length,
    )
    loaded, tok = load_eval_model(str(model), "float32")
    scores = json_safe(score_model(loaded, tok, data, settings))
    write_text_atomic(path, json.dumps(scores) + "\n")
    return scores


def knob_models(ws: Workspace, run: Path, u: Any) -> list[tuple[str, float | int, Path, str]]:
    """(knob, value, model folder, variant label) of one run: α ∈ cfg.alphas for methods that extrapolate
    (with momentum, the momentum fold at that α), and for each of `frontier_variants` the same α with that
    variant (label "" for plain); the epoch at which training stops for every other method."""
    from mox_unlearn.methods import get_method

    if not get_method(u.method).extrapolate:
        snaps = stopping_epochs(epoch_snapshots(run), ws.cfg.frontier_epochs, run)
        return [("epoch", k, p, "") for k, p in snaps]
    alphas = sorted(float(a) for a in ws.cfg.alphas)
    if u.momentum:  # variants do not apply to Eq. 10's average of whole models (train/spaces.check_variant)
        snaps = [p for _, p in epoch_snapshots(run)]
        return [("alpha", a, ws.momentum_fold(u.model, snaps, a, u.eta), "") for a in alphas]
    out = []
    for variant in [None, *frontier_variant_list(ws.cfg)]:
        models = ws.extrapolated(u.model, run / "memorized", alphas, variant)
        out += [("alpha", a, m, variant.label() if variant else "") for a, m in zip(alphas, models)]
    return out


def pooled_variants(records: Sequence[dict]) -> list[dict]:
    """For each method with variant records (frontier_variants), its α records again as one more method
    "<name>+variants", so both rules choose over every variant × α (plain included) as one knob, the way
    `select-alpha` does over a variant grid. Its budget is larger than any single row's: say so when
    comparing it. Only runs (method, setting, seed) that have every variant the records hold are pooled:
    merged shards may hold a seed whose runs never met the variants, and its pick would be plain MOX's."""

    def base(r: Mapping[str, Any]) -> str:
        return r["method"].split("+")[0]

    alpha = [r for r in records if r["knob"] == "alpha"]
    labels: dict[str, set] = {}  # every variant of a method, plain ("") included
    per_run: dict[tuple, set] = {}
    for r in alpha:
        labels.setdefault(base(r), set()).add(r.get("variant") or "")
        per_run.setdefault((base(r), r.get("setting"), r.get("seed")), set()).add(r.get("variant") or "")
    return [
        {**r, "method": f"{base(r)}+variants", "id": f"{base(r)}+variants/{r['id']}"}
        for r in alpha
        if len(labels[base(r)]) > 1 and per_run[(base(r), r.get("setting"), r.get("seed"))] == labels[base(r)]
    ]


def stopping_epochs(
    snapshots: Sequence[tuple[int, Path]], wanted: Sequence[int], run: Path | str = "the run"
) -> list[tuple[int, Path]]:
    """The (epoch, folder) snapshots that are candidates: all of them, or only the `wanted` epochs (a run
    that lacks one is refused: the budget would silently differ between methods)."""
    if not wanted:
        return list(snapshots)
    have = {k: p for k, p in snapshots}
    missing = [k for k in wanted if k not in have]
    if missing:
        raise MoxError(f"frontier_epochs: {run} has no epoch {missing[0]} (it has {', '.join(map(str, sorted(have)))})")
    return [(k, have[k]) for k in sorted(set(wanted))]


def _needs_epochs(name: str) -> bool:
    from mox_unlearn.methods import get_method, method_variant

    method, settings = method_variant(name)
    return not get_method(method).extrapolate or bool(settings.get("momentum"))


def frontier(ws: Workspace, show: bool = True) -> dict:
    """Train every method × lr × setting × seed once, evaluate every knob value on test and validation
    statistics, pick per method and seed with both rules, and write the table and plots (and print the
    table where `show`)."""
    cfg = ws.cfg
    start = time.perf_counter()  # the settings were checked when the workspace was made (check_settings)
    target = ws.evaluate(ws.target, "original")
    reference_rows = [{"model": "original", **metrics_row(target)}]
    if ws.retain:
        reference_rows.append({"model": "retrained", **metrics_row(ws.evaluate(ws.retain, "retrained"))})
    first = ws.unlearn_config(cfg.frontier_methods[0])
    data, val_info = validation_sets(ws, first.retain)
    val_ref = validation_scores(ws, ws.target, "original", data, first.prompt)
    plan = [
        (name, lr, setting, seed)
        for name in cfg.frontier_methods
        for lr in lr_grid(ws.unlearn_config(name).lr, cfg.frontier_lr_scales, cfg.frontier_lrs)
        for setting in grid_settings(cfg.frontier_grids.get(name, {}))
        for seed in cfg.frontier_seeds
    ]
    records = []
    for i, (name, lr, setting, seed) in enumerate(plan, 1):
        label = setting_label(lr, setting)
        print(f"frontier [{i}/{len(plan)}] {name}, {label}, seed {seed}", flush=True)
        overrides = {"lr": lr, "seed": seed, **({"save_epochs": True} if _needs_epochs(name) else {}), **setting}
        run, u = ws.run_method(name, label=f"frontier-{name}", **overrides)
        for knob, value, model, variant in knob_models(ws, run, u):
            row_name = f"{name}+{variant}" if variant else name
            tag = f"{row_name}-lr{lr:g}-s{seed}-{knob}{value:g}"
            result = ws.evaluate(model, f"frontier-{tag}")
            fq = result["summary"].get("forget_quality")
            records.append(
                {
                    "id": f"{row_name}/{label}/seed {seed}/{knob} {value:g}",
                    "method": row_name,
                    "variant": variant,
                    "lr": lr,
                    "setting": label,
                    "seed": seed,
                    "knob": knob,
                    "value": value,
                    **result["summary"],
                    **metrics_row(result),
                    "log10_forget_quality": log10_fq(fq),
                    **validation_stats(validation_scores(ws, model, f"frontier-{tag}", data, u.prompt), val_ref),
                    "run": str(run),
                    "model": str(model),
                }
            )
    records += pooled_variants(records)
    target_mu = target["summary"]["model_utility"]
    rule = cfg.selection(cfg.alphas)  # the same selection settings as select-alpha and alpha: auto
    selected = select_all(
        records, target_mu, mu_ratio=cfg.frontier_mu_ratio, tolerance=rule.tolerance, p_min=rule.p_min
    )
    summary = summarize(records, selected)
    seconds = round(time.perf_counter() - start, 1)
    extra_json = {
        "records": records,
        "selected": selected,
        "summary": summary,
        "reference": reference_rows,
        "validation": {**val_info, "reference": val_ref},
        "target_mu": target_mu,
        "mu_bar": cfg.frontier_mu_ratio * target_mu,
        "seconds": seconds,
        "config": config_dict(cfg),
    }
    return write_frontier(ws.root / "frontier", extra_json, show)


# ----------------------------------------------------------------------------- shards


SHARD_KEYS = ("frontier_seeds", "frontier_methods", "frontier_variants")  # what shards of one frontier may split
LOCATION_KEYS = ("target", "retain_model", "base", "data")  # where the same models and data lie on each machine
RUN_PATHS = ("run", "model")  # record fields that name folders of the machine that ran them


def _placeless(value: Any) -> Any:
    """A validation description without its `source` fields (files of the machine, e.g. the workspace's
    TOFU subset): what must agree between shards is the items and θ_ref's scores, not where they lay."""
    if isinstance(value, Mapping):
        return {k: _placeless(v) for k, v in value.items() if k != "source"}
    return value


def _merged_variants(parts: Sequence[tuple[str, Mapping[str, Any]]]) -> list:
    """The union of the shards' frontier_variants (one entry per variant, however spelled), refused where
    two would share a row name, as in a single invocation (frontier_variant_list)."""
    from types import SimpleNamespace

    from mox_unlearn.variants import Variant

    variants: list = []
    seen: list = []
    for name, part in parts:
        for i, settings in enumerate(part["config"].get("frontier_variants") or []):
            fields = Variant.from_settings(settings, f"{name}: frontier_variants[{i}]").fields()
            if fields not in seen:
                seen.append(fields)
                variants.append(settings)
    try:
        frontier_variant_list(SimpleNamespace(frontier_variants=variants))
    except MoxError as e:
        raise MoxError(f"the shards' frontier_variants cannot be merged: {e}") from None
    return variants


def merge_frontiers(parts: Sequence[tuple[str, Mapping[str, Any]]]) -> dict:
    """One frontier from the frontier.json of its shards: runs of the same protocol that split its seeds,
    methods or variants between invocations, machines or days (e.g. `frontier_seeds=[1]` on one machine,
    `[2]` on another). Their records are pooled and both rules applied again, so the result is the one a
    single invocation over the union would write. Parts must agree on everything else: the same target and
    retain evaluations, the same validation items and θ_ref scores, the same settings (paths aside); a record
    two parts both hold must be the same. `parts`: (name for messages, loaded JSON)."""
    if not parts:
        raise MoxError("no frontier.json to merge")
    first_name, first = parts[0]
    skip = set(SHARD_KEYS) | set(LOCATION_KEYS)
    records: dict[str, dict] = {}
    seconds = 0.0
    for name, part in parts:
        if not is_frontier_result(part):
            raise MoxError(f"{name}: not a frontier.json (no records, selected, reference and config)")
        for key, what in (("reference", "target and retain evaluations"), ("target_mu", "target MU")):
            if part.get(key) != first.get(key):
                raise MoxError(f"{name}: its {what} differ from {first_name}'s: not shards of one frontier")
        if _placeless(part.get("validation")) != _placeless(first.get("validation")):
            raise MoxError(f"{name}: its validation items or θ_ref scores differ from {first_name}'s")
        cfg, cfg0 = part["config"], first["config"]
        differ = sorted(k for k in set(cfg) | set(cfg0) if k not in skip and cfg.get(k) != cfg0.get(k))
        if differ:
            raise MoxError(
                f"{name}: setting {differ[0]} is {cfg.get(differ[0])!r}, {cfg0.get(differ[0])!r} in {first_name} "
                "(shards may differ only in frontier_seeds, frontier_methods, frontier_variants and paths)"
            )
        for r in part["records"]:
            if r["method"].endswith("+variants"):
                continue  # pooled rows are made again from the merged records
            known = records.get(r["id"])
            same = known is None or all(known.get(k) == r.get(k) for k in set(known) | set(r) if k not in RUN_PATHS)
            if not same:
                raise MoxError(f"{name}: record {r['id']!r} differs from the one in an earlier file")
            records.setdefault(r["id"], dict(r))
        seconds += float(part.get("seconds") or 0)
    merged = list(records.values())
    merged += pooled_variants(merged)
    cfg = dict(first["config"])
    cfg["frontier_seeds"] = sorted({s for _, p in parts for s in p["config"]["frontier_seeds"]})
    cfg["frontier_methods"] = list(dict.fromkeys(m for _, p in parts for m in p["config"]["frontier_methods"]))
    cfg["frontier_variants"] = _merged_variants(parts)
    target_mu = first["target_mu"]
    selected = select_all(
        merged,
        target_mu,
        mu_ratio=cfg["frontier_mu_ratio"],
        tolerance=cfg["select_tolerance"],
        p_min=cfg["select_p_min"],
    )
    return {
        "summary": summarize(merged, selected),
        "records": merged,
        "selected": selected,
        "reference": first["reference"],
        "validation": first["validation"],
        "target_mu": target_mu,
        "mu_bar": cfg["frontier_mu_ratio"] * target_mu,
        "seconds": round(seconds, 1),
        "config": cfg,
        "merged_from": [
            {
                "file": name,
                "seeds": p["config"]["frontier_seeds"],
                "methods": p["config"]["frontier_methods"],
                "records": len(p["records"]),
            }
            for name, p in parts
        ],
    }


# ----------------------------------------------------------------------------- output


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    digits = "2e" if mean != 0 and abs(mean) < 1e-3 else "3f"
    return f"{mean:.{digits}}" + ("" if std is None else f" ± {std:.{digits}}")


def display_rows(summary: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The table's rows: mean ± std strings and the picks in words."""
    names = {
        "forget_quality": "FQ",
        "log10_forget_quality": "log10 FQ",
        "model_utility": "MU",
        "forget_rouge": "Forget ROUGE",
        "retain_rouge": "Retain ROUGE",
    }
    return [
        {
            "Method": r["method"],
            "Rule": r["rule"],
            "Seeds": r["seeds"],
            **{names[k]: _pm(r[f"{k}_mean"], r[f"{k}_std"]) for k in REPORTED},
            "Fallbacks": r["fallbacks"],
            "Picks": "; ".join(f"s{s}: {v}" for s, v in r["picks"].items()),
        }
        for r in summary
    ]


def _note(extra: Mapping[str, Any]) -> str:
    cfg, val = extra["config"], extra["validation"]
    overlap = [n for n in ("retain", "holdout") if val[n].get("overlaps_test")]
    warn = (
        f" **Every {' and '.join(overlap)} item is also scored by the final evaluation**, so the retrain-free rule "
        "uses them (flagged `overlaps_test` in frontier.json)."
        if overlap
        else ""
    )
    return (
        f"Each method: lr grid × settings × seeds {cfg['frontier_seeds']}, and its post-hoc knob (α for MOX / TV, "
        f"the stopping epoch otherwise). **oracle**: highest test FQ with MU ≥ {cfg['frontier_mu_ratio']:g} × the "
        f"target's MU ({extra['target_mu']:.4f}, bar {extra['mu_bar']:.4f}). **retrain_free** (rule v2): forget most "
        f"like {val['holdout']['items']} validation holdout items ({val['score']}: KS p, then KS statistic, then "
        f"median gap) with validation retain "
        f"utility ({val['retain']['items']} items) within {cfg['select_tolerance']:.0%} of θ_ref; it never reads "
        f"test metrics.{warn} Mean ± sample std over seeds of the picked records; Fallbacks = seeds whose rule "
        f"found no qualifying setting. Protocol: docs/frontier.md. {len(extra['records'])} records, "
        f"{extra['seconds']:.0f} s"
        + (
            f" in all, merged from {len(extra['merged_from'])} frontier.json files."
            if extra.get("merged_from")
            else "."
        )
    )


def frontier_files(out: Path) -> list[Path]:
    """Every file `write_frontier` writes into `out`."""
    return [out / n for n in ("frontier.json", "frontier.csv", "frontier.md", "frontier.png", "frontier-seeds.png")]


def write_frontier(out: Path, extra: dict, show: bool = True) -> dict:
    """`frontier_files` of one frontier (`extra`: summary, records, picks, references, validation, config)."""
    from mox_unlearn.alpha_selection import json_safe
    from mox_unlearn.io.atomic import staged_files
    from mox_unlearn.report import write_table

    with staged_files(out) as stage:  # all five files or none (a plot that fails, a stop, a full disk)
        files = write_table(
            display_rows(extra["summary"]),
            stage,
            "frontier",
            title=f"Tuned frontier on {extra['config']['forget_split']}",
            extra=json_safe(extra),
            note=_note(extra),
        )
        files += [plot_frontier(extra, stage / "frontier.png"), plot_seeds(extra, stage / "frontier-seeds.png")]
    files = [out / f.name for f in files]
    if show:
        print("\n" + (out / "frontier.md").read_text(), flush=True)
    return {
        "rows": extra["summary"],
        "records": extra["records"],
        "selected": extra["selected"],
        "files": [str(f) for f in files],
    }


def method_styles(methods: list[str]) -> dict[str, tuple[tuple[float, float, float], str]]:
    """A color and a line style per frontier row: tab20's ten dark colors (= tab10, matplotlib's own cycle,
    which repeats after 10), then its ten light ones; a variant row (`mox+...`) is dashed."""
    from matplotlib import colormaps

    tab20 = colormaps["tab20"].colors
    colors = tab20[0::2] + tab20[1::2]
    return {m: (tuple(colors[i % len(colors)]), "--" if "+" in m else "-") for i, m in enumerate(methods)}


def plot_frontier(extra: Mapping[str, Any], path: Path) -> Path:
    """FQ (log) against MU: every record, each method's Pareto front, both rules' picks, the MU bar."""
    from mox_unlearn.report import figure, fq_mu_axes, log_value, save_figure

    fig, axes = figure(1, 1, size=(8.5, 6))
    ax = axes[0][0]
    by_id = {r["id"]: r for r in extra["records"]}
    styles = method_styles(list(dict.fromkeys(r["method"] for r in extra["records"])))
    for method, (color, line) in styles.items():
        pts = [
            (r["model_utility"], log_value(r["forget_quality"]))
            for r in extra["records"]
            if r["method"] == method and r["model_utility"] is not None and r["forget_quality"] is not None
        ]
        if not pts:
            continue
        ax.scatter(*zip(*pts), s=10, alpha=0.35, color=color)  # faint dots; the front and picks are opaque
        front = pareto_front(pts)
        ax.plot(*zip(*front), line, drawstyle="steps-post", color=color, lw=1.5, label=f"{method} front")
        for rule, marker in ((ORACLE, "*"), (RETRAIN_FREE, "D")):
            picks = [by_id[p[rule]["id"]] for p in extra["selected"][method].values() if p[rule]["id"] in by_id]
            ax.scatter(
                [r["model_utility"] for r in picks],
                [log_value(r["forget_quality"]) for r in picks],
                marker=marker,
                s=90 if marker == "*" else 40,
                color=color,
                edgecolor="k",
                zorder=3,
            )
    for r in extra["reference"]:
        ax.scatter([r["model_utility"]], [log_value(r["forget_quality"])], marker="X", s=80, color="k")
        ax.annotate(
            r["model"],
            (r["model_utility"], log_value(r["forget_quality"])),
            xytext=(5, 5),
            textcoords="offset points",
            fontsize=8,
        )
    ax.axvline(extra["mu_bar"], color="gray", ls="--", lw=1, label="oracle MU bar")
    ax.scatter([], [], marker="*", color="w", edgecolor="k", s=90, label="oracle pick")
    ax.scatter([], [], marker="D", color="w", edgecolor="k", s=40, label="retrain-free pick")
    fq_mu_axes(ax, "Every lr × setting × seed × knob value, with each method's Pareto front", legend=7)
    return save_figure(fig, path)


def plot_seeds(extra: Mapping[str, Any], path: Path) -> Path:
    """log10 FQ and MU of each rule's pick per method, as boxes over seeds."""
    from mox_unlearn.report import figure, save_figure

    by_id = {r["id"]: r for r in extra["records"]}
    methods = list(extra["selected"])
    fig, axes = figure(1, 2, size=(max(8, 2.2 * len(methods) + 4), 4.2))
    for ax, key, title in (
        (axes[0][0], "log10_forget_quality", f"log10 {METRICS['forget_quality'].header}"),
        (axes[0][1], "model_utility", METRICS["model_utility"].header),
    ):
        for j, (rule, color) in enumerate(((ORACLE, "tab:blue"), (RETRAIN_FREE, "tab:orange"))):
            values = [
                [
                    by_id[p[rule]["id"]][key]
                    for p in extra["selected"][m].values()
                    if p[rule]["id"] in by_id and by_id[p[rule]["id"]][key] is not None
                ]
                for m in methods
            ]
            pos = [3 * i + j for i in range(len(methods))]
            box = ax.boxplot([v or [math.nan] for v in values], positions=pos, widths=0.8, patch_artist=True)
            for patch in box["boxes"]:
                patch.set_facecolor(color)
                patch.set_alpha(0.5)
            for x, v in zip(pos, values):  # with three seeds a box hides little; show the seeds themselves
                ax.scatter([x] * len(v), v, s=12, color="k", zorder=3)
            ax.scatter([], [], marker="s", color=color, alpha=0.5, label=rule)
        ax.set_xticks([3 * i + 0.5 for i in range(len(methods))], methods)
        ax.set_title(f"{title}, the pick per seed")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path)
