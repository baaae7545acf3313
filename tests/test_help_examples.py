"""Every example in every `mox ... --help` is a command that mox accepts (issue 22).

Each example line is parsed by the real parser and its settings are checked the way the command
checks them before it reads any file: the config and key=value overrides of `mox unlearn` against the
method (so `loss.beta=0.2` with a method that has no β fails here), the demo and experiment presets it
names, the benchmark and its tasks, the extrapolation variant. Running them for real needs the models
and data the examples name; the end-to-end tests cover those paths with local stand-ins.
"""

from __future__ import annotations

import shlex

import pytest

from mox_unlearn.cli import parser as P
from mox_unlearn.cli import preset_path, variant_from_args

EPILOGS = {
    "unlearn": P.UNLEARN_EXAMPLE,
    "extrapolate": P.EXTRAPOLATE_EXAMPLE,
    "select-alpha": P.SELECT_ALPHA_EXAMPLE,
    "eval": P.EVAL_EXAMPLE,
    "demo": P.DEMO_EXAMPLE,
    "experiment": P.EXPERIMENT_EXAMPLE,
}


def examples() -> list[tuple[str, str]]:
    """(subcommand, command line) of every example: `  mox ...` lines, continued after a trailing backslash,
    comments cut; lines that elide arguments with `...` are prose, not commands."""
    found = []
    for name, text in EPILOGS.items():
        lines, current = [], ""
        for raw in text.splitlines():
            line = raw.strip()
            if current:
                current += " " + line.rstrip("\\").strip()
            elif line.startswith("mox "):
                current = line.rstrip("\\").strip()
            else:
                continue
            if not raw.rstrip().endswith("\\"):
                lines.append(current.split("  #")[0].split(" # ")[0].strip())
                current = ""
        found += [(name, line) for line in lines if " ... " not in line]
    return found


def test_every_help_text_has_examples():
    assert {name for name, _ in examples()} == set(EPILOGS) and len(examples()) >= 20


@pytest.mark.parametrize("name, line", examples(), ids=[f"{n}:{i}" for i, (n, _) in enumerate(examples())])
def test_a_help_example_is_accepted(name, line):
    from mox_unlearn.config import UnlearnConfig, apply_mapping, apply_overrides, flag_fields, load_config

    argv = shlex.split(line)[1:]
    args, rest = P.build_parser().parse_known_args(argv)
    assert args.command == name
    extra = [r for r in rest if "=" in r and not r.startswith("-")]
    assert [r for r in rest if r not in extra] == [], line
    overrides = [*getattr(args, "overrides", []), *extra]
    if name == "unlearn":
        from mox_unlearn.train import resolve

        if args.resume and not args.model:
            cfg = UnlearnConfig()
            apply_mapping(cfg, {"out": args.out})
            apply_overrides(cfg, overrides)
        else:
            cfg = load_config(args.config, overrides, {f.name: getattr(args, f.name) for f in flag_fields()})
            resolve(cfg)  # the method, its objective and every loss.* key
    elif name == "demo":
        from mox_unlearn.demo.run import DemoConfig, workspace_config

        preset = args.config or ("demo-fast" if args.fast else "demo")
        workspace_config(load_config(preset_path(preset), overrides, cls=DemoConfig))
    elif name == "experiment":
        from mox_unlearn.experiments import ExperimentConfig, get_experiment

        if args.name != "list":
            get_experiment(args.name)
        load_config(preset_path(args.config or "demo"), overrides, cls=ExperimentConfig)
    elif name == "eval":
        from mox_unlearn.evaluate.benchmarks import get_benchmark
        from mox_unlearn.evaluate.harness import parse_tasks

        if args.benchmark == "lm-eval":
            parse_tasks(args.tasks)
        else:
            get_benchmark(args.benchmark)
    elif name == "extrapolate":
        variant_from_args(args)
