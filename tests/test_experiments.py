"""`mox experiment`: every training analysis end to end on a miniature benchmark (seconds each), and the
workspace's derived models checked against what training itself produces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from miniature import mini_settings
from safetensors.torch import load_file

from mox_unlearn.cli import main
from mox_unlearn.config import apply_mapping
from mox_unlearn.experiments import ExperimentConfig, Workspace
from mox_unlearn.experiments.workspace import epoch_snapshots

MINI = mini_settings(
    etas=[0.5, 1.0],
    weights=[1.0, 2.0],
    trajectory_methods=["ga", "mox", "mox-momentum"],
    collapse_methods=["ga", "mox"],
    continual_methods=["ga", "mox"],
    continual_epochs=1,
    compare_methods=["npo"],
    forget_splits=["forget05", "forget10"],
)
ARGS = [f"{k}={json.dumps(v)}" for k, v in MINI.items()]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("experiments")


def _run(root, name):
    assert main(["experiment", name, "--out", str(root / "out"), "--cache-dir", str(root / "cache"), *ARGS]) == 0
    out = root / "out" / name
    for ext in ("json", "csv", "md", "png"):
        assert (out / f"{name}.{ext}").stat().st_size > 0, ext
    return json.loads((out / f"{name}.json").read_text())["rows"]


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_sweep_rows_and_momentum_fold_at_eta_1_is_the_last_extrapolation(root):
    rows = _run(root, "sweep")
    assert [r["model"] for r in rows] == [
        "original",
        "retrained",
        "mox-a1",
        "mox-a4",
        "mox-momentum-eta0.5",
        "mox-momentum-eta1",
    ]
    by = {r["model"]: r for r in rows}
    assert by["retrained"]["forget_quality"] == 1.0
    # η = 1 keeps only the last epoch's θ_for, i.e. α = 4 from the final θ_mem: same weights, same metrics
    assert by["mox-momentum-eta1"]["forget_truth_ratio"] == pytest.approx(by["mox-a4"]["forget_truth_ratio"], abs=1e-6)


@pytest.mark.slow
def test_momentum_fold_equals_a_momentum_training_run(root):
    cfg = ExperimentConfig()
    apply_mapping(cfg, MINI)
    ws = Workspace(cfg, root / "out", root / "cache")
    run, u = ws.run_method("mox")
    mom_run, mom = ws.run_method("mox-momentum")
    folded = ws.momentum_fold(u.model, [p for _, p in epoch_snapshots(run)], mom.alpha, mom.eta)
    a, b = _weights(folded), _weights(mom_run / "model")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    # the per-epoch forget models end at the run's own output
    last = ws.forget_models_by_epoch(run, u)[-1][1]
    for k, v in _weights(last).items():
        torch.testing.assert_close(v, _weights(run / "model")[k], rtol=0, atol=1e-6)
    by_epoch = ws.forget_models_by_epoch(mom_run, mom)
    assert [k for k, _ in by_epoch] == [1, 2]
    for k, v in _weights(by_epoch[-1][1]).items():
        torch.testing.assert_close(v, b[k], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_stability_forget_size_and_continual(root):
    rows = _run(root, "stability")
    assert [(r["method"], r["value"]) for r in rows] == [
        ("GA", 1.0),
        ("GA", 2.0),
        ("NPO", 1.0),
        ("NPO", 2.0),
        ("MOX", 1.0),
        ("MOX", 2.0),
    ]
    rows = _run(root, "forget-size")
    assert [(r["method"], r["split"]) for r in rows] == [
        ("mox", "forget05"),
        ("npo", "forget05"),
        ("mox", "forget10"),
        ("npo", "forget10"),
    ]
    assert all(r["forget_quality"] is not None for r in rows)
    rows = _run(root, "continual")
    assert [(r["method"], r["stage"]) for r in rows] == [("ga", 1), ("ga", 2), ("mox", 1), ("mox", 2)]
    # stage 2 starts from stage 1's model
    stage2 = [p for p in (root / "out" / "runs").glob("continual-mox-2-*")]
    assert (
        len(stage2) == 1 and "continual-mox-1-" in json.loads((stage2[0] / "run.json").read_text())["config"]["model"]
    )


@pytest.mark.slow
def test_trajectory_and_collapse_share_their_runs(root):
    rows = _run(root, "trajectory")
    epochs = [(r["method"], r["epoch"]) for r in rows]
    assert epochs[:3] == [("ga", 0), ("ga", 1), ("ga", 2)] and epochs[-1] == ("retrained", None)
    runs_before = sorted(p.name for p in (root / "out" / "runs").iterdir())
    rows = _run(root, "collapse")
    assert sorted(p.name for p in (root / "out" / "runs").iterdir()) == runs_before  # nothing trained again
    assert {r["method"] for r in rows} == {"ga", "mox"}
    assert all(r["forget_collapse"] is not None and 0 <= r["retain_top_token_rate"] <= 1 for r in rows)


@pytest.mark.slow
def test_unknown_experiment_and_bad_setting_fail_in_one_line(root, capsys):
    assert main(["experiment", "nope", "--out", str(root / "bad")]) == 2
    assert "valid: table, sweep" in capsys.readouterr().err
    assert main(["experiment", "sweep", "--out", str(root / "bad"), "bogus_key=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    assert not (root / "bad").exists()
    assert main(["experiment", "list"]) == 0
    assert "trajectory" in capsys.readouterr().out


@pytest.mark.slow
def test_an_experiment_on_tofu_with_your_own_models(data_dir, tiny_model_dir, tmp_path):
    """target= / retain_model= / data= replace the demo benchmark (here the shared TOFU copy, 4 items a split)."""
    args = [
        f"target={tiny_model_dir}",
        f"retain_model={tiny_model_dir}",
        f"data={data_dir / 'tofu'}",
        "eval_limit=4",
        "forget_splits=[forget01]",
        "compare_methods=[ga]",
        "max_length=256",
        "eval_max_new_tokens=4",
        "unlearn={lr: 1e-3, max_steps: 1, batch_size: 4, per_device_batch_size: 4}",
    ]
    assert main(["experiment", "forget-size", "--out", str(tmp_path / "out"), *args]) == 0
    rows = json.loads((tmp_path / "out" / "forget-size" / "forget-size.json").read_text())["rows"]
    assert [(r["method"], r["split"]) for r in rows] == [("mox", "forget01"), ("ga", "forget01")]
    run = next((tmp_path / "out" / "runs").glob("mox-forget01-*"))
    cfg = json.loads((run / "run.json").read_text())["config"]
    assert cfg["forget"].endswith("tofu/forget01.jsonl") and cfg["retain"].endswith("tofu/retain99.jsonl")


@pytest.mark.slow
def test_a_cached_evaluation_takes_fq_from_todays_retain_model(data_dir, tokenizer, tiny_model_dir, tmp_path):
    """An evaluation is cached by the model it scores; its FQ is read against the retain model of this run,
    so `retain_model=` changed in the same folder never reports the FQ of the previous one."""
    from mox_unlearn.evaluate.tofu import add_forget_quality
    from mox_unlearn.tiny import build_tiny_llama

    other, model = (build_tiny_llama(tmp_path / name, tokenizer, seed=seed) for name, seed in (("b", 1), ("m", 2)))
    settings = {"data": str(data_dir / "tofu"), "eval_limit": 20, "eval_max_new_tokens": 2, "max_length": 256}

    def workspace(retain: Path) -> Workspace:
        cfg = ExperimentConfig()
        apply_mapping(cfg, {**settings, "target": str(tiny_model_dir), "retain_model": str(retain)})
        return Workspace(cfg, tmp_path / "out", tmp_path / "cache")

    first = workspace(tiny_model_dir).evaluate(model, "m")["summary"]["forget_quality"]
    cached = sorted((tmp_path / "out" / "evals").glob("m-*.json"))
    assert len(cached) == 1
    before = cached[0].read_bytes()
    ws = workspace(other)
    second = ws.evaluate(model, "m")["summary"]["forget_quality"]
    assert cached[0].read_bytes() == before  # the evaluation itself was not made again
    expected = add_forget_quality(json.loads(before), ws.retain_result("forget10"))["summary"]["forget_quality"]
    assert second == expected and second != first


@pytest.mark.slow
def test_tofu_subset_keeps_every_metric_fed(data_dir, tmp_path):
    from mox_unlearn.data import load_records
    from mox_unlearn.errors import MoxError
    from mox_unlearn.experiments.tofu import write_tofu_subset

    folder = write_tofu_subset(str(data_dir / "tofu"), 3, "forget01", tmp_path / "tofu3")
    read = lambda split: load_records(str(folder / f"{split}.jsonl")).records  # noqa: E731
    target, retain, forget = read("train_target"), read("train_retain"), read("forget01")
    assert len(target) == 60 and len(retain) == 20 and target[-40:] == forget and retain == target[:20]
    assert read("retain99") == retain
    assert [r["question"] for r in read("retain_perturbed")] == [r["question"] for r in retain]
    assert len(read("real_authors_perturbed")) == 100
    with pytest.raises(MoxError, match="tofu_authors"):
        write_tofu_subset(str(data_dir / "tofu"), 30, "forget01", tmp_path / "bad")


@pytest.mark.slow
def test_base_model_is_fine_tuned_into_target_and_retain(data_dir, tiny_model_dir, tmp_path):
    args = [
        f"base={tiny_model_dir}",
        f"data={data_dir / 'tofu'}",
        "tofu_authors=3",
        "forget_split=forget01",
        "eval_limit=3",
        "max_length=256",
        "eval_max_new_tokens=4",
        "methods=[mox, ga]",
        "alphas=[2.0]",
        "finetune={lr: 1e-3, max_steps: 2, batch_size: 4, per_device_batch_size: 4}",
        "unlearn={lr: 1e-3, max_steps: 1, batch_size: 4, per_device_batch_size: 4}",
        "save_epochs=false",
    ]
    assert main(["experiment", "table", "--out", str(tmp_path / "out"), *args]) == 0
    rows = json.loads((tmp_path / "out" / "table" / "results.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["original", "retrained", "mox-a2", "ga"]
    home = next((tmp_path / "out").glob("tofu-*"))
    assert json.loads((home / "retain" / "run.json").read_text())["data"]["forget"] == 20
    assert main(["experiment", "table", "--out", str(tmp_path / "out2"), *args, f"target={tiny_model_dir}"]) == 2


def test_every_experiment_preset_loads():
    from pathlib import Path

    from mox_unlearn.config import load_config

    presets = sorted(Path(__file__).resolve().parents[1].joinpath("configs", "experiments").glob("*.yaml"))
    assert presets
    for path in presets:
        cfg = load_config(path, [], cls=ExperimentConfig)
        assert cfg.methods and cfg.forget_split in ("forget01", "forget05", "forget10"), path


@pytest.mark.parametrize(
    "setting,message",
    [
        ("target=/no/such/model", "target=/no/such/model: no such folder"),
        ("base=./missing-base", "base=./missing-base: no such folder"),
        ("data=/no/such/data", "data=/no/such/data: no such folder"),
    ],
)
def test_missing_models_and_data_are_refused_before_anything_is_written(tmp_path, capsys, setting, message):
    assert main(["experiment", "table", "--out", str(tmp_path / "out"), setting]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(message) and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_folder_without_config_is_not_a_model(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["experiment", "table", "--out", str(tmp_path / "out"), f"target={tmp_path / 'empty'}"]) == 2
    assert "not a model folder (no config.json)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "setting,message",
    [
        ("alphas=[1, .nan]", "alphas: alpha nan is not a finite number"),
        ("weights=[0, 1]", "weights: alpha 0 <= 0"),
        ("etas=[0.5, 0]", "etas must be"),
        ("forget_splits=[forget07]", "unknown forget split 'forget07'"),
    ],
)
def test_nonsense_numbers_are_refused_before_any_work(tmp_path, capsys, setting, message):
    assert (
        main(
            [
                "experiment",
                "sweep",
                "--out",
                str(tmp_path / "out"),
                "--cache-dir",
                str(tmp_path / "cache"),
                *ARGS,
                setting,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_spell_names_paths_by_the_workspace_however_it_is_reached(tmp_path, monkeypatch):
    """Cache keys spell a path inside the workspace relative to it, so the same workspace named relatively,
    absolutely, through a link or after a move keys its models and evaluations the same; other local paths
    are absolute, a hub id stays as written."""
    import os

    from mox_unlearn.experiments.workspace import spell

    (tmp_path / "ws" / "models" / "m").mkdir(parents=True)
    (tmp_path / "base").mkdir()
    os.symlink(tmp_path / "ws", tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    inside = [
        spell(tmp_path / "ws" / "models" / "m", tmp_path / "ws"),
        spell("ws/models/m", Path("ws")),
        spell(tmp_path / "link" / "models" / "m", tmp_path / "link"),
        spell("link/models/m", tmp_path / "ws"),
    ]
    assert inside == ["OUT/models/m"] * 4
    assert (
        spell("base", tmp_path / "ws")
        == spell(tmp_path / "base", Path("ws"))
        == (tmp_path / "base").resolve().as_posix()
    )
    assert spell("locuslab/TOFU", tmp_path / "ws") == "locuslab/TOFU"


def test_cache_keys_look_up_the_key_of_caches_made_before(tmp_path):
    """The current key first (where new items go), then the one made with paths as written (older caches)."""
    import hashlib

    from mox_unlearn.experiments.workspace import cache_keys, first_done

    model = tmp_path / "ws" / "models" / "m"
    model.mkdir(parents=True)
    keys = cache_keys(lambda spelled: [spelled(model), 3], tmp_path / "ws")
    by_hand = [json.dumps(x) for x in (["OUT/models/m", 3], [str(model), 3])]
    assert keys == [hashlib.sha256(b.encode()).hexdigest()[:10] for b in by_hand]
    assert (
        cache_keys(lambda spelled: ["locuslab/TOFU"], tmp_path) == cache_keys(lambda s: ["locuslab/TOFU"], tmp_path)[:1]
    )
    paths = [tmp_path / k for k in keys]
    assert first_done(paths) == paths[0]  # nothing cached: the current key
    paths[1].mkdir()
    assert first_done(paths) == paths[1]  # an older cache is used where it is the one there


@pytest.mark.slow
def test_a_moved_workspace_keeps_its_evaluations(data_dir, tiny_model_dir, tmp_path, monkeypatch):
    """Moving an experiment folder (or naming it another way) must not make hours of evaluations again."""
    import shutil

    from mox_unlearn.experiments import workspace as W

    cfg = ExperimentConfig()
    apply_mapping(cfg, {"data": str(data_dir / "tofu"), "eval_limit": 20, "eval_max_new_tokens": 2})
    apply_mapping(cfg, {"max_length": 256, "target": str(tiny_model_dir), "retain_model": str(tiny_model_dir)})
    shutil.copytree(tiny_model_dir, tmp_path / "out" / "models" / "m")
    first = Workspace(cfg, tmp_path / "out", tmp_path / "cache").evaluate(tmp_path / "out" / "models" / "m", "m")
    (tmp_path / "out").rename(tmp_path / "moved")
    before = {p.name: p.read_bytes() for p in (tmp_path / "moved" / "evals").iterdir()}
    assert len(before) == 2  # the retain model (FQ's reference) and m

    def cached_only(model, data, c, path, retain, **kw):
        assert Path(path).is_file(), f"{path}: evaluated again"
        return json.loads(Path(path).read_text())

    monkeypatch.setattr(W, "evaluate", cached_only)
    second = Workspace(cfg, tmp_path / "moved", tmp_path / "cache").evaluate(tmp_path / "moved" / "models" / "m", "m")
    assert {p.name: p.read_bytes() for p in (tmp_path / "moved" / "evals").iterdir()} == before
    assert second["summary"] == first["summary"]
