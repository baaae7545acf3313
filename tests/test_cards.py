"""Model cards: Hub metadata parsed by huggingface_hub, and no absolute path of the machine in a run folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from mox_unlearn.cli import main
from mox_unlearn.errors import MoxError
from mox_unlearn.io import portable as portable_module
from mox_unlearn.io.cards import attach_results, hub_datasets, source_metadata, write_model_card
from mox_unlearn.io.portable import portable, portable_argv, relative_to, resolve_config

FAST = ["per_device_batch_size=2", "batch_size=2", "lr=1e-3", "warmup_epochs=0", "max_length=64", "--max-steps", "2"]
LORA = ["lora=true", "lora_r=4", "lora_alpha=8"]


@pytest.fixture
def inputs(tmp_path, tiny_model_dir, qa_files):
    """The tiny model, with a card that records a hub base model and a license, and the data, all under
    tmp_path, so every input path starts with the run folder's parent."""
    model = tmp_path / "in" / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "README.md").write_text("---\nbase_model: org/tiny-base\nlicense: mit\n---\n\n# tiny\n")
    for f in qa_files:
        shutil.copy(f, tmp_path / "in" / f.name)
    return model, tmp_path / "in" / qa_files[0].name, tmp_path / "in" / qa_files[1].name


def _no_machine_path(folder: Path, *paths: Path) -> None:
    needles = {str(p).encode() for p in paths} | {str(p.resolve()).encode() for p in paths}
    files = [f for f in folder.rglob("*") if f.is_file()]
    assert files
    for f in files:
        data = f.read_bytes()
        assert not any(n in data for n in needles), f"{f.relative_to(folder)} names a path of this machine"


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["save_epochs=true"], LORA], ids=["full", "lora"])
def test_a_run_folder_names_no_absolute_path_and_its_cards_carry_hub_metadata(inputs, tmp_path, extra):
    model, forget, retain = inputs
    out = tmp_path / "run"
    args = ["unlearn", "--model", str(model), "--forget", str(forget), "--retain", str(retain), "--out", str(out)]
    assert main([*args, *FAST, *extra]) == 0
    _no_machine_path(out, tmp_path)
    card = ModelCard.load(out / "model" / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert {"mox-unlearn", "unlearning", "mox"} <= set(card.data.tags)
    assert (card.data.base_model, card.data.base_model_relation, card.data.license) == (
        "org/tiny-base",
        "finetune",
        "mit",
    )
    assert "| source model | ../in/model |" in card.text
    assert json.loads((out / "data.json").read_text())["forget"]["source"] == "../in/forget.jsonl"
    assert (out / "command.txt").read_text().splitlines()[1].startswith("mox unlearn --model ../in/model --forget")
    if "lora=true" in extra:  # every adapter folder has a card of its own, and names its base the same way
        for name in ("memorized-adapter", "forget-adapter"):
            adapter = ModelCard.load(out / name / "README.md").data
            assert (adapter.library_name, adapter.base_model, adapter.base_model_relation) == (
                "peft",
                "org/tiny-base",
                "adapter",
            )
            config = json.loads((out / name / "adapter_config.json").read_text())
            assert config["base_model_name_or_path"] == "../in/model"
    else:
        assert ModelCard.load(out / "epochs" / "epoch-1" / "README.md").data.base_model == "org/tiny-base"


@pytest.mark.slow
def test_a_run_with_relative_paths_resumes_from_its_folder_elsewhere(inputs, tmp_path, monkeypatch):
    """config.yaml names inputs relative to the run folder: `--resume --out DIR` works from any directory."""
    model, forget, retain = inputs
    monkeypatch.chdir(tmp_path)
    args = ["unlearn", "--model", "in/model", "--forget", "in/forget.jsonl", "--retain", "in/retain.json"]
    assert main([*args, "--out", "run", *FAST, "checkpoint_every=1", "keep_checkpoints=true"]) == 0
    (tmp_path / "run" / "run.json").unlink()  # as if it stopped after its last checkpoint
    elsewhere = tmp_path / "in"
    monkeypatch.chdir(elsewhere)
    assert main(["unlearn", "--resume", "--out", "../run"]) == 0
    assert (tmp_path / "run" / "run.json").is_file()


@pytest.mark.slow
def test_a_run_config_is_a_config_for_a_new_run_from_anywhere(inputs, tmp_path, monkeypatch):
    """`--config RUN/config.yaml` reruns a run (another seed, another lr): its paths, relative to the run
    folder, are read relative to it, from any directory; its own `out` is replaced by --out."""
    model, forget, retain = inputs
    monkeypatch.chdir(tmp_path)
    args = ["unlearn", "--model", "in/model", "--forget", "in/forget.jsonl", "--retain", "in/retain.json"]
    assert main([*args, "--out", "runs/first", *FAST]) == 0
    monkeypatch.chdir(tmp_path / "in")
    assert main(["unlearn", "--config", "../runs/first/config.yaml", "--out", "../runs/second", "seed=1"]) == 0
    data = json.loads((tmp_path / "runs" / "second" / "data.json").read_text())
    assert (data["forget"]["source"], data["retain"]["source"]) == ("../../in/forget.jsonl", "../../in/retain.json")
    config = (tmp_path / "runs" / "second" / "config.yaml").read_text()
    assert "model: ../../in/model" in config and "seed: 1" in config


def test_extrapolate_cards_name_their_inputs_relative_to_the_output(inputs, tmp_path):
    model, _, _ = inputs
    out = tmp_path / "x"
    assert main(["extrapolate", "--ref", str(model), "--mem", str(model), "--alpha", "1", "--out", str(out)]) == 0
    _no_machine_path(out, tmp_path)
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "org/tiny-base" and "../in/model" in card.text


def test_card_metadata_by_hand(tmp_path):
    write_model_card(
        tmp_path,
        title="t",
        fields={"a": 1},
        source="org/base-model",
        datasets=["hf:locuslab/TOFU:forget10", "local.jsonl", None, "hf:locuslab/TOFU:retain90"],
        tags=["npo"],
    )
    data = ModelCard.load(tmp_path / "README.md").data
    assert (data.base_model, data.base_model_relation, data.datasets) == (
        "org/base-model",
        "finetune",
        ["locuslab/TOFU"],
    )
    assert data.tags == ["mox-unlearn", "unlearning", "npo"] and data.license is None
    assert hub_datasets(["hf:a/b", "hf:a/b:x", "hf:c/d::train"]) == ["a/b", "c/d"]
    # a local folder passes on what its card records: this one, the hub id it was made from
    assert source_metadata(str(tmp_path)) == {"base_model": "org/base-model"}
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "README.md").write_text("# a README without a YAML header\n")
    (plain / "config.json").write_text(json.dumps({"license": "apache-2.0"}))
    assert source_metadata(str(plain)) == {"license": "apache-2.0"}
    assert source_metadata(None) == {}


