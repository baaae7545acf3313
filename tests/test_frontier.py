"""`mox experiment frontier`: the two selection rules, the aggregation and the plan on hand-made values,
and a miniature frontier end to end (2 methods, 2 seeds, seconds per model)."""

from __future__ import annotations

import copy
import json
import math
import random
import re
from pathlib import Path

import pytest
from miniature import mini_settings

from mox_unlearn.cli import main
from mox_unlearn.errors import MoxError
from mox_unlearn.experiments.frontier import merge_frontiers, method_styles, stopping_epochs, unscored
from mox_unlearn.experiments.frontier_rules import (
    ORACLE,
    RETRAIN_FREE,
    flat_grid,
    grid_settings,
    lr_grid,
    mean_std,
    pareto_front,
    select_all,
    select_oracle,
    select_retrain_free,
    summarize,
)


def rec(id_, fq, mu, drop, p, *, method="m", seed=0, **more):
    """A record as the frontier writes it: test metrics, validation (`val_*`) statistics, identity."""
    return {
        "id": id_,
        "method": method,
        "seed": seed,
        "setting": f"lr {id_}",
        "knob": "epoch",
        "value": 1,
        "forget_quality": fq,
        "model_utility": mu,
        "log10_forget_quality": None if fq is None else math.log10(fq),
        "forget_rouge": 0.5,
        "retain_rouge": 0.8,
        "val_utility_drop": drop,
        "val_ks_p": p,
        **more,
    }


# ----------------------------------------------------------------------------- oracle


def test_oracle_picks_the_highest_fq_above_the_mu_bar():
    records = [
        rec("a", 0.9, 0.50, 0, 0),
        rec("b", 0.3, 0.80, 0, 0),
        rec("c", 0.6, 0.76, 0, 0),
        rec("d", 0.6, 0.95, 0, 0),
    ]
    pick = select_oracle(records, target_mu=0.8, ratio=0.95)  # bar 0.76: a is below it, c sits on it
    assert pick["id"] == "d" and pick["qualified"] and pick["mu_bar"] == pytest.approx(0.76)  # FQ tie -> higher MU
    assert select_oracle(records[:3], target_mu=0.8)["id"] == "c"  # the boundary MU = bar qualifies


def test_oracle_says_when_nothing_qualifies_and_takes_the_best_mu():
    records = [rec("a", 0.9, 0.2, 0, 0), rec("b", 0.01, 0.5, 0, 0), rec("c", 0.5, None, 0, 0)]
    pick = select_oracle(records, target_mu=0.8)
    assert pick["id"] == "b" and pick["qualified"] is False and "no setting keeps MU" in pick["reason"]
    none = select_oracle([rec("a", None, 0.9, 0, 0)], target_mu=0.8)
    assert none["id"] is None and "no retain model" in none["reason"]


# ----------------------------------------------------------------------------- retrain-free


def test_retrain_free_takes_the_most_holdout_like_forget_set_within_the_utility_tolerance():
    records = [
        rec("a", 0.1, 0.8, 0.01, 0.20),
        rec("b", 0.9, 0.8, 0.05, 0.60),
        rec("c", 0.5, 0.8, 0.30, 0.99),
        rec("d", 0.5, 0.8, 0.02, 0.60),
        rec("e", 0.5, 0.8, None, 0.99),
        rec("f", 0.5, 0.8, 0.0, float("nan")),
    ]
    pick = select_retrain_free(records, tolerance=0.05, p_min=0.05)
    # c and e have the highest p but drop too much / unknown utility; b and d tie on p, d dropped less
    assert pick["id"] == "d" and pick["utility_ok"] and pick["forget_indistinguishable"]
    assert select_retrain_free(records[:3], tolerance=0.05)["id"] == "b"  # drop == tolerance passes


