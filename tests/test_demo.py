"""A miniature `mox demo` end to end (seconds), `mox report`, and the demo's model cache."""

from __future__ import annotations

import json
import shutil

import pytest

from mox_unlearn.cli import main

pytestmark = pytest.mark.slow  # trains, spawns processes or runs a miniature pipeline

MINI = [
    "sizes={n_profiles: 10, n_holdout: 1, n_attributes: 8, n_train_phrasings: 2, n_authors: 6, n_world: 6, n_retain_eval: 10}",
    "vocab_size=400",
    "hidden_size=32",
    "num_layers=2",
    "num_heads=2",
    "intermediate_size=64",
    "general_epochs=1",
    "profile_epochs=2",
    "pretrain_lr=1e-3",
    "unlearn={lr: 1e-3, epochs: 2, batch_size: 4, per_device_batch_size: 4}",
    "methods=[mox, ga]",
    "alphas=[1.0, 4.0]",
    "eval_max_new_tokens=8",
    "eval_batch_size=16",
    "tuned_settings={frontier_methods: [mox, ga], frontier_lr_scales: [1.0]}",
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    import contextlib
    import io

    root = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["demo", "--out", str(root / "out"), "--cache-dir", str(root / "cache"), *MINI]) == 0
    (root / "stdout.txt").write_text(printed.getvalue())
    return root


def test_a_cold_demo_says_what_it_pre_trains(demo):
    printed = (demo / "stdout.txt").read_text()
    for stage in ("1/3, general text", "2/3, the target model", "3/3, the retain model"):
        assert f"pre-training {stage}" in printed


def test_miniature_demo_writes_every_output(demo, capsys):
    out = demo / "out"
    for name in ("results.json", "results.csv", "results.md", "fq_mu.png", "alpha_sweep.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    result = json.loads((out / "results.json").read_text())
    names = [r["name"] for r in result["rows"]]
    assert names == ["original", "retrained", "mox-a1", "mox-a4", "ga"]
    assert {r["name"]: r["forget_quality"] for r in result["rows"]}["retrained"] == 1.0
    assert len(result["gates"]) == 3 and all("ok" in g for g in result["gates"])
    assert "| FQ (↑) |" in (out / "results.md").read_text()
    assert "untuned setting" in (out / "results.md").read_text()  # the table says what it is not


def test_miniature_demo_reports_each_method_at_its_picked_setting(demo):
    """The tuned table: each method at the retrain-free pick and at the oracle's, with the setting picked;
    its runs at the shared setting are the shared table's runs, trained once."""
    out = demo / "out"
    result = json.loads((out / "results.json").read_text())
    tuned = result["tuned_rows"]
    assert [(r["method"], r["rule"]) for r in tuned] == [
        ("mox", "retrain-free"),
        ("mox", "oracle"),
        ("ga", "retrain-free"),
        ("ga", "oracle"),
    ]
    frontier = json.loads((out / "frontier" / "frontier.json").read_text())
    by_id = {r["id"]: r for r in frontier["records"]}
    for row in tuned:
        pick = by_id[frontier["selected"][row["method"]]["0"][row["rule"].replace("-", "_")]["id"]]
        assert row["forget_quality"] == pick["forget_quality"] and row["model_utility"] == pick["model_utility"]
        knob = "α" if row["method"] == "mox" else "epoch"
        assert row["picked"].removesuffix(" (fallback)") == f"lr 0.001, {knob} {pick['value']:g}"
    assert {r["knob"] for r in frontier["records"]} == {"alpha", "epoch"}
    assert len({r["run"] for r in frontier["records"]}) == 2  # one run per method: the shared ones
    assert len(list((out / "runs").glob("*/run.json"))) == 2
    # and each model is evaluated once: the α models are the shared table's (only GA's epochs are new)
    evals = sorted(p.name.split("-forget10-")[0] for p in (out / "evals").glob("*-forget10-*.json"))
    assert evals == [
        "frontier-ga-lr0.001-s0-epoch1",
        "frontier-ga-lr0.001-s0-epoch2",
        "ga",
        "mox-a1",
        "mox-a4",
        "original",
        "retrained",
    ]
    md = (out / "results.md").read_text()
    assert "## Tuned: each method at the setting a rule picks" in md and "| Picked setting |" in md
    assert (out / "frontier" / "frontier.png").is_file()


def test_untuned_demo_says_how_to_get_the_tuned_table(demo, capsys):
    assert main(["demo", "--untuned", "--out", str(demo / "untuned"), "--cache-dir", str(demo / "cache"), *MINI]) == 0
    result = json.loads((demo / "untuned" / "results.json").read_text())
    assert result["tuned_rows"] == [] and not (demo / "untuned" / "frontier").exists()
    said = capsys.readouterr().out
    assert "No tuned table" in said and f"mox experiment frontier --config demo --out {demo / 'untuned'}" in said
    assert "No tuned table" in (demo / "untuned" / "results.md").read_text()
    first = json.loads((demo / "out" / "results.json").read_text())["rows"]
    assert result["rows"] == first  # the shared table does not depend on the tuned one


def test_the_printed_frontier_command_reuses_the_demo_runs(demo, capsys):
    """What the untuned demo tells the user to run adds the tuned table to its folder without training the
    shared runs again (same workspace keys)."""
    out = demo / "untuned"
    if not (out / "results.json").is_file():
        assert main(["demo", "--untuned", "--out", str(out), "--cache-dir", str(demo / "cache"), *MINI]) == 0
    runs = sorted(p.parent.name for p in (out / "runs").glob("*/run.json"))
    capsys.readouterr()
    assert (
        main(
            [
                "experiment",
                "frontier",
                "--config",
                "demo",
                "--out",
                str(out),
                "--cache-dir",
                str(demo / "cache"),
                *MINI,
                "frontier_methods=[mox, ga]",
                "frontier_lr_scales=[1.0]",
                "frontier_seeds=[0]",
            ]
        )
        == 0
    )
    assert "training" not in capsys.readouterr().out
    assert sorted(p.parent.name for p in (out / "runs").glob("*/run.json")) == runs
    assert (out / "frontier" / "frontier.json").is_file()


def test_a_bad_tuned_setting_is_refused_before_any_work(tmp_path, capsys):
    args = ["demo", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), *MINI]
    assert main([*args, "tuned_settings={frontier_methods: [mox, nope]}"]) == 2
    assert "frontier_methods: unknown method 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    assert main([*args, "tuned_settings={no_such_key: 1}"]) == 2
    assert "tuned_settings: " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_second_demo_reuses_the_trained_models(demo, capsys):
    cache_runs = sorted(p for p in (demo / "cache").glob("*/*/run.json"))
    stamps = [p.stat().st_mtime for p in cache_runs]
    assert len(cache_runs) == 3  # stage 1, target, retain
    assert main(["demo", "--out", str(demo / "again"), "--cache-dir", str(demo / "cache"), *MINI]) == 0
    assert [p.stat().st_mtime for p in cache_runs] == stamps
    assert "generating" not in capsys.readouterr().out
    first = json.loads((demo / "out" / "results.json").read_text())["rows"]
    second = json.loads((demo / "again" / "results.json").read_text())["rows"]
    assert first == second  # deterministic for a seed


