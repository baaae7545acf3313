"""A run folder written before the training loop became a run of named phases (issue 15) still resumes
to the weights its own code reached: tests/fixtures/resume-v1/ holds two runs (full weights and LoRA,
MOX with momentum) interrupted after step 2 of 4, and the outputs of the uninterrupted runs, all made
by commit 36f0e61 (tests/fixtures/make_resume_v1.py). Checkpoint registration order, RNG consumption
order and the data order all have to be unchanged for this to hold.

Equal up to ATOL, not bitwise: on another CPU than the fixture's, the same code rounds the same sums
differently in the last bits (measured on an AVX-512 AMD EPYC: at most 1.5e-8), while the two steps after the
checkpoint move every tensor by at least 7e-4, so a resume that trains other steps is far outside it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mox_unlearn.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "resume-v1"
ATOL = 1e-6


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the fixture was made with one thread: the same float reductions
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_a_pre_change_run_folder_resumes_to_the_weights_of_its_uninterrupted_run(
    kind, tmp_path, monkeypatch, one_thread
):
    if kind == "lora":
        pytest.importorskip("peft")
    work = tmp_path / "fixture"
    shutil.copytree(FIXTURE, work)
    monkeypatch.chdir(work)  # the fixture's config.yaml names its model and data by relative paths
    assert main(["unlearn", "--resume", "--out", f"run-{kind}"]) == 0
    expected = load_file(f"expected-{kind}.safetensors")
    for out in ("model", "memorized"):
        got = load_file(f"run-{kind}/{out}/model.safetensors")
        want = {k.split(".", 1)[1]: v for k, v in expected.items() if k.startswith(out + ".")}
        assert got.keys() == want.keys(), out
        differ = [k for k in got if not torch.allclose(got[k], want[k], rtol=0, atol=ATOL)]
        assert not differ, f"{out}: {len(differ)} tensors differ from the pre-change run, e.g. {differ[0]}"
    if kind == "full":  # the tolerance cannot hide the resumed steps: they move every tensor far more
        step2 = load_file(FIXTURE / f"run-{kind}" / "checkpoints" / "step-2" / "model.safetensors")
        final = {k.split(".", 1)[1]: v for k, v in expected.items() if k.startswith("memorized.")}
        moved = [(step2[k] - final[k]).abs().max().item() for k in step2 if k in final]
        assert moved and min(moved) > 100 * ATOL