def test_retrain_free_breaks_a_saturated_p_by_the_ks_statistic_then_the_median_gap():
    """Completely separated forget and holdout give every candidate the same p; rule v1 then took the least
    changed model. v2 takes the one whose forget scores came closest to the holdout's."""
    saturated = 6.2e-14
    records = [
        rec("untouched", 0.1, 0.8, 0.00, saturated, val_ks_stat=1.0, val_forget_minus_holdout=-11.9),
        rec("closer", 0.1, 0.8, 0.04, saturated, val_ks_stat=1.0, val_forget_minus_holdout=-8.5),
        rec("too far", 0.1, 0.8, 0.20, saturated, val_ks_stat=1.0, val_forget_minus_holdout=-2.0),
        rec("over", 0.1, 0.8, 0.03, saturated, val_ks_stat=1.0, val_forget_minus_holdout=+9.0),
    ]
    assert select_retrain_free(records)["id"] == "closer"  # |−8.5| < |+9.0| < |−11.9|; "too far" drops 20 %
    records.append(rec("smaller D", 0.1, 0.8, 0.05, saturated, val_ks_stat=0.9, val_forget_minus_holdout=-10.0))
    assert select_retrain_free(records)["id"] == "smaller D"  # the statistic before the gap
    records.append(rec("higher p", 0.1, 0.8, 0.05, 1e-3, val_ks_stat=0.95, val_forget_minus_holdout=-10.5))
    assert select_retrain_free(records)["id"] == "higher p"  # p first, wherever it still discriminates


def test_retrain_free_fallbacks_are_flagged():
    low_p = [rec("a", 0.9, 0.8, 0.01, 0.001), rec("b", 0.9, 0.8, 0.02, 0.01)]
    pick = select_retrain_free(low_p, tolerance=0.05, p_min=0.05)
    assert pick["id"] == "b" and pick["utility_ok"] and not pick["forget_indistinguishable"]
    assert "KS p < 0.05" in pick["reason"]
    damaged = [rec("a", 0.9, 0.8, 0.50, 0.9), rec("b", 0.9, 0.8, 0.20, 0.1), rec("c", 0.9, 0.8, None, 1.0)]
    pick = select_retrain_free(damaged, tolerance=0.05)
    assert pick["id"] == "b" and not pick["utility_ok"] and "smallest drop" in pick["reason"]
    with pytest.raises(MoxError):
        select_retrain_free([])


def test_retrain_free_never_reads_the_test_metrics():
    rng = random.Random(0)
    records = [
        rec(f"r{i}", rng.random(), rng.random(), rng.uniform(0, 0.1), rng.random(), seed=i % 2) for i in range(12)
    ]
    base = select_retrain_free(records)["id"]
    for _ in range(20):
        shuffled = copy.deepcopy(records)
        fqs = [r["forget_quality"] for r in shuffled]
        rng.shuffle(fqs)
        for r, fq in zip(shuffled, fqs):
            r["forget_quality"], r["model_utility"], r["log10_forget_quality"] = fq, rng.random(), rng.random()
        assert select_retrain_free(shuffled)["id"] == base
    stripped = [{k: v for k, v in r.items() if k.startswith("val_") or k == "id"} for r in records]
    assert select_retrain_free(stripped)["id"] == base
    poisoned = [{**r, "forget_quality": float("nan"), "model_utility": "not a number"} for r in records]
    assert select_retrain_free(poisoned)["id"] == base


