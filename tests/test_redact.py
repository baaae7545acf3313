"""No secrets from the environment in what a run writes (issue 9): redact.py, and a whole run folder grepped."""

from __future__ import annotations

from test_unlearn import run

from mox_unlearn.redact import is_secret_name, redact, redact_text, secret_values

HF = "hf_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZ01234567"  # the shape of a Hugging Face token (34 characters)


def test_secret_names():
    for name in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "WANDB_API_KEY",
        "AWS_SECRET_ACCESS_KEY",
        "DB_PASSWORD",
        "OPENAI_APIKEY",
    ):
        assert is_secret_name(name), name
    for name in ("TOKENIZERS_PARALLELISM", "HF_HOME", "PATH", "KEYBOARD_LAYOUT", "MOX_DATA_DIR"):
        assert not is_secret_name(name), name


def test_environment_values_are_replaced_by_their_name():
    env = {"HF_TOKEN": "s3cr3t-value-123", "MY_TOKEN": "1", "HOME": "/home/someone-long"}
    assert secret_values(env) == {"s3cr3t-value-123": "HF_TOKEN"}  # too short to be a secret: MY_TOKEN=1
    text = "mox unlearn --model x token=s3cr3t-value-123 --out /home/someone-long/run"
    assert redact_text(text, env) == "mox unlearn --model x token=<redacted:HF_TOKEN> --out /home/someone-long/run"


def test_known_token_formats_and_url_passwords_without_the_environment():
    env: dict[str, str] = {}
    assert redact_text(f"--model {HF}", env) == "--model <redacted>"
    assert redact_text("ghp_" + "a" * 36, env) == "<redacted>"
    assert (
        redact_text("https://user:pa55word@hub.example.org/models", env)
        == "https://user:<redacted>@hub.example.org/models"
    )
    # what must survive: hub ids, data specs, paths, hf_ followed by a short word
    for keep in (
        "hf:locuslab/TOFU:forget10",
        "HuggingFaceTB/SmolLM2-135M",
        "/data/hf_cache/model",
        "hf_transfer",
        "https://hub.example.org/models",
    ):
        assert redact_text(keep, env) == keep


def test_redact_walks_nested_values_and_leaves_the_input_alone():
    env = {"HF_TOKEN": HF}
    config = {"model": f"x/{HF}", "loss": {"beta": 0.1}, "grid": [1.0, f"a{HF}"], "pair": (HF, 3), "n": None}
    out = redact(config, env)
    assert out == {
        "model": "x/<redacted:HF_TOKEN>",
        "loss": {"beta": 0.1},
        "grid": [1.0, "a<redacted:HF_TOKEN>"],
        "pair": ("<redacted:HF_TOKEN>", 3),
        "n": None,
    }
    assert config["model"] == f"x/{HF}"


def test_no_file_of_a_run_folder_holds_a_secret(tiny_model_dir, qa_files, tmp_path, monkeypatch):
    other = "wandb-" + "9" * 24  # a secret of no known format, known only from its variable's name
    monkeypatch.setenv("HF_TOKEN", HF)
    monkeypatch.setenv("WANDB_API_KEY", other)
    out = tmp_path / "run"
    untracked = "hf_" + "Q" * 30  # an HF-shaped token that is in no variable
    assert (
        run(
            tiny_model_dir,
            qa_files,
            out,
            "--max-steps",
            "2",
            "keep_checkpoints=true",
            "checkpoint_every=1",
            f"alternates_prompt={HF} {other} {untracked}",
            "--alpha",
            "2",
        )
        == 0
    )
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {"config.yaml", "command.txt", "run.json", "README.md"} <= {p.name for p in files}
    for path in files:
        data = path.read_bytes()
        for secret in (HF, other, untracked):
            assert secret.encode() not in data, f"{secret} in {path}"
    assert "<redacted:HF_TOKEN> <redacted:WANDB_API_KEY> <redacted>" in (out / "config.yaml").read_text()
    assert "<redacted:HF_TOKEN>" in (out / "command.txt").read_text()


def test_model_cards_and_eval_results_are_redacted(tiny_model_dir, tmp_path, monkeypatch):
    """Every model card (io.cards.write_model_card) and `mox eval`'s result file go through redact()."""
    from mox_unlearn.io.cards import write_model_card

    secret = "hf_" + "c" * 30
    monkeypatch.setenv("HF_TOKEN", secret)
    write_model_card(tmp_path, title="t", fields={"source model": f"https://user:{secret}@example.org/m"})
    card = (tmp_path / "README.md").read_text()
    assert secret not in card and "<redacted" in card
