"""Choosing α without a retrained model: the rule on synthetic curves, the curve on a tiny model,
`mox select-alpha`, `mox unlearn --alpha auto`, and the select-alpha experiment's note."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from miniature import mini_settings

from mox_unlearn.alpha_selection import (
    BOTH,
    SMALLEST,
    UTILITY_ONLY,
    CurvePoint,
    alpha_curve,
    check_grid,
    relative_drop,
    select_alpha,
    spread_sample,
)
from mox_unlearn.cli import main
from mox_unlearn.config import SelectionSettings
from mox_unlearn.data import RecordSet
from mox_unlearn.errors import MoxError
from mox_unlearn.experiments.selection import best_fq, comparison_note

FAST = ["per_device_batch_size=2", "batch_size=2", "lr=1e-3", "warmup_epochs=0", "max_length=64"]
HOLDOUT = [
    {"question": "Where was Dara Nolt born?", "answer": "Dara Nolt was born in Vey."},
    {"question": "What does Dara Nolt write?", "answer": "She writes travel books."},
    {"question": "When was Dara Nolt born?", "answer": "In 1958."},
    {"question": "Who are Dara Nolt's parents?", "answer": "A miner and a nurse."},
]
NAN = math.nan


def curve(alphas, drops, ps):
    return [
        CurvePoint(a, {"probability": d, "rouge": d / 2 if not math.isnan(d) else d}, p)
        for a, d, p in zip(alphas, drops, ps)
    ]


GRID = [0.5, 1.0, 2.0, 4.0, 8.0]


# ----------------------------------------------------------------------------- the rule


def test_monotone_curve_picks_the_largest_alpha_passing_both():
    sel = select_alpha(curve(GRID, [0.0, 0.01, 0.02, 0.04, 0.10], [1e-6, 1e-3, 0.02, 0.2, 0.6]))
    assert sel.alpha == 4.0 and sel.branch == BOTH and sel.utility_ok and sel.forget_indistinguishable
    assert sel.passing == (4.0,) and sel.within_tolerance == (0.5, 1.0, 2.0, 4.0)


def test_all_alphas_pass_gives_the_largest():
    sel = select_alpha(curve(GRID, [0.0] * 5, [0.5] * 5))
    assert sel.alpha == 8.0 and sel.branch == BOTH and sel.passing == tuple(GRID)


def test_no_alpha_makes_forget_indistinguishable_falls_back_to_largest_within_tolerance():
    sel = select_alpha(curve(GRID, [0.0, 0.01, 0.03, 0.06, 0.2], [1e-9, 1e-7, 1e-5, 1e-3, 0.01]))
    assert sel.alpha == 2.0 and sel.branch == UTILITY_ONLY
    assert sel.utility_ok and not sel.forget_indistinguishable and sel.passing == () and sel.alike == ()
    # forget ~ holdout only where utility is gone: still the utility fallback, and the reason says so
    sel = select_alpha(curve(GRID, [0.0, 0.01, 0.03, 0.6, 0.9], [1e-9, 1e-7, 1e-5, 0.01, 0.7]))
    assert sel.alpha == 2.0 and sel.branch == UTILITY_ONLY and sel.alike == (8.0,)
    assert "forget ~ holdout only at α = 8, beyond the tolerance" in sel.reason


def test_no_alpha_keeps_utility_falls_back_to_the_smallest():
    sel = select_alpha(curve(GRID, [0.1, 0.2, 0.3, 0.4, 0.5], [0.3, 0.4, 0.5, 0.6, 0.7]))
    assert sel.alpha == 0.5 and sel.branch == SMALLEST
    assert not sel.utility_ok and sel.forget_indistinguishable  # the flag reports the chosen point's own test
    sel = select_alpha(curve(GRID, [0.1] * 5, [0.01] * 5))
    assert sel.alpha == 0.5 and sel.branch == SMALLEST and not sel.utility_ok and not sel.forget_indistinguishable


def test_non_monotone_curve_takes_the_largest_passing_alpha_at_face_value():
    # utility fails at α = 2 but recovers at 4; p dips at 4 and recovers at 8 (where utility fails)
    sel = select_alpha(curve(GRID, [0.0, 0.01, 0.09, 0.03, 0.2], [0.1, 0.2, 0.3, 0.01, 0.9]))
    assert sel.alpha == 1.0 and sel.passing == (0.5, 1.0) and sel.within_tolerance == (0.5, 1.0, 4.0)
    sel = select_alpha(curve(GRID, [0.0, 0.01, 0.09, 0.03, 0.2], [0.1, 0.2, 0.3, 0.4, 0.9]))
    assert sel.alpha == 4.0 and sel.branch == BOTH


def test_nan_never_passes_a_test():
    # NaN p at the largest within-tolerance α: the next one down is chosen
    sel = select_alpha(curve(GRID, [0.0, 0.0, 0.0, 0.0, 0.0], [0.1, 0.1, 0.1, 0.1, NAN]))
    assert sel.alpha == 4.0 and sel.branch == BOTH
    # NaN utility (e.g. an overflowing model) is not within tolerance, whatever its p
    sel = select_alpha(curve(GRID, [0.0, 0.0, 0.0, 0.0, NAN], [0.1] * 5))
    assert sel.alpha == 4.0
    # a NaN in one measure makes the worst drop NaN
    assert math.isnan(CurvePoint(1.0, {"probability": 0.0, "rouge": NAN}, 0.5).utility_drop)
    # everything NaN: the smallest α, failing both tests
    sel = select_alpha(curve(GRID, [NAN] * 5, [NAN] * 5))
    assert sel.alpha == 0.5 and sel.branch == SMALLEST and not sel.utility_ok and not sel.forget_indistinguishable


def test_boundary_values_pass_and_order_does_not_matter():
    pts = curve([1.0, 2.0, 4.0], [0.05, 0.05, 0.050001], [0.05, 0.05, 0.9])
    sel = select_alpha(pts, tolerance=0.05, p_min=0.05)
    assert sel.alpha == 2.0 and sel.branch == BOTH  # drop == tolerance and p == p_min pass; 4 is just over
    shuffled = list(pts)
    random.Random(0).shuffle(shuffled)
    assert select_alpha(shuffled) == sel
    # the worst measure decides: rouge within, probability over
    assert select_alpha([CurvePoint(1.0, {"probability": 0.06, "rouge": 0.0}, 0.9)]).branch == SMALLEST
    # a better-than-reference point (negative drop) is within any tolerance
    assert select_alpha([CurvePoint(1.0, {"probability": -0.2}, 0.9)], tolerance=0.0).branch == BOTH


@pytest.mark.parametrize(
    "pts, kw, message",
    [
        ([], {}, "empty"),
        (curve([1.0, 1.0], [0, 0], [1, 1]), {}, "duplicate α in the curve: 1"),
        (curve([0.0, 1.0], [0, 0], [1, 1]), {}, "finite and > 0"),
        (curve([NAN], [0], [1]), {}, "finite and > 0"),
        ([CurvePoint(1.0, {}, 0.5)], {}, "at least one utility measure"),
        (curve([1.0], [0], [1]), {"tolerance": -0.1}, "tolerance must be"),
        (curve([1.0], [0], [1]), {"tolerance": NAN}, "tolerance must be"),
        (curve([1.0], [0], [1]), {"p_min": 1.5}, "p_min must be"),
    ],
)
def test_rule_refuses_bad_curves_and_settings(pts, kw, message):
    with pytest.raises(MoxError, match=message):
        select_alpha(pts, **kw)


def test_relative_drop_and_grid_checks():
    assert relative_drop(0.8, 0.6) == pytest.approx(0.25)
    assert relative_drop(0.5, 0.6) == pytest.approx(-0.2)
    assert relative_drop(0.0, 0.0) == 0.0 and relative_drop(0.0, -1.0) == math.inf
    assert math.isnan(relative_drop(0.5, NAN)) and math.isnan(relative_drop(None, 0.5))
    assert check_grid([4, "1", 0.5]) == [0.5, 1.0, 4.0]
    for bad, message in (
        ([], "empty"),
        ([1, NAN], "not a finite number > 0"),
        ([-1], "> 0"),
        ([2, 2.0], "duplicate"),
        (["x"], "not a number"),
        ("1", "list of numbers"),
    ):
        with pytest.raises(MoxError, match=message):
            check_grid(bad)


def test_retain_sample_is_spread_over_the_set():
    rs = RecordSet("qa", [{"question": str(i), "answer": str(i)} for i in range(10)], "x")
    assert [r["question"] for r in spread_sample(rs, 4).records] == ["0", "3", "6", "9"]
    assert spread_sample(rs, 20) is rs and spread_sample(rs, None) is rs


def test_experiment_note_compares_with_the_best_true_fq():
    sel = {"alpha": 2.0, "reason": "r"}
    assert best_fq({1.0: 0.1, 2.0: 0.3, 4.0: 0.3, 8.0: None}) == (2.0, 0.3)
    note = comparison_note(sel, {1.0: 0.1, 2.0: 0.2, 4.0: 0.5})
    assert "Chosen α = 2" in note and "true FQ is 0.2" in note and "best FQ over the grid is 0.5 at α = 4" in note
    assert "the same α" in comparison_note(sel, {1.0: 0.1, 2.0: 0.6})
    note = comparison_note(sel, {2.0: 0.2, 4.0: 0.5}, {2.0: 0.8, 4.0: 0.0})
    assert "true FQ is 0.2 (MU 0.8)" in note and "0.5 at α = 4 (MU 0)" in note
    assert "not available" in comparison_note(sel, {1.0: None, 2.0: None})


# ----------------------------------------------------------------------------- on a tiny model


@pytest.fixture(scope="module")
def data(tmp_path_factory, qa_files):
    """forget / retain (conftest) plus a holdout set, and perturbed variants for the truth-ratio score."""
    d = tmp_path_factory.mktemp("sel-data")
    holdout = d / "holdout.jsonl"
    holdout.write_text("".join(json.dumps(r) + "\n" for r in HOLDOUT))
    forget_rows = [json.loads(line) for line in qa_files[0].read_text().splitlines()]
    for name, rows in (("forget_p", forget_rows), ("holdout_p", HOLDOUT)):
        (d / f"{name}.jsonl").write_text(
            "".join(
                json.dumps({**r, "perturbed_answer": [r["answer"][::-1], r["answer"].upper()]}) + "\n" for r in rows
            )
        )
    return {
        "forget": qa_files[0],
        "retain": qa_files[1],
        "holdout": holdout,
        "forget_p": d / "forget_p.jsonl",
        "holdout_p": d / "holdout_p.jsonl",
    }


def _unlearn(tiny_model_dir, data, out, *extra):
    return main(
        [
            "unlearn",
            "--model",
            str(tiny_model_dir),
            "--forget",
            str(data["forget"]),
            "--retain",
            str(data["retain"]),
            "--out",
            str(out),
            *FAST,
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def mem_run(tiny_model_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sel-run") / "mox"
    assert _unlearn(tiny_model_dir, data, out, "--max-steps", "3") == 0
    return out


KW = dict(max_new_tokens=4, batch_size=8, max_length=64)


def sel(*grid: float, score: str = "min_k") -> SelectionSettings:
    return SelectionSettings(grid=grid, score=score, max_items=3)


@pytest.mark.slow
def test_alpha_curve_on_a_tiny_model(tiny_model_dir, mem_run, data, tmp_path):
    report = alpha_curve(
        tiny_model_dir,
        mem_run / "memorized",
        str(data["forget"]),
        str(data["holdout"]),
        str(data["retain"]),
        sel(2, 1),
        work_dir=tmp_path,
        **KW,
    )
    assert list(tmp_path.iterdir()) == []  # every scratch model deleted
    ref, rows = report["reference"], report["curve"]
    assert [r["alpha"] for r in rows] == [1.0, 2.0] and ref["alpha"] == 0.0
    assert report["data"]["retain"]["items"] == 3 and report["data"]["forget"]["items"] == 4
    assert 0 < ref["retain_probability"] < 1 and 0 <= ref["retain_rouge"] <= 1 and 0 <= ref["ks_p"] <= 1
    for r in rows:
        assert r["drops"]["probability"] == pytest.approx(
            relative_drop(ref["retain_probability"], r["retain_probability"])
        )
        assert r["utility_drop"] == pytest.approx(max(r["drops"].values()))
        assert 0 <= r["ks_p"] <= 1 and 0 <= r["ks_stat"] <= 1
        assert r["retain_probability"] != ref["retain_probability"]  # the α models differ from θ_ref
    assert sum(r["chosen"] for r in rows) == 1 and report["selection"]["alpha"] in (1.0, 2.0)
    json.dumps(report)  # JSON-able
    # scoring ready-made extrapolations gives the same numbers as extrapolating inside
    from mox_unlearn.extrapolation import extrapolate_folders

    folders = extrapolate_folders(tiny_model_dir, mem_run / "memorized", [1.0, 2.0], tmp_path / "ex", progress=False)
    again = alpha_curve(
        tiny_model_dir,
        None,
        str(data["forget"]),
        str(data["holdout"]),
        str(data["retain"]),
        sel(1, 2),
        models={1.0: folders[0], 2.0: folders[1]},
        **KW,
    )
    for a, b in zip(rows, again["curve"]):
        assert a["retain_probability"] == pytest.approx(b["retain_probability"]) and a["ks_p"] == pytest.approx(
            b["ks_p"]
        )


@pytest.mark.slow
def test_truth_ratio_score_needs_perturbed_answers(tiny_model_dir, mem_run, data, tmp_path):
    report = alpha_curve(
        tiny_model_dir,
        mem_run / "memorized",
        str(data["forget_p"]),
        str(data["holdout_p"]),
        str(data["retain"]),
        sel(1, score="truth_ratio"),
        work_dir=tmp_path,
        **KW,
    )
    assert report["settings"]["score"] == "truth_ratio" and 0 <= report["curve"][0]["ks_p"] <= 1
    with pytest.raises(MoxError, match=r"perturbed_answer list in every holdout record; .*\[0\] has none"):
        alpha_curve(
            tiny_model_dir,
            mem_run / "memorized",
            str(data["forget_p"]),
            str(data["holdout"]),
            str(data["retain"]),
            sel(1, score="truth_ratio"),
            **KW,
        )


# ----------------------------------------------------------------------------- mox select-alpha


def _select(tiny_model_dir, mem_run, data, out, *extra, holdout=None):
    return main(
        [
            "select-alpha",
            "--ref",
            str(tiny_model_dir),
            "--mem",
            str(mem_run / "memorized"),
            "--forget",
            str(data["forget"]),
            "--holdout",
            str(holdout or data["holdout"]),
            "--retain",
            str(data["retain"]),
            "--max-items",
            "3",
            "--max-new-tokens",
            "4",
            "--max-length",
            "64",
            "--out",
            str(out),
            *extra,
        ]
    )


@pytest.mark.slow
def test_select_alpha_cli_writes_the_report_and_plot(tiny_model_dir, mem_run, data, tmp_path, capsys):
    out = tmp_path / "sel"
    assert _select(tiny_model_dir, mem_run, data, out, "--alpha", "1", "--alpha", "3", "--tolerance", "0.5") == 0
    assert sorted(p.name for p in out.iterdir()) == ["alpha-selection.json", "alpha-selection.png"]
    report = json.loads((out / "alpha-selection.json").read_text())
    assert report["settings"]["alphas"] == [1.0, 3.0] and report["settings"]["tolerance"] == 0.5
    assert (out / "alpha-selection.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert f"chosen α = {report['selection']['alpha']:g}" in printed and "<- chosen" in printed
    # an existing non-empty --out is refused without --overwrite
    assert _select(tiny_model_dir, mem_run, data, out, "--alpha", "1") == 2
    assert "not empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--score", "perplexity"], "unknown score 'perplexity'; valid: min_k, truth_ratio"),
        (["--alpha", "nan"], "not a finite number > 0"),
        (["--alpha", "-1"], "not a finite number > 0"),
        (["--alpha", "2", "--alpha", "2"], "duplicate"),
        (["--tolerance", "-0.1"], "tolerance must be"),
        (["--max-items", "0"], "max_items must be"),
        (["--holdout-missing"], "not found"),
    ],
)
def test_select_alpha_cli_refuses_bad_input_in_one_line_and_writes_nothing(
    tiny_model_dir, mem_run, data, tmp_path, capsys, extra, message
):
    out = tmp_path / "sel"
    holdout = tmp_path / "nope.jsonl" if extra == ["--holdout-missing"] else None
    extra = [] if holdout else extra
    assert _select(tiny_model_dir, mem_run, data, out, *extra, holdout=holdout) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mox: error:") and message in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- mox unlearn --alpha auto


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_unlearn_alpha_auto_records_and_uses_the_chosen_alpha(tiny_model_dir, data, tmp_path, capsys):
    out = tmp_path / "auto"
    assert (
        _unlearn(
            tiny_model_dir,
            data,
            out,
            "--max-steps",
            "2",
            "--alpha",
            "auto",
            f"holdout={data['holdout']}",
            "alpha_grid=[1, 3]",
            "alpha_tolerance=0.5",
        )
        == 0
    )
    info = json.loads((out / "run.json").read_text())
    sel = info["alpha_selection"]
    assert info["config"]["alpha"] == "auto" and sel["alpha"] in (1.0, 3.0) and sel["grid"] == [1.0, 3.0]
    report = json.loads((out / "alpha-selection.json").read_text())
    assert report["selection"]["alpha"] == sel["alpha"] and (out / "alpha-selection.png").is_file()
    # run.json names outputs relative to the run folder (io/portable.py); so does the report its inputs
    assert info["outputs"]["alpha_selection"] == sel["report"] == "alpha-selection.json"
    assert str(out.parent).encode() not in (out / "alpha-selection.json").read_bytes()
    assert f"| alpha | {sel['alpha']} |" in (out / "model" / "README.md").read_text()
    assert not (out / ".alpha-selection-scratch").exists()
    ref, mem, forget = _weights(tiny_model_dir), _weights(out / "memorized"), _weights(out / "model")
    a = sel["alpha"]
    for k in forget:
        assert torch.allclose(forget[k], (1 + a) * ref[k] - a * mem[k], atol=1e-5), k
    assert "alpha (auto)" in capsys.readouterr().out


@pytest.mark.slow
def test_unlearn_alpha_auto_without_saved_memorized_uses_a_scratch_copy(tiny_model_dir, data, tmp_path):
    out = tmp_path / "auto"
    assert (
        _unlearn(
            tiny_model_dir,
            data,
            out,
            "--max-steps",
            "1",
            "--alpha",
            "auto",
            f"holdout={data['holdout']}",
            "alpha_grid=[2]",
            "--no-save-memorized",
        )
        == 0
    )
    assert json.loads((out / "run.json").read_text())["alpha_selection"]["alpha"] == 2.0
    assert not (out / "memorized").exists() and not (out / ".alpha-selection-scratch").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--momentum"], "does not combine with momentum"),
        (["--method", "ga"], "does not extrapolate"),
        ([], "needs a holdout set"),
        (["holdout=/nonexistent/holdout.jsonl"], "not found"),
        (["alpha_grid=[1, -2]", "holdout=HOLDOUT"], "not a finite number > 0"),
        (["alpha=sometimes"], "config alpha: expected a number or 'auto'"),
    ],
)
def test_unlearn_alpha_auto_refusals_come_before_training(tiny_model_dir, data, tmp_path, capsys, extra, message):
    out = tmp_path / "auto"
    alpha = [] if extra and extra[0].startswith("alpha=") else ["--alpha", "auto"]
    extra = [e.replace("HOLDOUT", str(data["holdout"])) for e in extra]
    assert _unlearn(tiny_model_dir, data, out, "--max-steps", "1", *alpha, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


# ----------------------------------------------------------------------------- the select-alpha experiment

MINI = mini_settings(alphas=[4.0, 1.0], select_tolerance=0.5)


@pytest.mark.slow
def test_select_alpha_experiment_reports_the_choice_next_to_the_best_true_fq(tmp_path):
    from mox_unlearn.config import apply_mapping
    from mox_unlearn.experiments import ExperimentConfig, Workspace
    from mox_unlearn.experiments.selection import select_alpha_experiment

    cfg = ExperimentConfig()
    apply_mapping(cfg, MINI)
    result = select_alpha_experiment(Workspace(cfg, tmp_path / "out", tmp_path / "cache"))
    rows = result["rows"]
    assert [r["alpha"] for r in rows] == [1.0, 4.0] and sum(r["chosen"] for r in rows) == 1
    assert all(r["forget_quality"] is not None and r["model_utility"] is not None for r in rows)
    folder = tmp_path / "out" / "select-alpha"
    for name in (
        "select-alpha.json",
        "select-alpha.md",
        "select-alpha.png",
        "alpha-selection.json",
        "alpha-selection.png",
    ):
        assert (folder / name).stat().st_size > 0, name
    chosen = next(r for r in rows if r["chosen"])
    best = max(rows, key=lambda r: (r["forget_quality"], -r["alpha"]))
    md = (folder / "select-alpha.md").read_text()
    assert f"Chosen α = {chosen['alpha']:g}" in md and f"at α = {best['alpha']:g}" in md


@pytest.mark.slow
def test_select_alpha_experiment_on_tofu_without_a_retain_model(data_dir, tiny_model_dir, tmp_path):
    """target= / data= (the shared TOFU copy): forget01 vs holdout01, retain_perturbed, each cut to eval_limit;
    no retain model, so no true FQ to compare."""
    from mox_unlearn.config import apply_mapping
    from mox_unlearn.experiments import ExperimentConfig, Workspace
    from mox_unlearn.experiments.selection import select_alpha_experiment

    cfg = ExperimentConfig()
    apply_mapping(
        cfg,
        {
            "target": str(tiny_model_dir),
            "data": str(data_dir / "tofu"),
            "forget_split": "forget01",
            "alphas": [1.0, 2.0],
            "max_length": 256,
            "eval_max_new_tokens": 2,
            "eval_limit": 30,
            "unlearn": {"lr": 1e-3, "max_steps": 1, "batch_size": 4, "per_device_batch_size": 4},
        },
    )
    result = select_alpha_experiment(Workspace(cfg, tmp_path / "out", tmp_path / "cache"))
    assert [r["forget_quality"] for r in result["rows"]] == [None, None]
    report = json.loads((tmp_path / "out" / "select-alpha" / "alpha-selection.json").read_text())
    assert {k: (v["source"].rsplit("/", 1)[-1], v["items"]) for k, v in report["data"].items()} == {
        "forget": ("forget01.jsonl", 30),
        "holdout": ("holdout01.jsonl", 30),
        "retain": ("retain_perturbed.jsonl", 30),
    }
    assert "not available" in (tmp_path / "out" / "select-alpha" / "select-alpha.md").read_text()


def test_resume_accepts_a_run_folder_written_before_the_alpha_auto_keys(tmp_path):
    """An interrupted run's config.yaml without the new keys counts them at their defaults (no false mismatch)."""
    import yaml

    from mox_unlearn.config import UnlearnConfig, to_dict
    from mox_unlearn.train import prepare_run_dir

    cfg = UnlearnConfig(model="m", forget="f.jsonl", out=str(tmp_path / "run"))
    (tmp_path / "run" / "checkpoints" / "step-1").mkdir(parents=True)
    old = {
        k: v for k, v in to_dict(cfg).items() if k not in ("holdout", "alpha_grid", "alpha_tolerance", "alpha_p_min")
    }
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(old))
    assert prepare_run_dir(cfg, resume=True, overwrite=False) == (tmp_path / "run").resolve()
    cfg.alpha_grid = [1.0]
    with pytest.raises(MoxError, match="different config than the interrupted run: alpha_grid"):
        prepare_run_dir(cfg, resume=True, overwrite=False)