def test_both_rules_per_method_and_seed_and_mean_std_over_seeds():
    records = [
        rec("m0a", 0.2, 0.9, 0.01, 0.5, seed=0),
        rec("m0b", 0.4, 0.9, 0.10, 0.9, seed=0),
        rec("m1a", 0.6, 0.9, 0.01, 0.5, seed=1),
        rec("m1b", 0.1, 0.2, 0.01, 0.1, seed=1),
        rec("n0", 0.01, 0.1, 0.5, 0.5, method="n", seed=0),
    ]
    sel = select_all(records, target_mu=0.9)
    assert {m: {s: (p[ORACLE]["id"], p[RETRAIN_FREE]["id"]) for s, p in by.items()} for m, by in sel.items()} == {
        "m": {"0": ("m0b", "m0a"), "1": ("m1a", "m1a")},
        "n": {"0": ("n0", "n0")},
    }
    rows = {(r["method"], r["rule"]): r for r in summarize(records, sel)}
    oracle = rows[("m", ORACLE)]
    assert oracle["seeds"] == 2 and oracle["fallbacks"] == 0
    assert oracle["forget_quality_mean"] == pytest.approx(0.5) and oracle["forget_quality_std"] == pytest.approx(
        0.1414213562
    )
    assert oracle["log10_forget_quality_mean"] == pytest.approx((math.log10(0.4) + math.log10(0.6)) / 2)
    assert rows[("m", RETRAIN_FREE)]["forget_quality_mean"] == pytest.approx(0.4)
    assert rows[("m", RETRAIN_FREE)]["picks"] == {"0": "lr m0a, epoch 1", "1": "lr m1a, epoch 1"}
    lone = rows[("n", ORACLE)]
    assert lone["fallbacks"] == 1 and lone["model_utility_std"] is None  # MU 0.1 < 0.95 × 0.9; one seed
    assert rows[("n", RETRAIN_FREE)]["fallbacks"] == 1  # drop 0.5 > tolerance


def test_mean_std_pareto_and_the_plan():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([0.5, None, float("nan")]) == (0.5, None)
    assert mean_std([]) == (None, None)
    assert pareto_front([(0.9, 0.1), (0.5, 0.5), (0.6, 0.2), (0.4, 0.4), (0.2, 0.9), (0.9, 0.05)]) == [
        (0.9, 0.1),
        (0.6, 0.2),
        (0.5, 0.5),
        (0.2, 0.9),
    ]
    assert lr_grid(1e-3, [1 / 3, 1.0, 3.0]) == [0.000333333, 0.001, 0.003]
    assert lr_grid(1e-3, [1.0], [3e-4, 1e-4]) == [1e-4, 3e-4]
    assert grid_settings({}) == [{}]
    assert flat_grid({"loss": {"beta": [1, 2]}, "epochs": [3]}) == {"loss.beta": [1, 2], "epochs": [3]}
    assert grid_settings({"loss.gamma": [1], "loss": {"beta": [0.1, 0.2]}}) == [
        {"loss.beta": 0.1, "loss.gamma": 1},
        {"loss.beta": 0.2, "loss.gamma": 1},
    ]
    pool = [{"question": q, "answer": "x"} for q in "abcd"]
    assert unscored(pool, [{"question": "b"}, {"question": "z"}]) == [pool[0], pool[2], pool[3]]


def test_every_row_of_a_frontier_plot_has_its_own_color_and_variants_are_dashed():
    """SmolLM2's variant frontier has 12 rows: matplotlib's default cycle of 10 gave two pairs one color."""
    methods = ["mox", "npo", "graddiff", "simnpo", "ga"] + [f"mox+v{i}" for i in range(7)]
    styles = method_styles(methods)
    assert list(styles) == methods
    assert len({color for color, _ in styles.values()}) == 12
    assert [ls for _, ls in styles.values()] == ["-"] * 5 + ["--"] * 7
    from matplotlib.colors import to_rgb

    assert method_styles(["mox", "npo"]) == {"mox": (to_rgb("tab:blue"), "-"), "npo": (to_rgb("tab:orange"), "-")}