def test_report_card_attaches_a_model_index(tmp_path, capsys):
    write_model_card(tmp_path / "m", title="t", fields={}, source="org/base")
    result = {
        "benchmark": "tofu",
        "forget_split": "forget10",
        "limit": None,
        "summary": {
            "forget_quality": 0.5,
            "model_utility": 0.4,
            "forget_rouge": 0.3,
            "retain_rouge": 0.6,
            "privleak": None,
        },
        "metrics": {},
    }
    (tmp_path / "r.json").write_text(json.dumps(result))
    assert main(["report", str(tmp_path / "r.json"), "--card", str(tmp_path / "m")]) == 0
    data = ModelCard.load(tmp_path / "m" / "README.md").data
    got = {(r.dataset_type, r.dataset_name, r.metric_type): r.metric_value for r in data.eval_results}
    assert got == {
        ("locuslab/TOFU", "TOFU forget10", "forget_quality"): 0.5,
        ("locuslab/TOFU", "TOFU forget10", "model_utility"): 0.4,
        ("locuslab/TOFU", "TOFU forget10", "forget_rouge"): 0.3,
        ("locuslab/TOFU", "TOFU forget10", "retain_rouge"): 0.6,
    }
    assert data.base_model == "org/base"  # the rest of the header stays
    with pytest.raises(MoxError, match="not found: --card takes a model folder"):
        attach_results(tmp_path / "nothing", [result])