# ----------------------------------------------------------------------------- over extrapolation variants


@pytest.mark.parametrize(
    ("picks", "expected"),
    [
        ([("plain", "both", 0.2, 0.3, 0.1), ("keep0.2", "both", 0.5, 0.3, 0.1)], 1),  # forget more like holdout
        ([("plain", "both", 0.2, 0.1, 0.0), ("keep0.2", "utility_only", 0.9, 0.1, 0.0)], 0),  # both tests first
        ([("plain", "smallest", 0.9, 0.1, 0.0), ("keep0.2", "utility_only", 0.01, 0.5, 2.0)], 1),
        ([("plain", "both", 0.3, 0.2, -1.0), ("keep0.2", "both", 0.3, 0.2, 1.0)], 0),  # a tie keeps plain MOX
        ([("plain", "both", float("nan"), 0.1, 0.0), ("keep0.2", "both", 0.0, 1.0, 5.0)], 1),  # NaN p ranks last
        # p saturated (forget and holdout completely apart, as on the demo): the KS statistic, then the
        # |median gap| still say which forget set is closer to unseen data (the frontier's rule v2)
        ([("plain", "utility_only", 6e-14, 1.0, 3.0), ("keep0.2", "utility_only", 6e-14, 0.9, 4.0)], 1),
        ([("plain", "utility_only", 6e-14, 1.0, 3.0), ("keep0.2", "utility_only", 6e-14, 1.0, -2.0)], 1),
        ([("plain", "utility_only", 6e-14, 1.0, 3.0), ("keep0.2", "utility_only", 6e-14, 1.0, float("nan"))], 0),
    ],
)
def test_choose_variant_by_hand(picks, expected):
    from mox_unlearn.alpha_selection.rule import choose_variant

    assert choose_variant([pick[1:] for pick in picks]) == expected


