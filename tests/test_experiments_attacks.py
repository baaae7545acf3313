"""`relearn`, `examples` and `overlap` end to end on a miniature demo benchmark, and the overlap carving
of the data generator on its own (fast, no model)."""

from __future__ import annotations

import copy
import json

import pytest
from miniature import mini_settings

from mox_unlearn.config import apply_mapping
from mox_unlearn.data import load_records
from mox_unlearn.demo.profiles import DemoSizes, generate, make_world, overlap_splits, phrasings
from mox_unlearn.errors import MoxError
from mox_unlearn.experiments import ExperimentConfig, Workspace
from mox_unlearn.experiments.attacks import examples, overlap, relearn, relearn_halves

MINI = mini_settings(compare_methods=["ga"], relearn_steps=[2], examples=3)
SIZES = DemoSizes(**MINI["sizes"])
MODELS = ["original", "retrained", "mox-a4", "ga"]


def _config(**changes) -> ExperimentConfig:
    cfg = ExperimentConfig()
    apply_mapping(cfg, {**copy.deepcopy(MINI), **changes})
    return cfg


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("attacks")
    return Workspace(_config(), root / "exp", root / "cache")


def _table(result: dict, name: str) -> list[dict]:
    files = {f.rsplit(".", 1)[1]: f for f in result["files"] if f.rsplit("/", 1)[1].startswith(name)}
    assert sorted(files) == ["csv", "json", "md", "png"]
    for f in files.values():
        with open(f, "rb") as fh:
            assert fh.read(1), f
    return json.loads(open(files["json"]).read())["rows"]


# ----------------------------------------------------------------------------- the carving (no model)


def test_overlap_carving_is_seeded_disjoint_and_sized():
    a, b = overlap_splits(0, SIZES, 10), overlap_splits(0, SIZES, 10)
    assert a == b
    assert overlap_splits(1, SIZES, 10)["forget10"] != a["forget10"]
    base = generate(0, SIZES)
    retain90 = base["retain90"]
    pairs = lambda recs: [(r["question"], r["answer"]) for r in recs]  # noqa: E731
    forget, keep = pairs(a["forget10"]), pairs(a["retain90"])
    assert len(forget) == round(len(retain90) * 0.1) and len(forget) + len(keep) == len(retain90)
    assert not set(forget) & set(keep) and set(forget) | set(keep) == set(pairs(retain90))
    # the evaluation records are the generator's own: the same dicts retain_perturbed samples from
    assert pairs(a["forget10_perturbed"]) == forget
    shared = [r for r in a["forget10_perturbed"] if r["question"] in {q for q, _ in pairs(base["retain_perturbed"])}]
    assert all(r in base["retain_perturbed"] for r in shared)
    for name in ("real_authors_perturbed", "world_facts_perturbed"):
        assert a[name] == base[name]
    carved_questions = {q for q, _ in forget}
    assert a["retain_perturbed"] == [r for r in base["retain_perturbed"] if r["question"] not in carved_questions]
    assert len(a["holdout10"]) == min(len(forget), SIZES.n_holdout * SIZES.n_attributes)
    assert len(overlap_splits(0, SIZES, 5)["forget05"]) == round(len(retain90) * 0.05)


def test_overlap_corpus_drops_every_phrasing_of_a_carved_fact_and_nothing_else():
    splits, base = overlap_splits(2, SIZES, 10), generate(2, SIZES)
    carved = {(r["question"], r["answer"]) for r in splits["forget10"]}
    facts = [f for p in make_world(2, SIZES).profiles for f in p.facts]
    gone = [
        (r["question"], r["answer"])
        for f in facts
        for r in phrasings(f, SIZES.n_train_phrasings)
        if (phrasings(f, 1)[0]["question"], phrasings(f, 1)[0]["answer"]) in carved
    ]
    assert len(gone) == len(carved) * SIZES.n_train_phrasings
    corpus = [(r["question"], r["answer"]) for r in splits["train_retain"]]
    assert not set(gone) & set(corpus)
    target = [(r["question"], r["answer"]) for r in base["train_target"]]
    assert corpus == [pair for pair in target if pair not in gone]


@pytest.mark.parametrize("percent", [0, 100, 2.5, True])
def test_overlap_carving_refuses_bad_percents(percent):
    with pytest.raises(MoxError, match="overlap percent"):
        overlap_splits(0, SIZES, percent)


# ----------------------------------------------------------------------------- the analyses