def test_portable_paths(tmp_path, monkeypatch):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "f.jsonl").write_text("")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    assert relative_to(str(tmp_path / "in" / "f.jsonl"), run) == "../../in/f.jsonl"
    assert relative_to("in/f.jsonl", run) == "../../in/f.jsonl"
    assert relative_to("org/model", run) == "org/model" and relative_to("hf:locuslab/TOFU:forget10", run).startswith(
        "hf:"
    )

    def other_drive(path, start):  # what os.path.relpath does on Windows across drives
        raise ValueError("path is on mount 'D:', start on mount 'C:'")

    monkeypatch.setattr(portable_module.os.path, "relpath", other_drive)
    assert relative_to("in/f.jsonl", run) == str(tmp_path / "in" / "f.jsonl")  # stays absolute
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    argv = [
        "mox",
        "unlearn",
        "--model",
        str(tmp_path / "in"),
        f"--forget={tmp_path}/in/f.jsonl",
        f"refusals={tmp_path}/in/f.jsonl",
    ]
    assert portable_argv(argv, run) == [
        "mox",
        "unlearn",
        "--model",
        "../../in",
        "--forget=../../in/f.jsonl",
        "refusals=../../in/f.jsonl",
    ]
    back = resolve_config({"model": "../../in", "forget": "hf:x/y", "retain": "../../in/f.jsonl", "out": "."}, run)
    assert back == {
        "model": str(tmp_path / "in"),
        "forget": "hf:x/y",
        "retain": str(tmp_path / "in" / "f.jsonl"),
        "out": str(run),
    }
    # a path that names nothing any more (the inputs moved) stays a path from the run folder, to be reported
    # missing, instead of being read relative to wherever the command runs; a bare name is a hub id
    gone = resolve_config({"model": "../../gone", "holdout": "../h.jsonl", "refusals": "r.jsonl"}, run)
    assert gone == {
        "model": str(tmp_path / "gone"),
        "holdout": str(tmp_path / "runs" / "h.jsonl"),
        "refusals": str(run / "r.jsonl"),
    }
    assert resolve_config({"model": "org/model"}, run)["model"] == "org/model"


def test_only_paths_are_made_relative(tmp_path, monkeypatch):
    """Words that name a local folder by chance, values that start with "/", and values too long to be a
    file name are left as they are; only path flags and keys, and existing absolute paths, are rewritten."""
    (tmp_path / "data").mkdir()
    (tmp_path / "mox").mkdir()
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    argv = ["mox", "unlearn", "--method", "data", "--forget", "data", "method=data", "retain=data", "x" * 300]
    argv += ["prompt.system_prompt=/no_think", "alternates_prompt=" + "y" * 300, f"--out={tmp_path}/runs/a"]
    assert portable_argv(argv, run) == [
        "mox",
        "unlearn",
        "--method",
        "data",
        "--forget",
        "../../data",
        "method=data",
        "retain=../../data",
        "x" * 300,
        "prompt.system_prompt=/no_think",
        "alternates_prompt=" + "y" * 300,
        "--out=.",
    ]
    info = {"prompt": {"system_prompt": "/no_think"}, "note": "/ 2 steps skipped", "model": str(tmp_path / "data")}
    assert portable(info, run) == {**info, "model": "../../data"}