@pytest.mark.parametrize(
    "setting,message",
    [
        ("frontier_methods=[mox, nope]", "frontier_methods: unknown method 'nope'"),
        ("frontier_seeds=[0, 0]", "frontier_seeds must be"),
        ("frontier_lr_scales=[1, -1]", "frontier_lr_scales: -1"),
        ("frontier_mu_ratio=1.5", "frontier_mu_ratio must be in (0, 1]"),
        ("frontier_grids={kl: {loss.beta: [1]}}", "frontier_grids: 'kl' is not in frontier_methods"),
        ("frontier_grids={npo: {bogus: [1]}}", "unknown config key 'bogus'"),
        ("frontier_score=rouge", "frontier_score: unknown score 'rouge'"),
        ("frontier_epochs=[0, 2]", "frontier_epochs must be a list of distinct epochs >= 1"),
        ("frontier_variants=[{keep_fraction: 0.2}, {keep_fraction: 0.2, seed: 3}]", "is a duplicate of [0]"),
        ("frontier_variants=[{only: mlp}, {only: ^mlp}]", "[1] would share the row name mox+only_mlp with [0]"),
    ],
)
def test_bad_frontier_settings_are_refused_before_any_work(tmp_path, capsys, setting, message):
    assert (
        main(
            ["experiment", "frontier", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), setting]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "split,limit,holdout_free", [("forget01", None, 360), ("forget05", 40, 360), ("forget10", None, 0)]
)
def test_validation_items_on_tofu_are_never_the_scored_ones(
    data_dir, tiny_model_dir, tmp_path, split, limit, holdout_free
):
    """TOFU: retain items outside retain_perturbed, holdout items outside the forget split's holdout (and
    outside the first eval_limit items); forget10's holdout is the whole holdout10, flagged as overlapping."""
    from mox_unlearn.experiments import ExperimentConfig, Workspace
    from mox_unlearn.experiments.frontier import validation_sets

    cfg = ExperimentConfig(
        target=str(tiny_model_dir), data=str(data_dir / "tofu"), forget_split=split, eval_limit=limit
    )
    ws = Workspace(cfg, tmp_path / "out", tmp_path / "cache")
    data, info = validation_sets(ws, ws.unlearn_config("mox").retain)
    read = lambda name: [json.loads(line)["question"] for line in (data_dir / "tofu" / f"{name}.jsonl").open()]  # noqa: E731
    scored_retain = set(read("retain_perturbed")[:limit])
    scored_holdout = set(read(split.replace("forget", "holdout"))[:limit])
    assert len(data.retain) == 100 and not {r["question"] for r in data.retain.records} & scored_retain
    assert info["retain"]["overlaps_test"] is False
    assert len(data.forget) == len(read(split))
    if holdout_free:
        assert len(data.holdout) == 100 and not {r["question"] for r in data.holdout.records} & scored_holdout
        assert info["holdout"]["overlaps_test"] is False
    else:
        assert info["holdout"]["overlaps_test"] is True and info["holdout"]["pool"] == 400
    assert not (tmp_path / "out").exists()  # reading the data writes nothing


# ----------------------------------------------------------------------------- a miniature frontier


MINI = mini_settings(
    frontier_methods=["mox", "ga"], frontier_seeds=[0, 1], frontier_lr_scales=[1.0], frontier_max_items=8
)