@pytest.mark.slow
def test_relearn_scores_every_model_at_every_budget_on_the_unseen_half(ws):
    learn, held = relearn_halves(ws)
    forget = load_records(ws.split_spec("forget10")).records
    assert learn == forget[: len(forget) // 2]
    assert not {r["question"] for r in learn} & {r["question"] for r in held}
    assert all("perturbed_answer" in r for r in held)
    rows = _table(relearn(ws), "relearn")
    assert [(r["model"], r["budget"]) for r in rows] == [(m, 2) for m in MODELS]
    for r in rows:
        for m in ("probability", "rouge", "truth_ratio"):
            assert 0.0 <= r[f"{m}_before"] <= 1.0 and 0.0 <= r[f"{m}_after"] <= 1.0
            assert r[f"{m}_recovery"] == pytest.approx(r[f"{m}_after"] - r[f"{m}_before"])
    relearnt = sorted((ws.root / "runs").glob("relearn-*/run.json"))
    assert len(relearnt) == len(MODELS)
    assert "LoRA" in (ws.root / "relearn" / "relearn.md").read_text()


@pytest.mark.slow
def test_examples_show_the_stored_generations(ws):
    rows = _table(examples(ws), "examples")
    assert len(rows) == 3 * (1 + len(MODELS))
    assert [r["model"] for r in rows[: 1 + len(MODELS)]] == ["gold", *MODELS]
    evals = {
        json.loads(p.read_text())["model"]: json.loads(p.read_text())
        for p in (ws.root / "evals").glob("*.json")
        if "forget_rouge" in json.loads(p.read_text()).get("metrics", {})
    }
    models = dict(zip(MODELS, [ws.target, ws.retain, *(str(p / "model") for p in _runs(ws, ("mox", "ga")))]))
    for r in rows:
        if r["model"] == "gold":
            assert r["rouge_l_recall"] is None
            continue
        stored = evals[str(models[r["model"]])]["metrics"]["forget_rouge"]
        assert r["answer"] == stored["generations"][r["example"]]
        assert r["rouge_l_recall"] == stored["per_item"][r["example"]]


def _runs(ws, names):
    return [ws.run_method(n)[0] for n in names]  # cached: returns the existing run folders


@pytest.mark.slow
def test_overlap_unlearns_carved_facts_against_a_gold_model_without_them(ws):
    rows = _table(overlap(ws), "overlap")
    assert [r["model"] for r in rows] == ["original", "retrained", "mox-a4", "ga", "idkpo"]
    by = {r["model"]: r for r in rows}
    assert by["retrained"]["forget_quality"] == 1.0
    assert all(0.0 <= r["forget_quality"] <= 1.0 and 0.0 <= r["model_utility"] <= 1.0 for r in rows)
    data = next((ws.root / "overlap-data").glob("p10-*")) / "data"
    read = lambda name: load_records(str(data / f"{name}.jsonl")).records  # noqa: E731
    forget = {(r["question"], r["answer"]) for r in read("forget10")}
    assert forget and not forget & {(r["question"], r["answer"]) for r in read("retain90")}
    facts = [f for p in make_world(0, SIZES).profiles for f in p.facts]
    carved = [f for f in facts if (phrasings(f, 1)[0]["question"], phrasings(f, 1)[0]["answer"]) in forget]
    corpus = {(r["question"], r["answer"]) for r in read("train_retain")}
    assert len(carved) == len(forget)
    assert not {(r["question"], r["answer"]) for f in carved for r in phrasings(f, SIZES.n_train_phrasings)} & corpus


@pytest.mark.slow
def test_bad_settings_are_one_line_errors(ws, tmp_path):
    cache = ws.root.parent / "cache"
    cases = [
        (relearn, {"relearn_steps": []}, "relearn_steps"),
        (relearn, {"relearn_steps": [0]}, "relearn_steps"),
        (relearn, {"relearn_lr": -1.0}, "relearn_lr"),
        (examples, {"examples": 0}, "examples"),
        (overlap, {"overlap_percent": 7}, "overlap_percent"),
    ]
    for fn, change, match in cases:
        with pytest.raises(MoxError, match=match) as e:
            fn(Workspace(_config(**change), tmp_path / "exp", cache))
        assert "\n" not in str(e.value)
    own = Workspace(_config(target=str(ws.target)), tmp_path / "own", cache)
    with pytest.raises(MoxError, match="retrained without the carved facts"):
        overlap(own)
