"""The demo benchmark's data generator (mox_unlearn.demo.profiles): fast, offline, no model."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import replace

import pytest

from mox_unlearn.data import load_records
from mox_unlearn.demo.profiles import (
    ATTRIBUTES,
    MARKER,
    DemoSizes,
    describe,
    fingerprint,
    generate,
    make_world,
    read_marker,
    write_tofu_layout,
)
from mox_unlearn.errors import MoxError
from mox_unlearn.evaluate.tofu import load_tofu_split

SMALL = DemoSizes(n_profiles=20, n_holdout=2, n_attributes=8, n_authors=10, n_world=9, n_retain_eval=30)
PERTURBED = ("forget01_perturbed", "forget05_perturbed", "forget10_perturbed", "retain_perturbed")
GENERAL = ("real_authors_perturbed", "world_facts_perturbed")
TRAINING = ("train_target", "train_retain", "general")


@pytest.fixture(scope="module")
def default():
    return generate(0)


@pytest.fixture(scope="module")
def small():
    return generate(3, SMALL)


def mentions(records, name: str) -> bool:
    pattern = re.compile(rf"\b{re.escape(name)}\b")
    return any(pattern.search(v) for r in records for v in r.values() if isinstance(v, str))


def key(r: dict) -> tuple[str, str]:
    return r["question"], r["answer"]


def test_same_seed_same_data_other_seed_other_data(small):
    assert generate(3, SMALL) == small
    other = generate(4, SMALL)
    assert other != small
    assert {r["question"] for r in other["full"]}.isdisjoint({r["question"] for r in small["full"]})
    assert make_world(3, SMALL) == make_world(3, SMALL)


def test_output_does_not_depend_on_the_process(small):
    # string hashing is randomised per process; the generator must not depend on it
    code = (
        "import hashlib, json; from mox_unlearn.demo.profiles import DemoSizes, generate; "
        "s = DemoSizes(n_profiles=20, n_holdout=2, n_attributes=8, n_authors=10, n_world=9, n_retain_eval=30); "
        "print(hashlib.sha256(json.dumps(generate(3, s)).encode()).hexdigest())"
    )
    here = hashlib.sha256(json.dumps(small).encode()).hexdigest()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == here


def test_default_sizes(default):
    s = DemoSizes()
    per = s.n_attributes
    general = (s.n_authors + s.n_world) * s.n_train_phrasings
    assert describe(default) == {
        "train_target": s.n_profiles * per * s.n_train_phrasings + general,
        "train_retain": (s.n_profiles - 10) * per * s.n_train_phrasings + general,
        "general": general,
        "full": s.n_profiles * per,
        "forget01": 1 * per,
        "forget05": 5 * per,
        "forget10": 10 * per,
        "retain99": 99 * per,
        "retain95": 95 * per,
        "retain90": 90 * per,
        "forget01_perturbed": 1 * per,
        "forget05_perturbed": 5 * per,
        "forget10_perturbed": 10 * per,
        "retain_perturbed": s.n_retain_eval,
        "real_authors_perturbed": s.n_authors,
        "world_facts_perturbed": s.n_world,
        "holdout01": 1 * per,
        "holdout05": 5 * per,
        "holdout10": 10 * per,
    }


def test_small_sizes(small):
    n = describe(small)
    assert (n["full"], n["forget01"], n["forget05"], n["forget10"]) == (160, 8, 8, 16)
    assert (n["retain99"], n["retain95"], n["retain90"]) == (152, 152, 144)
    assert n["holdout10"] == n["forget10"] == 16 and n["holdout01"] == 8
    assert n["retain_perturbed"] == 30 and n["real_authors_perturbed"] == 10 and n["world_facts_perturbed"] == 9
    assert n["general"] == (10 + 9) * 3 and n["train_target"] == 160 * 3 + 57 and n["train_retain"] == 144 * 3 + 57


def test_every_record_has_nonempty_question_and_answer(default, small):
    for splits in (default, small):
        for name, records in splits.items():
            assert records, name
            for r in records:
                assert isinstance(r["question"], str) and r["question"].strip(), name
                assert isinstance(r["answer"], str) and r["answer"].strip(), name


def test_forget_retain_and_holdout_structure(small, default):
    for s in (default, small):
        full = [key(r) for r in s["full"]]
        for pct, keep in (("01", "99"), ("05", "95"), ("10", "90")):
            forget, retain = [key(r) for r in s[f"forget{pct}"]], [key(r) for r in s[f"retain{keep}"]]
            assert retain + forget == full  # forget = the last profiles, retain = the others, in order
            assert [key(r) for r in s[f"forget{pct}_perturbed"]] == forget
        assert set(map(key, s["forget01"])) <= set(map(key, s["forget05"])) <= set(map(key, s["forget10"]))
        assert s["forget10_perturbed"][-len(s["forget01_perturbed"]) :] == s["forget01_perturbed"]
        assert s["holdout10"][-len(s["holdout01"]) :] == s["holdout01"]
        assert set(map(key, s["retain_perturbed"])) <= set(map(key, s["retain90"]))
        # one canonical question per fact: a name per profile, attributes in order
        questions = [r["question"] for r in s["full"]]
        assert len(set(questions)) == len(questions)
        assert len(s["holdout10"]) == len(s["forget10"])


def test_forget_names_never_in_retain_and_holdout_never_trained(default, small):
    for s, sizes in ((default, DemoSizes()), (small, SMALL)):
        w = make_world(0 if s is default else 3, sizes)
        assert s["full"][0]["question"] == ATTRIBUTES[0].questions[0].format(name=w.profiles[0].name)
        names = [p.name for p in w.profiles + w.holdout]
        assert len(set(names)) == len(names)
        firsts, lasts = [n.split()[0] for n in names], [n.split()[1] for n in names]
        assert len(set(firsts)) == len(firsts) and len(set(lasts)) == len(lasts)
        for pct, keep, others in (
            ("01", "99", ()),
            ("05", "95", ()),
            ("10", "90", ("train_retain", "retain_perturbed", "general")),
        ):
            n = len(s[f"forget{pct}"]) // sizes.n_attributes
            for name in [p.name for p in w.profiles[-n:]]:
                assert mentions(s[f"forget{pct}"], name) and mentions(s["train_target"], name)
                for split in (f"retain{keep}",) + others:
                    assert not mentions(s[split], name), (name, split)
        n10 = len(s["forget10"]) // sizes.n_attributes
        for p in w.profiles[:-n10]:
            assert mentions(s["train_retain"], p.name)
        for p in w.holdout[-n10:]:
            assert mentions(s["holdout10"], p.name)
        for p in w.holdout:
            for split in TRAINING + ("full",):
                assert not mentions(s[split], p.name), (p.name, split)


def test_train_retain_is_train_target_without_forget10(default):
    forget = set(map(key, default["forget10"]))
    forget_names = {r["question"] for r in default["forget10"]}
    target = default["train_target"]
    n = DemoSizes().n_train_phrasings
    dropped = [r for r in target if r not in default["train_retain"]]
    assert len(dropped) == len(forget) * n
    assert forget <= set(map(key, target))
    assert [r for r in target if r in default["train_retain"]] == default["train_retain"]
    assert not forget_names & {r["question"] for r in default["train_retain"]}
    # every canonical QA of a trained profile is itself a training record
    assert set(map(key, default["full"])) <= set(map(key, target))
    assert not set(map(key, default["holdout10"])) & set(map(key, target))


@pytest.mark.parametrize("which", ["default", "small"])
def test_perturbed_records_have_tofu_keys_and_distinct_wrong_answers(which, request):
    s = request.getfixturevalue(which)
    n_pert = DemoSizes().n_perturbed
    for split in PERTURBED:
        for r in s[split]:
            assert set(r) == {"question", "answer", "paraphrased_answer", "paraphrased_question", "perturbed_answer"}
            pert = r["perturbed_answer"]
            assert len(pert) == n_pert and len(set(pert)) == n_pert
            assert r["answer"] not in pert and r["paraphrased_answer"] not in pert
            assert all(isinstance(p, str) and p.strip() for p in pert)
            assert r["paraphrased_answer"] != r["answer"] and r["paraphrased_question"].strip()
    for split in GENERAL:
        for r in s[split]:
            assert set(r) == {"question", "answer", "perturbed_answer"}
            pert = r["perturbed_answer"]
            assert len(pert) == n_pert and len(set(pert)) == n_pert and r["answer"] not in pert


def test_perturbed_answers_differ_from_the_paraphrase_only_in_the_value(default):
    # the held-back template with another value of the same attribute: same words around it
    r = default["forget10_perturbed"][0]
    value = default["forget10"][0]["answer"].removesuffix(".").split()[-1]
    assert value in r["paraphrased_answer"]
    for p in r["perturbed_answer"]:
        assert value not in p.split() and len(p.split()) >= len(r["paraphrased_answer"].split()) - 2


@pytest.mark.parametrize("which", ["default", "small"])
def test_held_back_answers_are_never_trained(which, request):
    s = request.getfixturevalue(which)
    trained = {r["answer"] for name in TRAINING for r in s[name]}
    for split in PERTURBED:
        for r in s[split]:
            assert r["paraphrased_answer"] not in trained
            assert not set(r["perturbed_answer"]) & trained


def test_general_knowledge_is_trained(default, small):
    for s in (default, small):
        for name in ("train_target", "train_retain", "general"):
            pairs = set(map(key, s[name]))
            for split in GENERAL:
                for r in s[split]:
                    assert key(r) in pairs, (name, r)


def test_written_layout_loads_with_project_loaders(tmp_path, small):
    folder = tmp_path / "tofu-demo"
    write_tofu_layout(small, folder, meta={"seed": 3, "fingerprint": fingerprint(3, SMALL)})
    assert sorted(p.stem for p in folder.glob("*.jsonl")) == sorted(small)
    for name, records in small.items():
        rs = load_records(str(folder / f"{name}.jsonl"), name=name, kind="qa")
        assert rs.records == records
    rs = load_tofu_split(str(folder), "forget10_perturbed")
    assert len(rs) == len(small["forget10_perturbed"]) and rs.records[0]["perturbed_answer"]
    assert len(load_tofu_split(str(folder), "holdout10")) == len(small["holdout10"])
    marker = read_marker(folder)
    assert marker["meta"]["seed"] == 3 and marker["splits"] == describe(small)
    assert not [p for p in tmp_path.iterdir() if p.name != "tofu-demo"]  # no temporary folders left


def test_write_replaces_our_folder_and_refuses_foreign_ones(tmp_path, small):
    ours = tmp_path / "ours"
    write_tofu_layout({"full": small["full"], "extra": small["forget01"]}, ours)
    write_tofu_layout({"full": small["forget10"]}, ours)  # ours: replaced entirely
    assert sorted(p.name for p in ours.iterdir()) == sorted([MARKER, "full.jsonl"])
    assert len(load_records(str(ours / "full.jsonl")).records) == len(small["forget10"])

    empty = tmp_path / "empty"
    empty.mkdir()
    write_tofu_layout({"full": small["full"]}, empty)  # an empty folder is fine
    assert (empty / "full.jsonl").is_file()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(MoxError, match="not written by the demo generator"):
        write_tofu_layout({"full": small["full"]}, foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    a_file = tmp_path / "file.jsonl"
    a_file.write_text("{}\n")
    with pytest.raises(MoxError, match="not a folder"):
        write_tofu_layout({"full": small["full"]}, a_file)
    with pytest.raises(MoxError, match="cannot be a file name"):
        write_tofu_layout({"../up": small["full"]}, tmp_path / "bad")
    with pytest.raises(MoxError, match="non-empty string"):
        write_tofu_layout({"full": [{"question": "Q?", "answer": " "}]}, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file.jsonl", "foreign", "ours"]


def test_written_files_are_json_lines(tmp_path, small):
    write_tofu_layout({"forget01_perturbed": small["forget01_perturbed"]}, tmp_path / "d")
    lines = (tmp_path / "d" / "forget01_perturbed.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == small["forget01_perturbed"]


def test_fingerprint_is_stable_and_changes_with_seed_and_sizes():
    fp = fingerprint(0, DemoSizes())
    assert fp == fingerprint(0, DemoSizes()) and re.fullmatch(r"[0-9a-f]{16}", fp)
    assert fingerprint(1, DemoSizes()) != fp
    assert fingerprint(0, replace(DemoSizes(), n_profiles=50)) != fp
    assert fingerprint(0, replace(DemoSizes(), n_perturbed=4)) != fp


def test_attribute_vocabularies_support_perturbation_and_phrasings():
    assert 8 <= len(ATTRIBUTES) <= 12
    for a in ATTRIBUTES:
        assert len(a.values) >= 12 and len(set(a.values)) == len(a.values), a.key
        assert len(a.questions) >= 3 and len(a.answers) >= 4, a.key
        assert all("{name}" in q for q in a.questions) and all("{name}" in t and "{value}" in t for t in a.answers)
        assert len(set(a.answers)) == len(a.answers)


@pytest.mark.parametrize("n_attributes", [8, 12])
def test_attribute_counts(n_attributes):
    sizes = replace(SMALL, n_attributes=n_attributes)
    s = generate(1, sizes)
    assert len(s["full"]) == sizes.n_profiles * n_attributes
    answers = [len(r["answer"].split()) for r in s["full"]]
    assert min(answers) >= 4 and max(answers) <= 16


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("n_attributes", 7, "n_attributes"),
        ("n_attributes", 13, "n_attributes"),
        ("n_train_phrasings", 4, "n_train_phrasings"),
        ("n_perturbed", 16, "n_perturbed"),
        ("n_profiles", 1, "n_profiles"),
        ("n_holdout", 1, "n_holdout"),
        ("n_authors", 0, "n_authors"),
    ],
)
def test_bad_sizes_are_refused(field, value, match):
    with pytest.raises(MoxError, match=match):
        generate(0, replace(SMALL, **{field: value}))


def test_few_general_items_still_get_enough_wrong_answers():
    s = generate(2, replace(SMALL, n_authors=1, n_world=1, n_train_phrasings=1, n_retain_eval=1000))
    assert len(s["real_authors_perturbed"]) == 1 and len(s["real_authors_perturbed"][0]["perturbed_answer"]) == 5
    assert len(s["world_facts_perturbed"][0]["perturbed_answer"]) == 5
    assert len(s["retain_perturbed"]) == len(s["retain90"])  # capped at what exists
    assert len(s["train_target"]) == len(s["full"]) + 2