@pytest.mark.slow
def test_select_alpha_over_variants_reports_every_curve_and_the_choice(tiny_model_dir, mem_run, data, tmp_path, capsys):
    out = tmp_path / "sel"
    args = ["--alpha", "1", "--alpha", "3", "--tolerance", "0.5", "--variant", "{keep_fraction: 0.2}"]
    assert _select(tiny_model_dir, mem_run, data, out, *args, "--variant", "{only: mlp}") == 0
    report = json.loads((out / "alpha-selection.json").read_text())
    labels = [v["label"] for v in report["variants"]]
    assert labels == ["plain", "keep0.2", "only_mlp"]
    from mox_unlearn.alpha_selection.rule import choose_variant

    picks = [(v["branch"], v["ks_p"], v["ks_stat"], v["forget_minus_holdout_median"]) for v in report["variants"]]
    best = report["variants"][choose_variant(picks)]
    assert report["variant"] == best["variant"] and report["selection"]["alpha"] == best["alpha"]
    assert all(len(v["curve"]) == 2 for v in report["variants"])
    assert "chosen variant:" in capsys.readouterr().out
    assert _select(tiny_model_dir, mem_run, data, tmp_path / "bad", "--variant", "{keep_fraction: 2}") == 2
    assert "--variant '{keep_fraction: 2}': keep_fraction must be in (0, 1]" in capsys.readouterr().err


