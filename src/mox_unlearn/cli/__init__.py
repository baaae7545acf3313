"""The `mox` command. Thin: parse arguments, build a config, call the library, print a summary.

Every failure becomes one line on stderr (`mox: error: ...`) and exit status 2: a MoxError as it is,
a usage error or an expected library error (missing file, bad JSON, corrupted weights) with what it
names, anything else with its type and a hint to rerun with --debug, which prints the traceback.
Warnings of the library (logging) are one `mox: warning: ...` line each. Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from mox_unlearn.cli.parser import build_parser
from mox_unlearn.errors import MoxError


def cmd_select_alpha(args: argparse.Namespace) -> int:
    from mox_unlearn.alpha_selection import (
        alpha_curve,
        check_model_pair,
        check_settings,
        load_selection_data,
        summary_lines,
        variant_curves,
        write_selection,
    )
    from mox_unlearn.config import SelectionSettings
    from mox_unlearn.data.formatting import PromptFormat
    from mox_unlearn.io.atomic import atomic_output_dir, check_output_dir
    from mox_unlearn.io.loading import torch_dtype

    grid = {"grid": tuple(args.alpha)} if args.alpha else {}  # none given: the default grid
    selection = SelectionSettings(
        **grid, tolerance=args.tolerance, p_min=args.p_min, score=args.score, max_items=args.max_items
    )
    # every check before any model is loaded: nothing is written when one fails
    check_settings(selection)
    for name in ("batch_size", "max_new_tokens", "max_length"):
        if getattr(args, name) < 1:
            raise MoxError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    torch_dtype(args.dtype, auto=True)
    ref, mem, out = Path(args.ref), Path(args.mem), Path(args.out)
    inputs = {"--ref": ref, "--mem": mem, "--forget": args.forget, "--holdout": args.holdout, "--retain": args.retain}
    check_output_dir(out, overwrite=args.overwrite, inputs=inputs)
    check_model_pair(ref, mem)
    variants = [parse_variant(text) for text in args.variant]
    data = load_selection_data(args.forget, args.holdout, args.retain, score=args.score, max_items=args.max_items)
    with atomic_output_dir(out, overwrite=args.overwrite, inputs=inputs) as tmp:
        settings = dict(
            fmt=PromptFormat(chat_template=args.chat_template, preset=args.prompt_preset),
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            max_length=args.max_length,
            dtype=args.dtype,
            work_dir=tmp,
            progress=True,
        )
        if variants:
            report = variant_curves(ref, mem, data, selection, variants, **settings)
        else:
            report = alpha_curve(ref, mem, data.forget, data.holdout, data.retain, selection, **settings)
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
        fmt=PromptFormat(chat_template=args.chat_template, preset=args.prompt_preset),
        dtype=args.dtype,
        allow_convention_mismatch=args.allow_convention_mismatch,
        output_format=args.format,
        attn_implementation=args.attn_implementation,
        device_map=args.device_map,
        mia_reference=args.mia_reference,
        mia_gradnorm=not args.no_gradnorm,
        lm_eval_tasks=args.tasks,
        tasks_dir=args.tasks_dir,
        num_fewshot=args.num_fewshot,
        max_length=args.max_length,
        lm_eval_metric=args.metric,
    )
    print(summary_table(result))
    for task, why in (result.get("summary_metric_missing") or {}).items():
        print(f"{task}: {why}")
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
    from mox_unlearn.io.atomic import check_not_an_input
    from mox_unlearn.report import load_rows, report_files, row_notes, text_table, write_report

    if not args.out and not args.card:
        raise MoxError("mox report needs --out (tables and plots) or --card MODEL_DIR (or both)")
    if _report_frontiers(args):
        return 0
    if args.card:
        from mox_unlearn.data import read_json
        from mox_unlearn.io.cards import attach_results

        card = attach_results(Path(args.card), [read_json(f, "result") for f in args.files])
        print(f"model-index of {card} written from {len(args.files)} result file(s)")
    if not args.out:
        return 0
    from mox_unlearn.io.atomic import write_text_atomic
    from mox_unlearn.report import harness_table

    harness: list = []
    rows = load_rows(args.files, harness=harness)
    out = Path(args.out)
    if harness:  # lm-eval results: their own table (tasks, not TOFU's metrics)
        table = harness_table(harness)
        check_not_an_input(out / "lm-eval.md", args.files, replaces_folder=False)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "lm-eval.md", "# lm-evaluation-harness\n\n" + table)
        print(table)
        print(f"written: {out / 'lm-eval.md'}")
        if not rows:
            return 0
    for path in report_files(out):  # written into --out one by one: none may be an input
        check_not_an_input(path, args.files, replaces_folder=False)
    written = write_report(rows, out, title="mox report")
    print(text_table(rows))
    for note in row_notes(rows):
        print(note)
    print("written: " + ", ".join(str(p) for p in written))
    return 0


def _report_frontiers(args: argparse.Namespace) -> bool:
    """`mox report` of frontier.json files: shards of one frontier merged into OUT/frontier.* (True), or
    nothing to do here (False: no file is a frontier.json)."""
    from mox_unlearn.data import read_json
    from mox_unlearn.io.atomic import check_not_an_input
    from mox_unlearn.report import is_frontier_result

    try:
        parts = [(str(f), read_json(f, "result")) for f in args.files]
    except MoxError:
        return False  # a file that cannot be read: the plain report names it
    frontiers = [name for name, data in parts if is_frontier_result(data)]
    if not frontiers:
        return False
    from mox_unlearn.experiments.frontier import frontier_files, merge_frontiers, write_frontier

    others = [name for name, data in parts if not is_frontier_result(data)]
    if others or args.card or not args.out:
        raise MoxError(
            f"mox report: frontier.json files are merged with each other only, into --out (not {(others or ['--card'])[0]})"
        )
    merged = merge_frontiers(parts)
    out = Path(args.out)
    for path in frontier_files(out):  # each replaces the file of its name there: none may be an input
        check_not_an_input(path, args.files, replaces_folder=False)
    result = write_frontier(out, merged)
    print("written: " + ", ".join(result["files"]))
    return True


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
    from mox_unlearn.config import flag_fields, load_config
    from mox_unlearn.train import saved_config, unlearn

    flags = {f.name: getattr(args, f.name) for f in flag_fields()}
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
    out = unlearn(cfg, resume=args.resume, overwrite=args.overwrite, argv=["mox", *argv], callbacks=args.callbacks)
    run = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
    _print_summary(run, out)
    return 0


def _print_summary(run: dict, out: Path) -> None:
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
    # run.json names outputs relative to the run folder; printed as paths from here
    rows += [(f"output {k}", os.path.normpath(os.path.join(out, v))) for k, v in run["outputs"].items()]
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))


def cmd_extrapolate(args: argparse.Namespace) -> int:
    from mox_unlearn.extrapolation import extrapolate_folders
    from mox_unlearn.io.folders import check_aux_files
    from mox_unlearn.io.loading import check_same_model_kind

    variant = variant_from_args(args)  # a bad value is refused before any folder is read
    if args.push_to_hub:
        from mox_unlearn.hub import check_can_push

        if len(args.alpha) > 1:
            raise MoxError("--push-to-hub uploads one model: give one --alpha (push the others one by one)")
        check_can_push(args.push_to_hub)
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
        variant=variant,
    )
    for alpha, path in zip(args.alpha, paths):
        print(f"alpha={alpha:g}  {path}")
    if args.push_to_hub:
        from mox_unlearn.hub import push_folder

        print(f"pushed to {push_folder(paths[0], args.push_to_hub, private=not args.hub_public)}")
    return 0


def parse_variant(text: str):
    """--variant '{keep_fraction: 0.2, only: mlp}' as a Variant; a bad one is one line naming it."""
    import yaml

    from mox_unlearn.variants import Variant

    try:
        settings = yaml.safe_load(text)
    except yaml.YAMLError:
        settings = None
    return Variant.from_settings(settings, f"--variant {text!r}")


def variant_from_args(args: argparse.Namespace):
    """The --keep-fraction / --drop-rate / --only / --skip / --alpha-by-depth flags as a Variant."""
    from mox_unlearn.variants import Variant

    return Variant(
        keep_fraction=args.keep_fraction,
        drop_rate=args.drop_rate,
        seed=args.drop_seed,
        only=args.only,
        skip=args.skip,
        alpha_by_depth=args.alpha_by_depth,
    )


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


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (`kill`, a scheduler's stop) unwinds every command like Ctrl-C: temp outputs are removed
    (io.atomic), a training run checkpoints (guards.StopRequest takes both signals over inside its loop),
    and the stop is reported in one line. Signals reach only the main thread: elsewhere, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _set_threads(threads: int | None) -> None:
    """CPU threading before torch starts its thread pool (bench/threads.py, docs/performance.md §9).

    OpenMP's threads wait for work by spinning by default; when another job holds a core, the spinning
    threads and that job slow each other down (measured: 3× for training, 2.4× for evaluation on 2
    cores beside one busy process). OMP_WAIT_POLICY=PASSIVE lets them sleep instead; mox sets it unless
    the environment already does (or MOX_THREADS_AUTO=0). `--threads N` sets torch's thread count."""
    if os.environ.get("MOX_THREADS_AUTO") != "0":
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads OpenMP: only before that
    if threads is None:
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:  # in-process callers (tests, notebooks): the pool exists already
        sys.modules["torch"].set_num_threads(threads)


def main(argv: list[str] | None = None, *, callbacks: list | tuple = ()) -> int:
    """`mox ARGS...`; returns the exit code. `callbacks` (train.Callback) hook into `mox unlearn`'s run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
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
    if getattr(args, "threads", 1) < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    _set_threads(getattr(args, "threads", None))
    from mox_unlearn.io.loading import load_policy

    try:
        with (
            _sigterm_as_interrupt(),
            load_policy(
                allow_pickle=getattr(args, "allow_pickle", False),
                trust_remote_code=getattr(args, "trust_remote_code", False),
            ),
        ):
            return _dispatch(args, argv)
    except KeyboardInterrupt as e:  # the training run's RunInterrupted says which checkpoint and the resume command
        if str(e):
            print(f"mox: {e}", file=sys.stderr)
        elif args.command == "unlearn":
            print("mox: interrupted (resume a training run with --resume)", file=sys.stderr)
        else:  # every output is written whole or not at all (io.atomic): the temp files went with the stop
            print(f"mox: interrupted; {args.command} wrote no output", file=sys.stderr)
        return 130
    except Exception as e:  # every failure: one line, the traceback only with --debug
        if args.debug:
            traceback.print_exc()
        print(f"mox: error: {describe_failure(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
