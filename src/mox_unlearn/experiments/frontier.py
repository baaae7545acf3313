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
against θ_ref, and a KS test of forget vs validation-holdout min-k scores (select_alpha.score_model).

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
import itertools
import json
import math
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mox_unlearn.config import SELECT_P_MIN, SELECT_TOLERANCE
from mox_unlearn.errors import MoxError
from mox_unlearn.experiments.training import metrics_row
from mox_unlearn.experiments.workspace import Workspace, _key, config_dict, epoch_snapshots

ORACLE, RETRAIN_FREE = "oracle", "retrain_free"
RULES = (ORACLE, RETRAIN_FREE)
VAL = "val_"  # prefix of the fields the retrain-free rule may read
REPORTED = ("forget_quality", "log10_forget_quality", "model_utility", "forget_rouge", "retain_rouge")
HOLDOUT_SPLITS = ("holdout01", "holdout05", "holdout10")
VALIDATION_VERSION = 2  # in the validation cache key: bump when select_alpha's statistics change (2: min-k without EOS)


# ----------------------------------------------------------------------------- settings and the plan


def _distinct_ints(values: Any, minimum: int, *, allow_empty: bool) -> bool:
    """A list of distinct integers ≥ minimum (booleans are not integers here)."""
    return (
        isinstance(values, list)
        and (allow_empty or bool(values))
        and len(set(map(str, values))) == len(values)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values)
    )


def check_frontier_settings(cfg: Any) -> None:
    """Refuse a frontier setting that cannot run, in one line, before any model is trained."""
    from mox_unlearn.config import UnlearnConfig, apply_mapping
    from mox_unlearn.methods import METHODS, VARIANTS
    from mox_unlearn.select_alpha import SCORES, check_grid

    methods = cfg.frontier_methods
    unknown = [m for m in methods if m not in METHODS and m not in VARIANTS]
    if not methods or unknown:
        raise MoxError(
            f"frontier_methods: unknown method {(unknown or [None])[0]!r}; valid: {', '.join([*METHODS, *VARIANTS])}"
        )
    if len(set(methods)) != len(methods):
        raise MoxError(f"frontier_methods: duplicate names in {methods}")
    explicit = check_grid(cfg.frontier_lrs, "frontier_lrs", "") if cfg.frontier_lrs else []
    if cfg.frontier_lr_scales or not explicit:  # the scales only matter without explicit learning rates
        check_grid(cfg.frontier_lr_scales, "frontier_lr_scales", "")
    if not _distinct_ints(cfg.frontier_seeds, 0, allow_empty=False):
        raise MoxError(f"frontier_seeds must be a non-empty list of distinct integers >= 0, got {cfg.frontier_seeds!r}")
    if not 0 < cfg.frontier_mu_ratio <= 1:
        raise MoxError(f"frontier_mu_ratio must be in (0, 1], got {cfg.frontier_mu_ratio!r}")
    if cfg.frontier_score not in SCORES:
        raise MoxError(f"frontier_score: unknown score {cfg.frontier_score!r}; valid: {', '.join(SCORES)}")
    if not _distinct_ints(cfg.frontier_epochs, 1, allow_empty=True):
        raise MoxError(
            f"frontier_epochs must be a list of distinct epochs >= 1 (empty: every epoch), got {cfg.frontier_epochs!r}"
        )
    if (
        isinstance(cfg.frontier_max_items, bool)
        or not isinstance(cfg.frontier_max_items, int)
        or cfg.frontier_max_items < 2
    ):
        raise MoxError(f"frontier_max_items must be an integer >= 2, got {cfg.frontier_max_items!r}")
    for method, grid in cfg.frontier_grids.items():
        if method not in methods:
            raise MoxError(f"frontier_grids: {method!r} is not in frontier_methods ({', '.join(methods)})")
        if not isinstance(grid, Mapping) or not grid:
            raise MoxError(f"frontier_grids.{method}: expected a mapping of config keys to lists of values")
        for key, values in flat_grid(grid).items():
            if key in ("lr", "seed"):
                raise MoxError(f"frontier_grids.{method}.{key}: set it with frontier_lrs / frontier_seeds")
            if not isinstance(values, list) or not values:
                raise MoxError(f"frontier_grids.{method}.{key}: expected a non-empty list of values")
            for v in values:  # an unknown key or a value out of range fails here, not after training
                apply_mapping(UnlearnConfig(), {key: v})


def lr_grid(base_lr: float, scales: Sequence[float], explicit: Sequence[float] = ()) -> list[float]:
    """The learning rates every method gets: `explicit` when given, else base_lr × each scale; ascending.
    Rounded to 6 significant digits so that 1e-3 × 1/3 names (and keys) the same run every time."""
    values = [float(v) for v in explicit] if explicit else [base_lr * float(s) for s in scales]  # YAML 1.1: "5e-5"
    return sorted({float(f"{v:.6g}") for v in values})