@pytest.mark.slow
def test_miniature_frontier_end_to_end(tmp_path, capsys):
    args = [
        "experiment",
        "frontier",
        "--out",
        str(tmp_path / "out"),
        "--cache-dir",
        str(tmp_path / "cache"),
        *[f"{k}={json.dumps(v)}" for k, v in MINI.items()],
    ]
    assert main(args) == 0
    out = tmp_path / "out" / "frontier"
    for name in ("frontier.json", "frontier.csv", "frontier.md", "frontier.png", "frontier-seeds.png"):
        assert (out / name).stat().st_size > 0, name
    result = json.loads((out / "frontier.json").read_text())
    records = result["records"]
    # one record per method × lr × seed × knob value: MOX over α = [1, 4], GA over its 2 epochs
    assert sorted((r["method"], r["seed"], r["knob"], r["value"]) for r in records) == sorted(
        [("mox", s, "alpha", a) for s in (0, 1) for a in (1.0, 4.0)]
        + [("ga", s, "epoch", e) for s in (0, 1) for e in (1, 2)]
    )
    ids = {r["id"] for r in records}
    for r in records:
        assert r["forget_quality"] is not None and r["model_utility"] is not None and r["val_ks_p"] is not None
    for method in ("mox", "ga"):
        for seed in ("0", "1"):
            for rule in (ORACLE, RETRAIN_FREE):
                assert result["selected"][method][seed][rule]["id"] in ids
    assert {(r["method"], r["rule"], r["seeds"]) for r in result["summary"]} == {
        (m, rule, 2) for m in ("mox", "ga") for rule in (ORACLE, RETRAIN_FREE)
    }
    # validation: retain items the evaluation does not score; the miniature's holdout is all scored (flagged)
    val = result["validation"]
    assert val["retain"]["overlaps_test"] is False and val["retain"]["items"] == 8
    assert val["holdout"]["overlaps_test"] is True
    md = (out / "frontier.md").read_text()
    assert "| mox | oracle | 2 |" in md and "overlaps_test" in md
    # cached and resumable: a second call trains and evaluates nothing new
    runs, evals = sorted((tmp_path / "out" / "runs").iterdir()), sorted((tmp_path / "out" / "evals").iterdir())
    capsys.readouterr()
    assert main(args) == 0
    assert "training" not in capsys.readouterr().out
    assert (
        sorted((tmp_path / "out" / "runs").iterdir()) == runs
        and sorted((tmp_path / "out" / "evals").iterdir()) == evals
    )
    assert main(["experiment", "list"]) == 0
    assert "frontier" in capsys.readouterr().out
    # run as shards, one seed per invocation (cached: nothing trained), merged by `mox report`: the same picks
    for seed in (0, 1):
        assert main([*args, f"frontier_seeds=[{seed}]"]) == 0
        (out / "frontier.json").rename(tmp_path / f"seed{seed}.json")
    shards = [str(tmp_path / f"seed{seed}.json") for seed in (1, 0)]
    assert main(["report", *shards, "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "frontier.json").read_text())
    assert merged["config"]["frontier_seeds"] == [0, 1]
    for method in ("mox", "ga"):
        assert {s: merged["selected"][method][s] for s in ("0", "1")} == result["selected"][method]
    assert sorted(json.dumps(r, sort_keys=True) for r in merged["summary"]) == sorted(
        json.dumps(r, sort_keys=True) for r in result["summary"]
    )
    # fewer stopping epochs: the same cached runs, only epoch 2 of GA is a candidate
    assert main([*args, "frontier_epochs=[2]"]) == 0
    ga = [r for r in json.loads((out / "frontier.json").read_text())["records"] if r["method"] == "ga"]
    assert sorted((r["seed"], r["value"]) for r in ga) == [(0, 2), (1, 2)]
    assert main([*args, "frontier_epochs=[3]"]) == 2
    assert "has no epoch 3 (it has 1, 2)" in capsys.readouterr().err


def shard(records, seeds, methods=("m",), **config):
    """A frontier.json as a shard of one frontier writes it (hand-made)."""
    source = config.pop("source", "/a/workspace/tofu/retain.jsonl")
    cfg = {
        "forget_split": "forget01",
        "frontier_mu_ratio": 0.95,
        "select_tolerance": 0.05,
        "select_p_min": 0.05,
        "alphas": [2.0, 4.0],
        "frontier_seeds": list(seeds),
        "frontier_methods": list(methods),
        "frontier_variants": [],
        "base": "/somewhere/model",
        **config,
    }
    reference = [
        {"model": "original", "model_utility": 0.9, "forget_quality": 1e-5},
        {"model": "retrained", "model_utility": 0.88, "forget_quality": 1.0},
    ]
    validation = {
        "retain": {"items": 4, "source": source},
        "holdout": {"items": 4},
        "score": "min_k",
        "reference": {"val_utility": 0.5},
    }
    return {
        "records": records,
        "selected": {},
        "reference": reference,
        "validation": validation,
        "target_mu": 0.9,
        "seconds": 10.0,
        "config": cfg,
    }


def test_shards_of_a_frontier_merge_into_the_frontier_of_their_union():
    s0 = [rec("m0a", 0.2, 0.9, 0.01, 0.5, seed=0), rec("m0b", 0.4, 0.9, 0.10, 0.9, seed=0)]
    s1 = [rec("m1a", 0.6, 0.9, 0.01, 0.5, seed=1), rec("m1b", 0.1, 0.2, 0.01, 0.1, seed=1)]
    n0 = [rec("n0", 0.01, 0.1, 0.5, 0.5, method="n", seed=0)]
    again = [{**s0[0], "run": "/other/machine/run"}]  # the same record, run elsewhere: kept once
    merged = merge_frontiers(
        [
            ("a", shard(s0 + n0, [0], ["m", "n"])),
            ("b", shard(s1 + again, [1], base="/elsewhere/model", source="/elsewhere/tofu/retain.jsonl")),
        ]
    )
    assert [r["id"] for r in merged["records"]] == ["m0a", "m0b", "n0", "m1a", "m1b"]
    assert merged["selected"] == select_all(s0 + n0 + s1, target_mu=0.9)
    assert merged["summary"] == summarize(s0 + n0 + s1, merged["selected"])
    assert merged["config"]["frontier_seeds"] == [0, 1] and merged["config"]["frontier_methods"] == ["m", "n"]
    assert merged["seconds"] == 20.0 and merged["mu_bar"] == pytest.approx(0.855)
    assert [(p["file"], p["records"]) for p in merged["merged_from"]] == [("a", 3), ("b", 3)]


def test_pooled_variant_rows_are_made_again_from_the_merged_records():
    def mox(id_, seed, variant):
        method = f"mox+{variant}" if variant else "mox"
        return rec(id_, 0.1, 0.9, 0.01, 0.5, method=method, seed=seed, knob="alpha", variant=variant, setting="lr 1")

    def pooled(r):
        return {**r, "method": "mox+variants", "id": f"mox+variants/{r['id']}"}

    a = [mox("p0", 0, ""), mox("k0", 0, "keep0.5")]
    b = [mox("p1", 1, ""), mox("k1", 1, "keep0.5")]
    v = [{"keep_fraction": 0.5}]
    merged = merge_frontiers(
        [("a", shard(a + [pooled(r) for r in a], [0], frontier_variants=v)), ("b", shard(b, [1], frontier_variants=v))]
    )
    ids = [r["id"] for r in merged["records"]]
    assert ids == ["p0", "k0", "p1", "k1", "mox+variants/p0", "mox+variants/k0", "mox+variants/p1", "mox+variants/k1"]
    assert set(merged["selected"]["mox+variants"]) == {"0", "1"}
    assert merged["config"]["frontier_variants"] == v


def test_the_pooled_row_pools_only_runs_that_have_every_variant():
    """A seed whose shard had no variants chose among plain MOX only: pooling it would give the pooled row a
    seed that did not choose among the variants (shards run before the variant shards, say)."""

    def mox(id_, seed, variant):
        method = f"mox+{variant}" if variant else "mox"
        return rec(id_, 0.1, 0.9, 0.01, 0.5, method=method, seed=seed, knob="alpha", variant=variant, setting="lr 1")

    v = [{"keep_fraction": 0.5}]
    a = shard([mox("p0", 0, ""), mox("k0", 0, "keep0.5")], [0], frontier_variants=v)
    merged = merge_frontiers([("a", a), ("b", shard([mox("p1", 1, "")], [1]))])
    pooled = [r["id"] for r in merged["records"] if r["method"] == "mox+variants"]
    assert pooled == ["mox+variants/p0", "mox+variants/k0"]
    assert set(merged["selected"]["mox+variants"]) == {"0"} and set(merged["selected"]["mox"]) == {"0", "1"}


def test_shards_whose_variants_would_share_a_row_name_are_refused():
    """{only: mlp.up} and {only: mlp_up} are both row mox+only_mlpup: merged, one row would hold two
    variants. A single invocation refuses the same list; so does the merge."""
    a = shard([rec("m0a", 0.2, 0.9, 0.01, 0.5)], [0], frontier_variants=[{"only": "mlp.up"}])
    b = shard([rec("m1a", 0.6, 0.9, 0.01, 0.5, seed=1)], [1], frontier_variants=[{"only": "mlp_up"}])
    with pytest.raises(MoxError, match=r"shards' frontier_variants.*share the row name mox\+only_mlpup"):
        merge_frontiers([("a", a), ("b", b)])
    same = shard([rec("m1a", 0.6, 0.9, 0.01, 0.5, seed=1)], [1], frontier_variants=[{"only": "mlp.up", "seed": 0}])
    merged = merge_frontiers([("a", a), ("b", same)])  # the same variant spelled two ways: one
    assert merged["config"]["frontier_variants"] == [{"only": "mlp.up"}]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p.update(reference=[{"model": "original", "model_utility": 0.7}]), "target and retain evaluations"),
        (lambda p: p.update(target_mu=0.8), "target MU"),
        (lambda p: p["validation"]["reference"].update(val_utility=0.4), "validation items or θ_ref scores"),
        (lambda p: p["config"].update(frontier_mu_ratio=0.9), "setting frontier_mu_ratio is 0.9, 0.95 in a"),
        (lambda p: p["config"].update(alphas=[2.0]), "setting alphas"),
        (lambda p: p["records"][0].update(forget_quality=0.3), "record 'm0a' differs"),
        (lambda p: p.pop("records"), "b: not a frontier.json"),
    ],
)
def test_shards_that_are_not_of_one_frontier_are_refused(change, message):
    first = shard([rec("m0a", 0.2, 0.9, 0.01, 0.5)], [0])
    second = shard([rec("m0a", 0.2, 0.9, 0.01, 0.5), rec("m1a", 0.6, 0.9, 0.01, 0.5, seed=1)], [0, 1])
    change(second)
    with pytest.raises(MoxError, match=re.escape(message)):
        merge_frontiers([("a", first), ("b", second)])


