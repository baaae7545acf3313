"""`mox eval --format open-unlearning`: open-unlearning's TOFU_EVAL.json / TOFU_SUMMARY.json, and reading its files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mox_unlearn.cli import main
from mox_unlearn.errors import MoxError
from mox_unlearn.evaluate.muse import read_retain_auc
from mox_unlearn.evaluate.open_unlearning import tofu_eval_json, tofu_summary_json
from mox_unlearn.evaluate.tofu import read_retain_truth_ratios

# The keys of a TOFU_EVAL.json written by open-unlearning's evaluator (eval/tofu/default, d3d7cf9e)
OU_KEYS = {
    "extraction_strength",
    "forget_Q_A_PARA_Prob",
    "forget_Q_A_PERT_Prob",
    "forget_Q_A_Prob",
    "forget_Q_A_ROUGE",
    "forget_quality",
    "forget_truth_ratio",
    "mia_min_k",
    "model_utility",
    "privleak",
    *(f"{s}_{m}" for s in ("ra", "wf") for m in ("Q_A_PERT_Prob", "Q_A_Prob", "Q_A_Prob_normalised", "Q_A_ROUGE")),
    "ra_Truth_Ratio",
    "wf_Truth_Ratio",
    "retain_Q_A_PARA_Prob",
    "retain_Q_A_PERT_Prob",
    "retain_Q_A_Prob",
    "retain_Q_A_ROUGE",
    "retain_Truth_Ratio",
}


def _split(name: str, l_true: float, l_pert: list[float]) -> dict:
    prob = {"value": math.exp(-1.0), "per_item": [math.exp(-1.0)], "avg_loss": [1.0]}
    if name in ("ra", "wf"):
        prob = {"value": 0.4, "per_item": [0.4], "avg_loss": [1.0]}
    return {
        f"{name}_probability": prob,
        f"{name}_truth_ratio": {
            "value": 0.5,
            "per_item": [math.exp(l_true - np.mean(l_pert))],
            "avg_loss_true": [l_true],
            "avg_loss_perturbed": [l_pert],
        },
        f"{name}_rouge": {
            "value": 0.25,
            "per_item": [0.25],
            "generations": ["a b"],
            "references": ["a c d e"],
            "prompts": ["Question: q\nAnswer: "],
            "rouge1_recall": [0.25],
            "rougeL_f1": [0.333],
        },
    }


def hand_result() -> dict:
    metrics = {k: v for s in ("forget", "retain", "ra", "wf") for k, v in _split(s, 2.0, [3.0, 5.0]).items()}
    metrics |= {
        "extraction_strength": {"value": 0.1, "per_item": [0.1]},
        "mia_min_k": {"value": 0.25, "forget_scores": [1.0, 3.0], "holdout_scores": [2.0, 4.0]},
        "forget_quality": {"value": 0.04},
        "model_utility": {"value": 0.3},
        "privleak": {"value": None},
    }
    return {"benchmark": "tofu", "metrics": metrics}


def test_hand_result_in_open_unlearnings_schema():
    ou = tofu_eval_json(hand_result())
    assert set(ou) == OU_KEYS and list(ou) == sorted(ou)
    assert ou["forget_Q_A_Prob"]["value_by_index"] == {"0": {"prob": math.exp(-1.0), "avg_loss": 1.0}}
    para = ou["forget_Q_A_PARA_Prob"]["value_by_index"]["0"]
    assert para == {"prob": math.exp(-2.0), "avg_loss": 2.0}
    pert = ou["retain_Q_A_PERT_Prob"]
    assert pert["value_by_index"]["0"] == {"prob": [math.exp(-3.0), math.exp(-5.0)], "avg_loss": [3.0, 5.0]}
    assert pert["agg_value"] == pytest.approx((math.exp(-3.0) + math.exp(-5.0)) / 2)
    # R = P_pert / P_true with geometric means: exp(-4) / exp(-2)
    assert ou["forget_truth_ratio"]["value_by_index"]["0"]["score"] == pytest.approx(math.exp(-2.0))
    assert ou["ra_Q_A_Prob_normalised"] == {"agg_value": 0.4, "value_by_index": {"0": {"prob": 0.4}}}
    assert ou["wf_Q_A_Prob"]["value_by_index"]["0"]["prob"] == math.exp(-1.0)  # raw, from the average loss
    rouge = ou["forget_Q_A_ROUGE"]["value_by_index"]["0"]
    assert rouge == {
        "rouge1_recall": 0.25,
        "rougeL_f1": 0.333,
        "rougeL_recall": 0.25,
        "input": "Question: q\nAnswer: ",
        "ground_truth": "a c d e",
        "generation": "a b",
    }
    # open-unlearning's AUC is 1 - mox's; its per-item min-k scores are the same numbers
    assert ou["mia_min_k"]["auc"] == ou["mia_min_k"]["agg_value"] == 0.75
    assert ou["mia_min_k"]["forget"] == {"agg_value": 2.0, "value_by_index": {"0": {"score": 1.0}, "1": {"score": 3.0}}}
    assert ou["privleak"] == {"agg_value": None} and ou["forget_quality"] == {"agg_value": 0.04}
    summary = tofu_summary_json(ou)
    assert summary == {
        "extraction_strength": 0.1,
        "forget_Q_A_Prob": math.exp(-1.0),
        "forget_Q_A_ROUGE": 0.25,
        "forget_quality": 0.04,
        "forget_truth_ratio": 0.5,
        "model_utility": 0.3,
    }


def test_results_without_the_per_item_losses_or_of_muse_are_refused():
    old = hand_result()
    del old["metrics"]["retain_truth_ratio"]["avg_loss_true"]
    with pytest.raises(MoxError, match="no retain_truth_ratio.avg_loss_true: written by an older mox"):
        tofu_eval_json(old)
    with pytest.raises(MoxError, match="only TOFU results"):
        tofu_eval_json({"benchmark": "muse", "metrics": {}})


def test_open_unlearnings_muse_eval_gives_the_retain_auc(tmp_path):
    f = tmp_path / "MUSE_EVAL.json"
    f.write_text(json.dumps({"mia_min_k": {"agg_value": 0.7}, "privleak": {"agg_value": 1.0}}))
    auc, source = read_retain_auc(str(f))
    assert auc == pytest.approx(0.3) and source == str(f)
    f.write_text(json.dumps({"privleak": {"agg_value": 1.0}}))
    with pytest.raises(MoxError, match="nor an open-unlearning MUSE_EVAL.json"):
        read_retain_auc(str(f))


@pytest.mark.slow
def test_eval_writes_an_open_unlearning_folder_that_mox_reads_back(tiny_model_dir, data_dir, tmp_path, capsys):
    args = ["eval", "--benchmark", "tofu", "--model", str(tiny_model_dir), "--data", str(data_dir / "tofu")]
    args += ["--forget-split", "forget01", "--limit", "6", "--batch-size", "4", "--prompt", "open-unlearning-qa"]
    out = tmp_path / "ou"
    assert main([*args, "--format", "open-unlearning", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["TOFU_EVAL.json", "TOFU_SUMMARY.json", "mox_result.json"]
    ou = json.loads((out / "TOFU_EVAL.json").read_text())
    # open-unlearning's keys, and its metrics that are not in its default TOFU list besides (the reference
    # attack needs --mia-reference)
    attacks = {"mia_loss", "mia_zlib", "mia_min_k_plus_plus", "mia_gradnorm"}
    assert set(ou) == OU_KEYS | {"exact_memorization"} | attacks and len(ou["forget_Q_A_Prob"]["value_by_index"]) == 6
    assert set(ou["mia_zlib"]) == {"forget", "holdout", "auc", "agg_value"}
    mine = json.loads((out / "mox_result.json").read_text())
    ratios = mine["metrics"]["forget_truth_ratio"]["per_item"]
    # mox's --retain-result reader takes the folder (its mox_result.json) and the bare TOFU_EVAL.json
    r_folder, meta = read_retain_truth_ratios(out)
    r_ou, meta_ou = read_retain_truth_ratios(out / "TOFU_EVAL.json")
    assert np.array_equal(r_folder, ratios) and np.allclose(r_ou, ratios, rtol=0, atol=0)
    assert meta["convention"] is not None and meta_ou["convention"] is None
    assert meta_ou["mia_auc"] == pytest.approx(mine["metrics"]["mia_min_k"]["value"])
    # ... and so does `mox eval`: the model against itself, FQ 1
    again = tmp_path / "again.json"
    assert main([*args, "--retain-result", str(out), "--out", str(again)]) == 0
    assert json.loads(again.read_text())["summary"]["forget_quality"] == pytest.approx(1.0)
    # a second run replaces its own folder, never another one
    assert main([*args, "--format", "open-unlearning", "--out", str(out)]) == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    capsys.readouterr()
    assert main([*args, "--format", "open-unlearning", "--out", str(other)]) == 2
    assert "is not a folder `mox eval --format open-unlearning` wrote" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "keep"
    assert main([*args, "--format", "open-unlearning", "--out", str(tmp_path / "x.json")]) == 2
    assert "ends in .json" in capsys.readouterr().err