@pytest.mark.slow
def test_the_api_chooses_over_variants_as_the_cli_does(tiny_model_dir, mem_run, data, tmp_path):
    """mox_unlearn.select_alpha(variants=...) is `mox select-alpha --variant ...`: the same curves and choice."""
    import mox_unlearn
    from mox_unlearn.variants import Variant

    flags = ["--alpha", "1", "--alpha", "3", "--tolerance", "0.5", "--variant", "{keep_fraction: 0.2}"]
    assert _select(tiny_model_dir, mem_run, data, tmp_path / "cli", *flags, "--variant", "{only: mlp}") == 0
    by_cli = json.loads((tmp_path / "cli" / "alpha-selection.json").read_text())
    by_api = mox_unlearn.select_alpha(
        tiny_model_dir,
        mem_run / "memorized",
        forget=data["forget"],
        holdout=data["holdout"],
        retain=data["retain"],
        alphas=[1, 3],
        tolerance=0.5,
        max_items=3,
        max_new_tokens=4,
        max_length=64,
        variants=[{"keep_fraction": 0.2}, Variant(only="mlp")],
    )
    keys = ("label", "alpha", "branch", "ks_p", "ks_stat", "forget_minus_holdout_median")
    assert [[v[k] for k in keys] for v in by_api["variants"]] == [[v[k] for k in keys] for v in by_cli["variants"]]
    assert by_api["variant"] == by_cli["variant"] and by_api["selection"] == by_cli["selection"]
    with pytest.raises(MoxError, match=r"variants\[0\]: unknown setting 'keep'"):
        mox_unlearn.select_alpha(
            tiny_model_dir, mem_run, forget=data["forget"], holdout=data["holdout"], retain=data["retain"],
            variants=[{"keep": 0.2}],
        )  # fmt: skip