def flat_grid(grid: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{loss: {beta: [..]}} -> {"loss.beta": [..]}: a grid given nested (YAML, or `frontier_grids.npo.loss.beta=`
    overrides) or with dotted keys reads the same."""
    flat: dict[str, Any] = {}
    for k, v in grid.items():
        flat.update(flat_grid(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return flat


def grid_settings(grid: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every combination of a method's setting grid ({} = the presets only), keys in sorted order."""
    grid = flat_grid(grid)
    keys = sorted(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def setting_label(lr: float, setting: Mapping[str, Any]) -> str:
    """`lr 0.001` or `lr 0.001, loss.beta=0.1`: how a pick is named in tables."""
    return ", ".join([f"lr {lr:g}", *(f"{k}={v}" for k, v in setting.items())])


# ----------------------------------------------------------------------------- the rules (pure)


def _num(x: Any) -> float | None:
    """A finite float, or None (missing, NaN or not a number never wins a comparison)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def select_oracle(records: Sequence[Mapping[str, Any]], target_mu: float, ratio: float = 0.95) -> dict[str, Any]:
    """The record with the highest test FQ among those with MU ≥ ratio × target_mu (ties: higher MU, then
    the first). None qualifies: the highest MU (then FQ), flagged `qualified: false`. This is the choice
    benchmark tables report; it reads the test FQ, which needs the retrained model."""
    bar = ratio * target_mu
    known = [(i, _num(r.get("forget_quality")), _num(r.get("model_utility"))) for i, r in enumerate(records)]
    known = [(i, fq, mu) for i, fq, mu in known if fq is not None and mu is not None]
    if not known:
        return {
            "rule": ORACLE,
            "id": None,
            "qualified": False,
            "mu_bar": bar,
            "reason": "no record has a test FQ and MU (the workspace has no retain model)",
        }
    qualifying = [k for k in known if k[2] >= bar]
    if qualifying:
        i = max(qualifying, key=lambda k: (k[1], k[2]))[0]
        reason = f"highest FQ with MU >= {ratio:g} x target MU ({bar:.4g})"
    else:
        i = max(known, key=lambda k: (k[2], k[1]))[0]
        reason = f"no setting keeps MU >= {ratio:g} x target MU ({bar:.4g}); the highest MU instead"
    return {"rule": ORACLE, "id": records[i].get("id"), "qualified": bool(qualifying), "mu_bar": bar, "reason": reason}


def select_retrain_free(
    records: Sequence[Mapping[str, Any]], tolerance: float = SELECT_TOLERANCE, p_min: float = SELECT_P_MIN
) -> dict[str, Any]:
    """The record whose forget set looks most like unseen data among those whose validation retain utility
    dropped at most `tolerance` (relative to θ_ref). "Most like unseen data", in order: the highest KS p
    (forget vs holdout), then the smallest KS statistic, then the smallest |median gap| between forget and
    holdout scores, then the smaller utility drop, then the first record. None within the tolerance: the
    smallest drop, flagged `utility_ok: false`; a pick with p < p_min is flagged `forget_indistinguishable: false`.

    Why the statistic and the gap after p (rule v2, docs/frontier.md "Changes"): once forget and holdout
    are completely separated (KS statistic 1), p is the same tiny number for every candidate, and rule v1
    then fell through to the smallest utility drop, i.e. the least changed model. The gap keeps measuring
    how far the forget set still is from unseen data where p and the statistic no longer can.

    Only `val_*` fields are read (each record is cut down to them first), so the test metrics, and the
    retain model they need, cannot influence the choice.
    """
    views = [{k: v for k, v in r.items() if k.startswith(VAL)} for r in records]
    if not views:
        raise MoxError("retrain-free selection needs at least one record")
    drop = [_num(v.get("val_utility_drop")) for v in views]
    p = [_num(v.get("val_ks_p")) for v in views]
    within = [i for i, d in enumerate(drop) if d is not None and d <= tolerance]

    def unlike_holdout(j: int) -> tuple[float, float, float, float]:  # smaller = more like unseen data
        stat, gap = _num(views[j].get("val_ks_stat")), _num(views[j].get("val_forget_minus_holdout"))
        return (
            1.0 if p[j] is None else -p[j],
            math.inf if stat is None else stat,
            math.inf if gap is None else abs(gap),
            drop[j],
        )

    if within:
        i = min(within, key=unlike_holdout)
        reason = (
            f"forget most like validation holdout (KS p, then KS statistic, then median gap) with validation "
            f"retain utility within {tolerance:.0%} of θ_ref"
        )
    else:
        i = min(
            range(len(views)), key=lambda j: (math.inf if drop[j] is None else drop[j], 1.0 if p[j] is None else -p[j])
        )
        reason = f"no setting keeps validation retain utility within {tolerance:.0%} of θ_ref; the smallest drop"
    alike = p[i] is not None and p[i] >= p_min
    if within and not alike:
        reason += f" (KS p < {p_min:g}: forget still distinguishable from holdout)"
    return {
        "rule": RETRAIN_FREE,
        "id": records[i].get("id"),
        "utility_ok": bool(within),
        "forget_indistinguishable": alike,
        "tolerance": tolerance,
        "p_min": p_min,
        "reason": reason,
    }


def select_all(
    records: Sequence[Mapping[str, Any]],
    target_mu: float,
    *,
    mu_ratio: float = 0.95,
    tolerance: float = SELECT_TOLERANCE,
    p_min: float = SELECT_P_MIN,
) -> dict[str, dict[str, dict[str, dict]]]:
    """{method: {seed: {oracle: pick, retrain_free: pick}}}: both rules on each method's records of each
    seed (all of its learning rates, settings and knob values), the same way for every method."""
    groups: dict[str, dict[str, list]] = {}
    for r in records:
        groups.setdefault(r["method"], {}).setdefault(str(r["seed"]), []).append(r)
    return {
        m: {
            s: {ORACLE: select_oracle(rs, target_mu, mu_ratio), RETRAIN_FREE: select_retrain_free(rs, tolerance, p_min)}
            for s, rs in by_seed.items()
        }
        for m, by_seed in groups.items()
    }


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n − 1) of the known values; std None below two values."""
    xs = [x for x in (_num(v) for v in values) if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def log10_fq(fq: float | None) -> float | None:
    """log10 of FQ, with FQ = 0 (a p-value below float range) read as 1e-300, as the plots draw it."""
    return None if _num(fq) is None else math.log10(max(float(fq), 1e-300))


def is_fallback(pick: Mapping[str, Any]) -> bool:
    """A pick made because nothing qualified: the oracle's without a setting above the MU bar, or the
    retrain-free rule's without one within the utility tolerance."""
    return not (pick.get("qualified", True) and pick.get("utility_ok", True))


def summarize(
    records: Sequence[Mapping[str, Any]], selected: Mapping[str, Mapping[str, Mapping[str, dict]]]
) -> list[dict[str, Any]]:
    """One row per method and rule: mean and std over seeds of the picked records' reported metrics,
    how many picks were fallbacks, and which setting each seed picked."""
    by_id = {r["id"]: r for r in records}
    rows = []
    for method, by_seed in selected.items():
        for rule in RULES:
            picks = [(seed, by_seed[seed][rule]) for seed in by_seed]
            chosen = [(seed, by_id[p["id"]]) for seed, p in picks if p["id"] in by_id]
            row: dict[str, Any] = {"method": method, "rule": rule, "seeds": len(chosen)}
            for key in REPORTED:
                row[f"{key}_mean"], row[f"{key}_std"] = mean_std(r.get(key) for _, r in chosen)
            row["fallbacks"] = sum(is_fallback(p) for _, p in picks)
            row["picks"] = {seed: f"{r['setting']}, {r['knob']} {r['value']:g}" for seed, r in chosen}
            rows.append(row)
    return rows


def pareto_front(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (MU, FQ) points no other point beats on both (higher is better on both), by MU descending."""
    front: list[tuple[float, float]] = []
    for mu, fq in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not front or fq > front[-1][1]:
            front.append((mu, fq))
    return front


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
    from mox_unlearn.data import RecordSet, load_records
    from mox_unlearn.select_alpha import spread_sample

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
    from mox_unlearn.data import RecordSet, load_records
    from mox_unlearn.select_alpha import load_selection_data

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
    from mox_unlearn.select_alpha import relative_drop

    drops = {
        m: relative_drop(reference[f"retain_{m}"], scores[f"retain_{m}"])
        for m in ("probability", "rouge")
        if reference.get(f"retain_{m}") is not None
    }
    worst = None if any(_num(d) is None for d in drops.values()) or not drops else max(drops.values())
    out = {
        f"{VAL}retain_probability": scores["retain_probability"],
        f"{VAL}retain_rouge": scores["retain_rouge"],
        **{f"{VAL}{m}_drop": d for m, d in drops.items()},
        f"{VAL}utility_drop": worst,
        f"{VAL}ks_stat": scores["ks_stat"],
        f"{VAL}ks_p": scores["ks_p"],
        f"{VAL}forget_minus_holdout": scores["forget_minus_holdout_median"],
    }
    return {k: _num(v) for k, v in out.items()}


# ----------------------------------------------------------------------------- models


def validation_scores(ws: Workspace, model: str | Path, label: str, data, fmt) -> dict[str, Any]:
    """select_alpha.score_model of one model on the validation sets; cached in OUT/evals/."""
    from mox_unlearn.evaluate.run import load_eval_model
    from mox_unlearn.io.atomic import write_text_atomic
    from mox_unlearn.select_alpha import MIN_K, ScoreSettings, _json_safe, score_model

    c = ws.cfg
    items = [[r["question"] for r in rs.records] for rs in (data.forget, data.holdout, data.retain)]
    shape = [
        VALIDATION_VERSION,
        str(model),
        items,
        c.frontier_score,
        MIN_K,
        dataclasses.asdict(fmt),
        c.eval_max_new_tokens,
        c.eval_batch_size,
        c.max_length,
    ]
    path = ws.root / "evals" / f"validation-{label}-{_key(shape)}.json"
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
    scores = _json_safe(score_model(loaded, tok, data, settings))
    write_text_atomic(path, json.dumps(scores) + "\n")
    return scores


def knob_models(ws: Workspace, run: Path, u: Any) -> list[tuple[str, float | int, Path]]:
    """(knob, value, model folder) of one run: α ∈ cfg.alphas for methods that extrapolate (with momentum,
    the momentum fold at that α), the epoch at which training stops for every other method."""
    from mox_unlearn.methods import get_method

    if not get_method(u.method).extrapolate:
        return [("epoch", k, p) for k, p in stopping_epochs(epoch_snapshots(run), ws.cfg.frontier_epochs, run)]
    alphas = sorted(float(a) for a in ws.cfg.alphas)
    if u.momentum:
        snaps = [p for _, p in epoch_snapshots(run)]
        return [("alpha", a, ws.momentum_fold(u.model, snaps, a, u.eta)) for a in alphas]
    return [("alpha", a, m) for a, m in zip(alphas, ws.extrapolated(u.model, run / "memorized", alphas))]


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
        for knob, value, model in knob_models(ws, run, u):
            tag = f"{name}-lr{lr:g}-s{seed}-{knob}{value:g}"
            result = ws.evaluate(model, f"frontier-{tag}")
            fq = result["summary"].get("forget_quality")
            records.append(
                {
                    "id": f"{name}/{label}/seed {seed}/{knob} {value:g}",
                    "method": name,
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
    target_mu = target["summary"]["model_utility"]
    selected = select_all(
        records, target_mu, mu_ratio=cfg.frontier_mu_ratio, tolerance=cfg.select_tolerance, p_min=cfg.select_p_min
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
    return _write(ws, summary, extra_json, show)


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
        f"{extra['seconds']:.0f} s."
    )


def _write(ws: Workspace, summary: list[dict], extra: dict, show: bool = True) -> dict:
    from mox_unlearn.report import write_table
    from mox_unlearn.select_alpha import _json_safe

    out = ws.out("frontier")
    files = write_table(
        display_rows(summary),
        out,
        "frontier",
        title=f"Tuned frontier on {ws.cfg.forget_split}",
        extra=_json_safe(extra),
        note=_note(extra),
    )
    files += [plot_frontier(extra, out / "frontier.png"), plot_seeds(extra, out / "frontier-seeds.png")]
    if show:
        print("\n" + (out / "frontier.md").read_text(), flush=True)
    return {
        "rows": summary,
        "records": extra["records"],
        "selected": extra["selected"],
        "files": [str(f) for f in files],
    }


def plot_frontier(extra: Mapping[str, Any], path: Path) -> Path:
    """FQ (log) against MU: every record, each method's Pareto front, both rules' picks, the MU bar."""
    from mox_unlearn.report import figure, fq_mu_axes, log_value, save_figure

    fig, axes = figure(1, 1, size=(8.5, 6))
    ax = axes[0][0]
    by_id = {r["id"]: r for r in extra["records"]}
    for method in dict.fromkeys(r["method"] for r in extra["records"]):
        pts = [
            (r["model_utility"], log_value(r["forget_quality"]))
            for r in extra["records"]
            if r["method"] == method and r["model_utility"] is not None and r["forget_quality"] is not None
        ]
        if not pts:
            continue
        dots = ax.scatter(*zip(*pts), s=10, alpha=0.35)
        color = tuple(dots.get_facecolor()[0][:3])  # opaque: the dots are faint, the front and picks are not
        front = pareto_front(pts)
        ax.plot(*zip(*front), "-", drawstyle="steps-post", color=color, lw=1.5, label=f"{method} front")
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
        (axes[0][0], "log10_forget_quality", "log10 FQ (↑)"),
        (axes[0][1], "model_utility", "MU (↑)"),
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
