"""A miniature `mox demo` end to end (seconds), `mox report`, and the demo's model cache."""

from __future__ import annotations

import json

import pytest

from mox_unlearn.cli import main

MINI = ["sizes={n_profiles: 10, n_holdout: 1, n_attributes: 8, n_train_phrasings: 2, n_authors: 6, n_world: 6, n_retain_eval: 10}",
        "vocab_size=400", "hidden_size=32", "num_layers=2", "num_heads=2", "intermediate_size=64",
        "general_epochs=1", "profile_epochs=2", "pretrain_lr=1e-3",
        "unlearn={lr: 1e-3, epochs: 2, batch_size: 4, per_device_batch_size: 4}",
        "methods=[mox, ga]", "alphas=[1.0, 4.0]", "eval_max_new_tokens=8", "eval_batch_size=16"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(root / "out"), "--cache-dir", str(root / "cache"), *MINI]) == 0
    return root


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
    evals = sorted((demo / "out" / "evals").glob("*.json"))
    assert main(["report", str(demo / "out" / "results.json"), str(evals[0]), "--out", str(tmp_path / "rep")]) == 0
    rows = json.loads((tmp_path / "rep" / "results.json").read_text())["rows"]
    assert len(rows) == 6 and (tmp_path / "rep" / "fq_mu.png").is_file()
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert main(["report", str(bad), "--out", str(tmp_path / "rep2")]) == 2


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
