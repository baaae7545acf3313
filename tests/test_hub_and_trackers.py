"""--push-to-hub (offline: what would be uploaded, refusals, no secret in it) and experiment trackers."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from mox_unlearn import hub
from mox_unlearn.cli import main
from mox_unlearn.errors import MoxError
from mox_unlearn.train import tracking

FAST = ["per_device_batch_size=2", "batch_size=2", "lr=1e-3", "warmup_epochs=0", "max_length=64", "--max-steps", "3"]
TOKEN = "hf_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4"  # a made-up token, in the format the redaction knows


class FakeApi:
    """Records what push_folder asks of the Hub client instead of sending it."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kw}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kw):
        self.calls.append(("upload_folder", kw))


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no token file there
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))


def _unlearn(tiny_model_dir, qa_files, out, *extra):
    forget, retain = qa_files
    args = ["unlearn", "--model", str(tiny_model_dir), "--forget", str(forget), "--retain", str(retain)]
    return main([*args, "--out", str(out), *FAST, *extra])


def test_push_is_refused_in_one_line_before_anything_runs(
    no_token, tiny_model_dir, qa_files, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    assert _unlearn(tiny_model_dir, qa_files, out, "--push-to-hub", "me/model") == 2
    assert "needs a Hugging Face token with write access" in capsys.readouterr().err and not out.exists()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _unlearn(tiny_model_dir, qa_files, out, "--push-to-hub", "me/model") == 2
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err and not out.exists()
    with pytest.raises(MoxError, match="is not a Hub repo id"):
        hub.check_can_push("../../etc")
    args = ["extrapolate", "--ref", str(tiny_model_dir), "--mem", str(tiny_model_dir), "--out", str(tmp_path / "x")]
    assert main([*args, "--alpha", "1", "--alpha", "2", "--push-to-hub", "me/m"]) == 2
    assert "give one --alpha" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_push_uploads_the_finished_model_privately_and_no_secret_travels(
    no_token, tiny_model_dir, qa_files, tmp_path, monkeypatch
):
    """What can be checked offline: the calls made to the Hub client (a stand-in), the folder they name,
    and that the token is in none of its files. The upload itself needs the network and a real token."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    api = FakeApi()
    monkeypatch.setattr(hub, "push_folder", _with_api(hub.push_folder, api))
    from accelerate import Accelerator

    barrier = Accelerator.wait_for_everyone  # the upload comes after the last barrier: with many processes,
    monkeypatch.setattr(  # the others must not wait (and time out) on a long upload, or hang on a failed one
        Accelerator, "wait_for_everyone", lambda self: (api.calls.append(("barrier", {})), barrier(self))[1]
    )
    out = tmp_path / "run"
    assert _unlearn(tiny_model_dir, qa_files, out, "--push-to-hub", "me/forgetful") == 0
    assert api.calls[-3][0] == "barrier"
    api.calls = [c for c in api.calls if c[0] != "barrier"]
    (create, repo), (upload, sent) = api.calls
    assert (create, upload) == ("create_repo", "upload_folder")
    assert repo == {"repo_id": "me/forgetful", "private": True, "exist_ok": True, "repo_type": "model"}
    assert Path(sent["folder_path"]) == out / "model" and sent["repo_id"] == "me/forgetful"
    assert sent["allow_patterns"] == hub.upload_files(out / "model")
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(sent["allow_patterns"])
    for name in sent["allow_patterns"]:
        assert TOKEN.encode() not in (out / "model" / name).read_bytes()
    for f in out.rglob("*"):  # nor anywhere in the run folder
        assert not f.is_file() or TOKEN.encode() not in f.read_bytes()


def _with_api(push, api):
    def push_with(folder, repo_id, *, private=True):
        return push(folder, repo_id, private=private, api=api)

    return push_with


def test_a_failed_upload_keeps_the_model_and_says_how_to_retry(tmp_path):
    class Broken(FakeApi):
        def upload_folder(self, **kw):
            raise ConnectionError("no route to host")

    folder = tmp_path / "my model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(MoxError, match=r"failed \(ConnectionError: no route to host\)") as info:
        hub.push_folder(folder, "me/m", api=Broken())
    # the retry creates the repository private too, as the push would have, and takes the path as one word
    assert f"`hf upload me/m '{folder}' --private`" in str(info.value)
    with pytest.raises(MoxError) as info:
        hub.push_folder(folder, "me/m", private=False, api=Broken())
    assert f"`hf upload me/m '{folder}'`" in str(info.value)
    assert (folder / "config.json").is_file()
    with pytest.raises(MoxError, match="not a model folder"):
        hub.push_folder(tmp_path, "me/m", api=FakeApi())


def test_tracker_settings_by_hand(monkeypatch):
    assert tracking.flat_hparams(
        {"lr": 1e-3, "prompt": {"boundary": "joint", "system_prompt": None}, "loss": {}, "g": [1, 2]}
    ) == {
        "lr": 1e-3,
        "prompt.boundary": "joint",
        "prompt.system_prompt": "null",
        "g": "[1, 2]",
    }
    assert tracking.numeric({"step": 3, "loss": 0.5, "lr": 1, "skipped": "nan", "ok": True}, "final/") == {
        "final/loss": 0.5,
        "final/lr": 1.0,
    }
    with pytest.raises(MoxError, match="log_with must be one of none, tensorboard, wandb, mlflow, all"):
        tracking.check_log_with("neptune")
    have = {"tensorboardX", "mlflow"}  # all = ours that are installed, never accelerate's every-package "all"
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: name if name in have else None)
    assert tracking.accelerate_log_with("all") == ["tensorboard", "mlflow"]
    assert tracking.accelerate_log_with("wandb") == ["wandb"] and tracking.accelerate_log_with("none") is None
    with pytest.raises(MoxError, match="log_with=wandb needs the wandb package: pip install wandb"):
        tracking.check_log_with("wandb")
    have.clear()
    with pytest.raises(MoxError, match="log_with=all: none of tensorboard, wandb, mlflow is installed"):
        tracking.check_log_with("all")


@pytest.mark.slow
def test_tensorboard_gets_the_loss_curve_and_default_runs_write_no_tracker_files(tiny_model_dir, qa_files, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package (mox-unlearn[trackers])")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    assert _unlearn(tiny_model_dir, qa_files, out, "log_with=tensorboard") == 0
    events = list((out / "trackers").rglob("events.out.tfevents.*"))
    assert events
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    scalars = {}
    for e in events:
        acc = EventAccumulator(str(e))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((s.step, s.value) for s in acc.Scalars(tag))
    assert sorted(scalars["loss"]) == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in logged]
    assert "final/loss" in scalars and "lr" in scalars
    plain = tmp_path / "plain"
    assert _unlearn(tiny_model_dir, qa_files, plain) == 0
    assert not (plain / "trackers").exists()


def _interrupt_and_resume(tiny_model_dir, qa_files, out, tracker: str) -> dict:
    """A 4-step run logging to `tracker`, stopped after step 3 (its checkpoint is step 2's), then resumed;
    returns the tracker run ids the first session kept in runs.json ({} where it kept none)."""
    from mox_unlearn import train

    class StopAt(train.Callback):
        def on_step_end(self, run) -> None:
            if run.progress.step == 3:
                raise KeyboardInterrupt

    forget, retain = qa_files
    args = ["unlearn", "--model", str(tiny_model_dir), "--forget", str(forget), "--retain", str(retain)]
    common = [*args, "--out", str(out), *FAST, "--max-steps", "4", "checkpoint_every=2", "log_every=1"]
    assert main([*common, f"log_with={tracker}"], callbacks=[StopAt()]) == 130
    ids = out / "trackers" / "runs.json"
    first = json.loads(ids.read_text()) if ids.is_file() else {}
    assert main(["unlearn", "--resume", "--out", str(out)]) == 0
    return first


@pytest.mark.slow
def test_a_resumed_run_logs_each_step_once_in_tensorboard(tiny_model_dir, qa_files, tmp_path):
    """Steps logged after the last checkpoint of an interrupted run are trained and logged again on
    --resume; TensorBoard must show them once (the resumed writer purges what follows the checkpoint)."""
    pytest.importorskip("tensorboard", reason="the tensorboard package (mox-unlearn[trackers])")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    _interrupt_and_resume(tiny_model_dir, qa_files, out, "tensorboard")
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    run_dir = out / "trackers" / out.name  # the scalars; hparams go to subfolders of it
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2  # one file per session
    acc = EventAccumulator(str(run_dir))  # the whole run: both sessions' event files, as TensorBoard reads it
    acc.Reload()
    assert [(s.step, pytest.approx(s.value, rel=1e-6)) for s in acc.Scalars("loss")] == [
        (r["step"], r["loss"]) for r in logged
    ]


class _FakeTracker:
    def __init__(self, name, run_ids, **kwargs):
        self.name, self.kwargs, self.logged, self.finished = name, kwargs, [], False
        if name == "wandb":
            self.run = SimpleNamespace(id=kwargs.get("id", run_ids[name]))
        if name == "mlflow":
            self.active_run = SimpleNamespace(info=SimpleNamespace(run_id=kwargs.get("run_id", run_ids[name])))

    def log(self, values, step):
        self.logged.append((step, sorted(values)))

    def finish(self):
        self.finished = True


class _FakeAccelerator:
    """accelerate's tracker interface as Trackers uses it; each session's trackers get fresh run ids."""

    is_main_process = True

    def __init__(self, run_ids):
        self.run_ids, self.trackers = run_ids, []

    def init_trackers(self, name, config, init_kwargs):
        self.init_kwargs = init_kwargs
        self.trackers = [_FakeTracker(t, self.run_ids, **init_kwargs.get(t, {})) for t in self.run_ids]


def test_a_resumed_run_continues_its_wandb_and_mlflow_runs_and_sends_each_step_once(tmp_path):
    """Session 1 logs steps 1-3 and stops (checkpoint at 2); session 2 resumes at 2: wandb and MLflow get
    their run ids back and are not sent step 3 again, TensorBoard purges from step 3 and takes it again."""
    first = _FakeAccelerator({"tensorboard": None, "wandb": "w-1", "mlflow": "m-1"})
    run = tracking.Trackers(first, "all", tmp_path)
    run.start("r", {"lr": 1e-3})
    assert first.init_kwargs == {}
    assert json.loads((tmp_path / "trackers" / "runs.json").read_text()) == {"wandb": "w-1", "mlflow": "m-1"}
    for step in (1, 2, 3):
        run.log({"step": step, "loss": 0.5}, step)
    run.close()

    second = _FakeAccelerator({"tensorboard": None, "wandb": "w-2", "mlflow": "m-2"})
    resumed = tracking.Trackers(second, "all", tmp_path)
    resumed.start("r", {"lr": 1e-3}, resumed_at=2, logged_through=3)
    assert second.init_kwargs == {
        "tensorboard": {"purge_step": 3},
        "wandb": {"id": "w-1", "resume": "allow"},
        "mlflow": {"run_id": "m-1"},
    }
    for step in (3, 4):
        resumed.log({"step": step, "loss": 0.4}, step)
    resumed.finish({"loss": 0.4}, 4)
    by_name = {t.name: t for t in second.trackers}
    assert by_name["tensorboard"].logged == [(3, ["loss"]), (4, ["loss"]), (4, ["final/loss"])]
    for name in ("wandb", "mlflow"):
        assert by_name[name].logged == [(4, ["loss"]), (4, ["final/loss"])] and by_name[name].finished
    assert json.loads((tmp_path / "trackers" / "runs.json").read_text()) == {"wandb": "w-1", "mlflow": "m-1"}


def test_a_resume_without_tracker_ids_starts_new_tracker_runs(tmp_path):
    (tmp_path / "trackers").mkdir()
    (tmp_path / "trackers" / "runs.json").write_text("{not json")
    acc = _FakeAccelerator({"wandb": "w-2"})
    tracking.Trackers(acc, "wandb", tmp_path).start("r", {}, resumed_at=2, logged_through=2)
    assert acc.init_kwargs == {"tensorboard": {"purge_step": 3}}
    assert json.loads((tmp_path / "trackers" / "runs.json").read_text()) == {"wandb": "w-2"}


def test_truncate_log_says_how_far_the_interrupted_session_logged(tmp_path):
    from mox_unlearn.train.folder import RunFolder

    folder = RunFolder(tmp_path)
    assert folder.truncate_log(2) is None
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in (1, 2, 3, 4)] + ['{"step": 5, "lo']
    folder.log_path.write_text("\n".join(lines))
    assert folder.truncate_log(2) == 4
    assert [json.loads(line)["step"] for line in folder.log_path.read_text().splitlines()] == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_a_resumed_run_logs_each_step_once_in_mlflow_and_wandb(
    tracker, tiny_model_dir, qa_files, tmp_path, monkeypatch
):
    """The real packages, offline: MLflow's local file store and wandb's offline mode. The resumed session
    logs into the interrupted session's run, and MLflow's history has every step once."""
    pytest.importorskip(tracker, reason=f"the {tracker} package")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # no database backend needed for a test
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")

    out = tmp_path / "run"
    first = _interrupt_and_resume(tiny_model_dir, qa_files, out, tracker)[tracker]
    assert json.loads((out / "trackers" / "runs.json").read_text())[tracker] == first
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    if tracker == "wandb":  # offline: both sessions write into the one run's id
        assert {p.name.rsplit("-", 1)[-1] for p in (tmp_path / "wandb").glob("offline-run-*")} == {first}
        return
    from mlflow.tracking import MlflowClient

    history = MlflowClient().get_metric_history(first, "loss")
    assert sorted((m.step, pytest.approx(m.value, rel=1e-6)) for m in history) == [
        (r["step"], r["loss"]) for r in logged
    ]
    assert [m.step for m in MlflowClient().get_metric_history(first, "final/loss")] == [4]