def test_report_renders_demo_and_eval_files(demo, tmp_path):
    evals = sorted((demo / "out" / "evals").glob("original-*.json"))
    assert main(["report", str(demo / "out" / "results.json"), str(evals[0]), "--out", str(tmp_path / "rep")]) == 0
    rows = json.loads((tmp_path / "rep" / "results.json").read_text())["rows"]
    assert len(rows) == 6 and (tmp_path / "rep" / "fq_mu.png").is_file()
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert main(["report", str(bad), "--out", str(tmp_path / "rep2")]) == 2


def test_a_demo_interrupted_before_its_first_run_continues(demo, capsys):
    """Ctrl-C right after the demo claimed its folder (demo-config.json, an evaluation half done): the same
    command continues there, and --overwrite starts it again."""
    out = demo / "interrupted"
    assert main(["demo", "--untuned", "--out", str(out), "--cache-dir", str(demo / "cache"), *MINI]) == 0
    for path in sorted(out.iterdir()):  # keep only what exists before the first run
        if path.name not in ("demo-config.json", "evals"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    (out / "evals" / ".tmp-partial.json").write_text("{")
    assert main(["demo", "--untuned", "--out", str(out), "--cache-dir", str(demo / "cache"), *MINI]) == 0
    assert (out / "results.json").is_file()
    assert main(["demo", "--untuned", "--overwrite", "--out", str(out), "--cache-dir", str(demo / "cache"), *MINI]) == 0
    assert not (out / "evals" / ".tmp-partial.json").exists()
    other = demo / "not-a-demo"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(other), "--cache-dir", str(demo / "cache"), *MINI]) == 2
    assert "not a demo folder" in capsys.readouterr().err and (other / "notes.txt").read_text() == "mine"


def test_an_output_folder_of_other_settings_is_refused(demo, capsys):
    changed = [m if not m.startswith("eval_max_new_tokens") else "eval_max_new_tokens=9" for m in MINI]
    assert main(["demo", "--out", str(demo / "out"), "--cache-dir", str(demo / "cache"), *changed]) == 2
    assert "other settings" in capsys.readouterr().err


def test_an_evaluation_scored_by_an_older_mox_is_not_reused(tmp_path):
    """Cached evaluations from before ES / EM / min-k dropped EOS carry no convention record: made again."""
    from mox_unlearn.demo.run import cached_evaluation
    from mox_unlearn.evaluate.convention import POSITIONS

    path = tmp_path / "eval.json"
    assert cached_evaluation(path) is None
    path.write_text(json.dumps({"summary": {}, "metrics": {}}))
    assert cached_evaluation(path) is None
    current = {"summary": {}, "metrics": {}, "convention": {"positions": POSITIONS}}
    path.write_text(json.dumps(current))
    assert cached_evaluation(path) == current
