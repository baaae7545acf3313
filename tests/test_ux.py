"""What a new user trips over (issue 22): a hub id the hub cannot answer for, a typo in a local path."""

from __future__ import annotations

import pytest

from mox_unlearn.cli import main
from mox_unlearn.errors import MoxError
from mox_unlearn.io import loading


@pytest.fixture
def hub_unreachable(monkeypatch):
    """The hub's endpoint is a closed local port: every request fails at once, as with no network."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")


def test_a_hub_id_the_hub_cannot_answer_for_is_one_line_at_once(
    hub_unreachable, qa_files, tmp_path, capsys, monkeypatch
):
    """One request with a short timeout, then one line: transformers, whose retries with backoff take about a
    minute, is never reached."""
    import transformers

    def never(*args, **kwargs):
        raise AssertionError("transformers was asked to load a model the hub cannot serve")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", never)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", never)
    forget, retain = qa_files
    args = ["unlearn", "--model", "someone/no-such-model", "--forget", str(forget), "--retain", str(retain)]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not a local folder and the Hugging Face hub cannot be reached" in err
    assert not (tmp_path / "run").exists()
    with pytest.raises(MoxError, match="hub cannot be reached"):
        loading.load_model("someone/no-such-model", "float32")


def test_a_typo_in_a_local_path_is_never_a_hub_lookup(hub_unreachable, qa_files, tmp_path, monkeypatch, capsys):
    forget, retain = qa_files
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    args = ["unlearn", "--model", "runs/tiny-modle", "--forget", str(forget), "--retain", str(retain), "--out", "o"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "model folder not found: runs/tiny-modle" in err and "hub" not in err


def _no_load_dataset(monkeypatch):
    import datasets

    def never(*args, **kwargs):
        raise AssertionError("datasets was asked to load a dataset the hub cannot serve")

    monkeypatch.setattr(datasets, "load_dataset", never)


def test_a_hub_dataset_the_hub_cannot_answer_for_is_one_line_at_once(
    hub_unreachable, tiny_model_dir, qa_files, tmp_path, monkeypatch, capsys
):
    """datasets retries with backoff for about 25 s before it gives up: an `hf:` spec and a MUSE hub id are
    checked with one short request first."""
    from mox_unlearn.evaluate.muse import load_muse

    _no_load_dataset(monkeypatch)
    forget, retain = qa_files
    args = ["unlearn", "--model", str(tiny_model_dir), "--forget", "hf:someone/no-such-data", "--retain", str(retain)]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "'someone/no-such-data' is not a local file or folder and the Hugging Face hub cannot be reached" in err
    assert "HF_DATASETS_OFFLINE=1" in err and not (tmp_path / "run").exists()
    with pytest.raises(MoxError, match="hub cannot be reached"):
        load_muse("someone/no-such-muse", "verbmem_forget")


def test_offline_mode_leaves_a_hub_dataset_to_datasets(hub_unreachable, monkeypatch):
    """With HF_HUB_OFFLINE the cache is the user's choice: no request, and datasets answers (here, a sentinel)."""
    import datasets
    from huggingface_hub import constants

    from mox_unlearn.data.records import load_records

    class Asked(Exception):
        pass

    def asked(*args, **kwargs):
        raise Asked

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets, "load_dataset", asked)
    with pytest.raises(MoxError, match="cannot load dataset hf:someone/cached"):
        load_records("hf:someone/cached", name="forget", kind="qa")


def _threads_in_a_fresh_process(env_extra: dict, threads: str) -> list[str]:
    import os
    import subprocess
    import sys

    code = (
        "import os, sys\n"
        "from mox_unlearn.cli import _set_threads\n"
        f"_set_threads({threads})\n"
        "import torch\n"
        "print(torch.get_num_threads(), os.environ.get('OMP_WAIT_POLICY'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MOX_THREADS_AUTO")}
    done = subprocess.run([sys.executable, "-c", code], env={**env, **env_extra}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.slow
def test_threads_and_the_openmp_wait_policy():
    """mox lets OpenMP threads sleep instead of spin (PASSIVE) unless told otherwise; --threads sets the pool."""
    assert _threads_in_a_fresh_process({}, "1") == ["1", "PASSIVE"]
    assert _threads_in_a_fresh_process({"OMP_WAIT_POLICY": "ACTIVE"}, "None")[1] == "ACTIVE"
    assert _threads_in_a_fresh_process({"MOX_THREADS_AUTO": "0"}, "None")[1] == "None"


def test_threads_below_one_are_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--benchmark", "tofu", "--model", "m", "--out", "r.json", "--threads", "0"])
    assert e.value.code == 2 and "--threads must be >= 1, got 0" in capsys.readouterr().err


def test_report_reads_method_and_alpha_from_the_model_card_and_says_what_is_partial(tmp_path, capsys):
    import json

    from mox_unlearn.io.cards import write_model_card

    write_model_card(tmp_path / "m", title="t", fields={"method": "MOX extrapolation (Eq. 8)", "alpha": "4"})
    summary = {"forget_quality": 0.2, "model_utility": 0.5, "forget_rouge": 0.3, "retain_rouge": 0.6, "privleak": None}
    files = {
        "mox-a4.json": {"benchmark": "tofu", "model": str(tmp_path / "m"), "summary": summary, "limit": 6},
        "npo.json": {"benchmark": "tofu", "model": "someone/npo", "summary": {**summary, "forget_quality": None}},
    }
    for name, result in files.items():
        (tmp_path / name).write_text(json.dumps(result))
    assert main(["report", *(str(tmp_path / n) for n in files), "--out", str(tmp_path / "rep")]) == 0
    printed = capsys.readouterr().out
    rows = {r["name"]: r for r in json.loads((tmp_path / "rep" / "results.json").read_text())["rows"]}
    assert (rows["mox-a4"]["method"], rows["mox-a4"]["alpha"]) == ("mox", 4.0)
    assert rows["npo"]["method"] is None  # unknown, not the file name
    md = (tmp_path / "rep" / "results.md").read_text()
    for text in (
        "Evaluated with --limit, on the first items of each split only: mox-a4 (first 6).",
        "not comparable",
        "Not in the FQ/MU plot (no FQ or MU: evaluate with --retain-result): npo.",
    ):
        assert text in md and text in printed


@pytest.mark.slow
def test_unlearn_into_a_finished_run_does_not_suggest_resume(tiny_model_dir, qa_files, tmp_path, capsys):
    forget, retain = qa_files
    base = ["unlearn", "--model", str(tiny_model_dir), "--forget", str(forget), "--retain", str(retain)]
    fast = ["per_device_batch_size=2", "batch_size=2", "max_length=64", "--max-steps", "1"]
    assert main([*base, "--out", str(tmp_path / "run"), *fast]) == 0
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "run"), *fast]) == 2
    err = capsys.readouterr().err
    assert "holds a finished run (run.json)" in err and "--resume" not in err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    assert main([*base, "--out", str(tmp_path / "other"), *fast]) == 2
    assert "(use --overwrite)" in capsys.readouterr().err  # no checkpoint there: nothing to resume either
