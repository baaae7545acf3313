"""Config: YAML, flags and key=value overrides with types and one-line errors."""

import pytest

from mox_unlearn.config import UnlearnConfig, check_config, load_config, parse_override, to_dict
from mox_unlearn.errors import MoxError


def test_precedence_defaults_yaml_flags_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 2.0e-5\nepochs: 3\nalpha: 2\nprompt:\n  chat_template: never\nloss:\n  lambda_kl: 0.5\n")
    cfg = load_config(
        f, ["epochs=4", "loss.beta=0.2", "prompt.question_template=Q: {question}\\nA:"], {"alpha": 8.0, "model": None}
    )
    assert cfg.lr == 2e-5 and cfg.epochs == 4 and cfg.alpha == 8.0 and isinstance(cfg.alpha, float)
    assert cfg.loss == {"lambda_kl": 0.5, "beta": 0.2}
    assert cfg.prompt.chat_template == "never" and cfg.prompt.question_template.startswith("Q: ")
    assert cfg.weight_decay == 0.01 and cfg.batch_size == 32 and cfg.eta == 0.675  # paper defaults


@pytest.mark.parametrize(
    "override, message",
    [
        ("learning_rate=1", "unknown config key 'learning_rate'; valid keys: model"),
        ("epochs=many", "config epochs: expected an integer"),
        ("targeted=maybe", "config targeted: expected true/false"),
        ("prompt.colour=red", "unknown config key 'colour'"),
        ("novalue", "not of the form key=value"),
    ],
)
def test_bad_overrides_fail_with_one_line(override, message):
    with pytest.raises(MoxError, match=message):
        load_config(None, [override])


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(MoxError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(MoxError, match="must be a mapping"):
        load_config(bad)


def test_a_config_beside_a_data_file_named_data_json_is_an_ordinary_config(tmp_path, monkeypatch):
    """Only a run folder's data.json (a mapping that says its paths are relative) makes config.yaml's paths
    relative to its folder; a data set called data.json, or a damaged one, changes nothing."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("forget: data.json\nretain: retain.json\n")
    for content in ('[{"question": "q", "answer": "a"}]', "{not json", '{"forget": {"records": 1}}'):
        (tmp_path / "data.json").write_text(content)
        cfg = load_config(tmp_path / "config.yaml")
        assert (cfg.forget, cfg.retain) == ("data.json", "retain.json")


def test_override_values_are_typed_by_the_setting_they_set():
    """Issue 16 class 7: a key=value text is read as YAML only where the setting is not a string, so a
    prompt with a colon or braces, or a regex with brackets, arrives as written."""
    assert parse_override("out=runs/a=b") == ("out", "runs/a=b")
    cfg = load_config(None, ["lr=1e-5", "max_steps=null", "out=runs/a=b", "alpha=auto", "loss.beta=0.2"])
    assert (cfg.lr, cfg.max_steps, cfg.out, cfg.alpha, cfg.loss) == (1e-5, None, "runs/a=b", "auto", {"beta": 0.2})
    cfg = load_config(
        None,
        [
            "prompt.question_template=User: {question}",
            "prompt.system_prompt=Be brief: one line",
            "trainable=layers\\.[01]\\.mlp",
            "retain=null",
            "lora_targets=[q_proj, v_proj]",
            "model=123",
        ],
    )
    assert cfg.prompt.question_template == "User: {question}" and cfg.prompt.system_prompt == "Be brief: one line"
    assert cfg.trainable == "layers\\.[01]\\.mlp" and cfg.retain is None and cfg.model == "123"
    assert cfg.lora_targets == "[q_proj, v_proj]"


@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.beta=abc", "config loss.beta: expected a number, got 'abc'"),
        ("loss.beta=true", "config loss.beta: expected a number, got True"),
        ("loss.beta=[1, 2]", r"config loss.beta: expected a number, got \[1, 2\]"),
        ("prompt.question_template=Q: {question", "config prompt.question_template: "),
        ("prompt.question_template=no placeholder", "config prompt.question_template: "),
        # null only where a setting may be unset (max_steps, retain); elsewhere it failed later, mid-run
        ("loss=null", "config loss: expected a mapping, got None"),
        ("lr=null", "config lr: expected a number, got None"),
        ("epochs=null", "config epochs: expected an integer, got None"),
        ("alpha_grid=null", "config alpha_grid: expected a list, got None"),
        ("save_memorized=null", "config save_memorized: expected true/false, got None"),
    ],
)
def test_override_values_of_the_wrong_type_are_refused_by_key(override, message):
    with pytest.raises(MoxError, match=message):
        check_config(load_config(None, [override]))


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"lr": -1.0}, "config lr: must be > 0, got -1.0"),
        ({"epochs": 0}, "config epochs: must be >= 1, got 0"),
        ({"eta": 1.5}, r"config eta: must be in \(0, 1\], got 1.5"),
        ({"lr": float("nan")}, "config lr: expected a finite number"),
        ({"batch_size": "eight"}, "config batch_size: expected an integer"),
        ({"dtype": "float8"}, "config dtype: must be one of float32, bfloat16, float16"),
        ({"alpha": "sometimes"}, "config alpha: expected a number or 'auto'"),
    ],
)
def test_a_config_built_in_code_is_checked_like_yaml(settings, message):
    """check_config applies the same rules as YAML / key=value input to a config made in code."""
    from mox_unlearn.config import UnlearnConfig, check_config

    with pytest.raises(MoxError, match=message):
        check_config(UnlearnConfig(**settings))


def test_check_config_normalises_like_yaml_and_keeps_good_values():
    from mox_unlearn.config import UnlearnConfig, check_config, to_dict

    cfg = check_config(UnlearnConfig(lr=1, alpha=2, loss={"beta": 0.1}))
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.alpha == 2.0 and isinstance(cfg.alpha, float)
    assert to_dict(check_config(UnlearnConfig())) == to_dict(UnlearnConfig())


def test_unlearn_refuses_a_code_built_config_before_writing_anything(tmp_path):
    from mox_unlearn.config import UnlearnConfig
    from mox_unlearn.train import unlearn

    cfg = UnlearnConfig(model=str(tmp_path / "m"), forget="x.jsonl", out=str(tmp_path / "out"), lr=0.0)
    with pytest.raises(MoxError, match="config lr: must be > 0, got 0.0"):
        unlearn(cfg)
    assert not (tmp_path / "out").exists()


def test_config_names_a_packaged_preset(tmp_path):
    from mox_unlearn.cli import preset_path
    from mox_unlearn.errors import MoxError

    assert preset_path("demo-fast").endswith("resources/demo-fast.yaml")
    assert preset_path("demo.yaml").endswith("resources/demo.yaml")
    mine = tmp_path / "demo"
    mine.write_text("seed: 1\n")
    assert preset_path(str(mine)) == str(mine)  # a file of that name wins
    with pytest.raises(MoxError, match="config file not found: configs/demo-fast.yaml"):
        preset_path("configs/demo-fast.yaml")


def test_selection_defaults_live_in_one_place(capsys):
    """select-alpha's CLI, alpha: auto and the experiments start from config's selection defaults; the
    help text (which cannot import them without torch) states the same numbers."""
    from mox_unlearn.alpha_selection import DEFAULT_GRID
    from mox_unlearn.cli import main
    from mox_unlearn.config import ALPHA_GRID, SELECT_P_MIN, SELECT_TOLERANCE, UnlearnConfig
    from mox_unlearn.experiments.workspace import ExperimentConfig

    u, x = UnlearnConfig(), ExperimentConfig()
    assert (u.alpha_tolerance, u.alpha_p_min, tuple(u.alpha_grid)) == (SELECT_TOLERANCE, SELECT_P_MIN, ALPHA_GRID)
    assert (x.select_tolerance, x.select_p_min, DEFAULT_GRID) == (SELECT_TOLERANCE, SELECT_P_MIN, ALPHA_GRID)
    with pytest.raises(SystemExit):
        main(["select-alpha", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"drop (default {SELECT_TOLERANCE:g})" in text and f"alike (default {SELECT_P_MIN:g})" in text
    assert "(default " + " ".join(f"{a:g}" for a in ALPHA_GRID) + ")" in text


def test_unlearn_flags_come_from_the_config_fields():
    """Issue 15: `mox unlearn`'s flags are generated from UnlearnConfig's field metadata, typed by the field."""
    import dataclasses

    from mox_unlearn.cli.parser import build_parser
    from mox_unlearn.config import UnlearnConfig, flag_fields

    names = [f.name for f in flag_fields()]
    assert {"model", "forget", "alpha", "momentum", "max_steps", "save_memorized"} <= set(names)
    assert set(names) <= {f.name for f in dataclasses.fields(UnlearnConfig)}
    args = build_parser().parse_args(
        ["unlearn", "--max-steps", "3", "--alpha", "auto", "--momentum", "--no-save-memorized", "--seed", "7"]
    )
    assert (args.max_steps, args.alpha, args.momentum, args.save_memorized, args.seed) == (3, "auto", True, False, 7)
    unset = build_parser().parse_args(["unlearn"])
    assert all(getattr(unset, name) is None for name in names)  # not given: the config's value stands


def test_default_config_cache_keys_do_not_change_silently():
    """The experiments cache runs and evaluations by a hash of their config (experiments/workspace.py): a
    renamed or added setting changes every key and silently retrains everything. Change these only on
    purpose (with an alias for old config files where a key was renamed)."""
    from mox_unlearn.experiments.workspace import ExperimentConfig, _key, config_dict, run_settings

    # 5f0678659e until issue 17 added frontier_variants; no cache is keyed by the whole experiment config
    # (runs, models and evaluations name their own parts), so nothing cached changed key with it:
    assert _key(config_dict(ExperimentConfig())) == "c416d6d961"
    # 59f214cc23 until issue 17 added `extrapolation`, `alpha_variants` and `repair_steps`; e7414cac43 until issue
    # 19 added prompt.chat_template_kwargs / boundary / preset, log_with, push_to_hub, hub_public and
    # attn_implementation. Runs are keyed by their non-default settings (workspace.run_settings), so no
    # cached run changed key with either:
    assert _key(to_dict(UnlearnConfig())) == "9e337d9d62"
    assert "extrapolation" not in run_settings(to_dict(UnlearnConfig(lr=3e-5)))