def test_mox_report_merges_frontier_files_and_refuses_to_mix_them(tmp_path, capsys):
    a, b, other = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "eval.json"
    a.write_text(json.dumps(shard([rec("m0a", 0.2, 0.9, 0.01, 0.5, seed=0)], [0])))
    b.write_text(json.dumps(shard([rec("m1a", 0.6, 0.9, 0.01, 0.5, seed=1)], [1])))
    other.write_text(json.dumps({"rows": []}))
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "merged")]) == 0
    result = json.loads((tmp_path / "merged" / "frontier.json").read_text())
    assert {r["id"] for r in result["records"]} == {"m0a", "m1a"} and set(result["selected"]["m"]) == {"0", "1"}
    md = (tmp_path / "merged" / "frontier.md").read_text()
    assert "| m | oracle | 2 |" in md and "merged from 2 frontier.json files" in md
    assert (tmp_path / "merged" / "frontier.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["report", str(a), str(other), "--out", str(tmp_path / "mixed")]) == 2
    assert "frontier.json files are merged with each other only" in capsys.readouterr().err
    assert main(["report", str(a), str(tmp_path / "missing.json"), "--out", str(tmp_path / "mixed")]) == 2
    assert "a.json: a frontier.json, which `mox report` merges only with other" in capsys.readouterr().err
    assert not (tmp_path / "mixed").exists()
    assert main(["report", str(a), "--card", str(tmp_path)]) == 2
    inside = tmp_path / "merged" / "frontier.json"  # merging a frontier into its own folder would overwrite it
    before = inside.read_bytes()
    assert main(["report", str(inside), str(b), "--out", str(tmp_path / "merged")]) == 2
    assert "choose another --out" in capsys.readouterr().err and inside.read_bytes() == before


def test_a_frontier_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """The table, its json and csv and both plots appear together: a plot that fails leaves the frontier
    written before as it was (and no folder where there was none)."""
    from mox_unlearn.experiments import frontier as F

    extra = merge_frontiers([("a", shard([rec("m0a", 0.2, 0.9, 0.01, 0.5)], [0]))])
    F.write_frontier(tmp_path / "out", extra, show=False)
    names = ["frontier-seeds.png", "frontier.csv", "frontier.json", "frontier.md", "frontier.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}

    def broken(*args):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(F, "plot_seeds", broken)
    extra["records"][0]["forget_quality"] = 0.7
    for out in (tmp_path / "out", tmp_path / "new"):
        with pytest.raises(RuntimeError, match="plot failed"):
            F.write_frontier(out, extra, show=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert not (tmp_path / "new").exists()


def test_an_analysis_table_and_its_plot_are_written_together(tmp_path):
    from types import SimpleNamespace

    from mox_unlearn.experiments import ExperimentConfig
    from mox_unlearn.experiments.training import finish

    ws = SimpleNamespace(cfg=ExperimentConfig(), root=tmp_path)

    def broken(rows, path):
        path.write_bytes(b"half a plot")
        raise RuntimeError("plot failed")

    with pytest.raises(RuntimeError, match="plot failed"):
        finish(ws, "sweep", [{"model": "a", "forget_quality": 0.5}], "t", broken)
    assert not (tmp_path / "sweep").exists()

    def plot(rows, path):
        path.write_bytes(b"png")
        return path

    result = finish(ws, "sweep", [{"model": "a", "forget_quality": 0.5}], "t", plot)
    assert sorted(Path(f).name for f in result["files"]) == ["sweep.csv", "sweep.json", "sweep.md", "sweep.png"]
    assert all(Path(f).parent == tmp_path / "sweep" and Path(f).is_file() for f in result["files"])


def test_stopping_epochs_keeps_the_wanted_ones_or_refuses():
    snaps = [(1, "e1"), (2, "e2"), (3, "e3")]
    assert stopping_epochs(snaps, []) == snaps
    assert stopping_epochs(snaps, [3, 1]) == [(1, "e1"), (3, "e3")]
    with pytest.raises(MoxError, match="run-x has no epoch 5 \\(it has 1, 2, 3\\)"):
        stopping_epochs(snaps, [1, 5], "run-x")


def test_experiment_help_lists_frontier(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["experiment", "frontier", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "frontier" in out and "retrain-free" in out and "mox experiment frontier --out" in out
    assert main(["experiment", "list"]) == 0
    assert "frontier" in capsys.readouterr().out


@pytest.mark.slow
def test_frontier_variants_are_rows_of_their_own_and_one_pooled_knob(tmp_path):
    """frontier_variants (issue 17): MOX's one training run per seed also yields a row per variant and a
    "mox+variants" row whose rules choose over every variant × α; GA, which does not extrapolate, is untouched."""
    settings = {**MINI, "frontier_variants": [{"keep_fraction": 0.5}, {"only": "mlp"}]}
    args = ["experiment", "frontier", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    assert main([*args, *[f"{k}={json.dumps(v)}" for k, v in settings.items()]]) == 0
    result = json.loads((tmp_path / "out" / "frontier" / "frontier.json").read_text())
    by_method: dict[str, list] = {}
    for r in result["records"]:
        by_method.setdefault(r["method"], []).append(r)
    assert sorted(by_method) == ["ga", "mox", "mox+keep0.5", "mox+only_mlp", "mox+variants"]
    assert len(by_method["mox+keep0.5"]) == len(by_method["mox"]) == 4  # 2 seeds × α [1, 4]
    assert len(by_method["mox+variants"]) == 12 and len(by_method["ga"]) == 4
    assert {r["variant"] for r in by_method["mox+variants"]} == {"", "keep0.5", "only_mlp"}
    # one θ_mem per seed: every variant's model comes from the plain rows' run
    assert {r["run"] for r in by_method["mox+only_mlp"]} == {r["run"] for r in by_method["mox"]}
    pooled, bar = result["selected"]["mox+variants"], result["mu_bar"]
    for seed in (0, 1):
        members = [r for m in ("mox", "mox+keep0.5", "mox+only_mlp") for r in by_method[m] if r["seed"] == seed]
        pick = next(r for r in by_method["mox+variants"] if r["id"] == pooled[str(seed)][ORACLE]["id"])
        assert pick["model"] in {r["model"] for r in members}
        qualifying = [r["forget_quality"] for r in members if r["model_utility"] >= bar]
        if qualifying:  # the pooled oracle is the best of the union at the bar
            assert pick["forget_quality"] == max(qualifying)
        shown = next(r for r in result["summary"] if r["method"] == "mox+variants" and r["rule"] == ORACLE)
        text = shown["picks"][str(seed)]
        assert text.endswith(f" [{pick['variant']}]") if pick["variant"] else "[" not in text, text