@pytest.mark.slow
def test_unlearn_alpha_auto_over_variants_writes_the_chosen_variant(tiny_model_dir, data, tmp_path):
    """alpha: auto with alpha_variants: plain MOX and each variant get a curve; OUT/model is the chosen
    variant at the chosen α, exactly what `mox extrapolate` makes of OUT/memorized with them."""
    out = tmp_path / "auto"
    extra = ["--max-steps", "2", "--alpha", "auto", f"holdout={data['holdout']}", "alpha_grid=[1, 3]"]
    assert (
        _unlearn(tiny_model_dir, data, out, *extra, "alpha_variants=[{keep_fraction: 0.2}]", "alpha_tolerance=0.5") == 0
    )
    sel = json.loads((out / "run.json").read_text())["alpha_selection"]
    report = json.loads((out / "alpha-selection.json").read_text())
    assert [v["label"] for v in report["variants"]] == ["plain", "keep0.2"]
    assert sel["variant"] == report["variant"] and sel["alpha"] == report["selection"]["alpha"]
    flags = ["--keep-fraction", str(sel["variant"]["keep_fraction"])] if sel["variant"] else []
    args = ["--ref", str(tiny_model_dir), "--mem", str(out / "memorized"), "--alpha", str(sel["alpha"])]
    assert main(["extrapolate", *args, "--out", str(tmp_path / "cli"), *flags]) == 0
    by_cli, trained = _weights(tmp_path / "cli"), _weights(out / "model")
    assert all(torch.equal(trained[k], by_cli[k]) for k in by_cli)
