"""`mox demo`: the paper's Table 1 in miniature, on a laptop CPU, with nothing to download.

1. Generate fictitious profiles (demo/profiles.py) in the TOFU layout.
2. Train a tokenizer and a tiny Llama from scratch with the project's own loop: stage 1 on general
   knowledge, stage 2 on all profiles (the *target*) and, identically, without the forget profiles
   (the *retain* model, FQ's gold standard). Cached, keyed by every setting that shapes them.
3. Check the quality gates: the target knows the forget set, the benchmark tells target and retain
   apart, the retain model only guesses on the forget set.
4. Unlearn the forget split with MOX (α sweep from one θ_mem, targeted, momentum) and every baseline,
   with one shared set of hyper-parameters; evaluate each with the TOFU metrics.
5. The tuned table (full demo): the main methods over a learning-rate grid, each at the stopping epoch or α
   that the retrain-free rule picks, next to the oracle's pick (experiments/frontier.py, one seed).
Steps 4 and 5 run in an experiments workspace in OUT (experiments/workspace.py), which caches every run and
evaluation by its settings; then the tables and plots are written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mox_unlearn.config import UnlearnConfig, apply_mapping
from mox_unlearn.errors import MoxError
from mox_unlearn.io.atomic import write_text_atomic

ALL_METHODS = [
    "mox",
    "mox-targeted",
    "mox-momentum",
    "ga",
    "graddiff",
    "kl",
    "npo",
    "simnpo",
    "idkpo",
    "dpo",
    "altpo",
    "llmu",
    "rmu",
    "tv",
    "whp",
]


@dataclass
class DemoConfig:
    seed: int = 0
    sizes: dict[str, Any] = field(default_factory=dict)  # DemoSizes overrides
    # the tiny model and how it is pre-trained
    vocab_size: int = 2048
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    pretrain_lr: float = 2e-3
    general_epochs: int = 20
    profile_epochs: int = 40
    pretrain_batch_size: int = 32
    max_length: int = 64
    # unlearning: the same settings for every method (each keeps its own loss defaults)
    unlearn: dict[str, Any] = field(default_factory=dict)
    methods: list[str] = field(default_factory=lambda: list(ALL_METHODS))
    alphas: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0])
    forget_split: str = "forget10"
    # evaluation
    eval_max_new_tokens: int = 48
    eval_batch_size: int = 64
    # quality gates
    gate_target_rouge: float = 0.9
    gate_fq: float = 1e-5
    gate_guess_margin: float = 0.15
    # the tuned table (mox demo only): the frontier's methods over its lr grid with this seed, each reported at
    # the setting the retrain-free rule picks (experiments/frontier.py); false: the shared-setting table only
    tuned: bool = True
    tuned_settings: dict[str, Any] = field(
        default_factory=dict
    )  # frontier settings, e.g. {frontier_methods: [mox, npo]}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mox-unlearn" / "demo"


def _say(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------- data and models


def _key(cfg: DemoConfig, fingerprint: str) -> str:
    """Cache key: everything that shapes the trained target / retain models."""
    shape = {
        k: getattr(cfg, k)
        for k in (
            "seed",
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "pretrain_lr",
            "general_epochs",
            "profile_epochs",
            "pretrain_batch_size",
            "max_length",
        )
    }
    blob = json.dumps({"data": fingerprint, "model": shape, "v": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _pretrain(model: Path, data: Path, out: Path, cfg: DemoConfig, epochs: int, what: str) -> Path:
    """One pre-training stage with the project's own loop (`finetune` = plain NLL); cached by folder."""
    from mox_unlearn.train import unlearn

    if (out / "run.json").is_file():
        return out / "model"
    _say(f"pre-training {what}: {epochs} epochs on {data.name} (once; cached in {out})")
    run_cfg = UnlearnConfig(
        model=str(model),
        forget=str(data),
        out=str(out),
        method="finetune",
        lr=cfg.pretrain_lr,
        epochs=epochs,
        batch_size=cfg.pretrain_batch_size,
        per_device_batch_size=cfg.pretrain_batch_size,
        warmup_epochs=1.0,
        weight_decay=0.01,
        max_length=cfg.max_length,
        seed=cfg.seed,
        save_memorized=False,
        checkpoint_every=0,
    )
    unlearn(run_cfg, overwrite=True, argv=["mox demo (pre-training)"])
    return out / "model"


def prepare_models(cfg: DemoConfig, cache_dir: Path) -> dict[str, Path]:
    """Data folder, target and retain models: from the cache, or generated and trained now."""
    from mox_unlearn.demo.profiles import DemoSizes, fingerprint, generate, write_tofu_layout
    from mox_unlearn.tiny import build_tiny_llama, build_tokenizer

    sizes = DemoSizes(**cfg.sizes)
    key = _key(cfg, fingerprint(cfg.seed, sizes))
    root = cache_dir / key
    paths = {"root": root, "data": root / "data"}
    if not (root / "data").is_dir():
        _say(f"generating fictitious profiles (seed {cfg.seed}) -> {root / 'data'}")
        write_tofu_layout(generate(cfg.seed, sizes), root / "data")
    if not (root / "init" / "config.json").is_file():
        from mox_unlearn.data import load_records

        texts = []
        for f in sorted((root / "data").glob("*.jsonl")):
            for rec in load_records(str(f), name="demo data").records:
                texts += [v for v in rec.values() if isinstance(v, str)]
                texts += [a for a in rec.get("perturbed_answer", [])]
        tok = build_tokenizer(texts, vocab_size=cfg.vocab_size)
        tmp = root / ".init-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        build_tiny_llama(
            tmp,
            tok,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate_size,
            max_position_embeddings=256,
            seed=cfg.seed,
        )
        os.replace(tmp, root / "init")
    started = time.perf_counter()
    data = root / "data"
    stage1 = _pretrain(
        root / "init", data / "general.jsonl", root / "stage1", cfg, cfg.general_epochs, "1/3, general text"
    )
    paths["target"] = _pretrain(
        stage1, data / "train_target.jsonl", root / "target", cfg, cfg.profile_epochs, "2/3, the target model"
    )
    paths["retain"] = _pretrain(
        stage1, data / "train_retain.jsonl", root / "retain", cfg, cfg.profile_epochs, "3/3, the retain model"
    )
    paths["train_seconds"] = round(time.perf_counter() - started, 1)
    return paths


# ----------------------------------------------------------------------------- evaluation and gates


def evaluate(
    model_dir: Path,
    data: Path | str,
    cfg: DemoConfig,
    out: Path,
    retain_result: Path | None,
    forget_split: str | None = None,
) -> dict:
    """TOFU metrics of one model on the demo data or any TOFU-layout source (cached in `out`, see
    `cached_evaluation`)."""
    from mox_unlearn.evaluate.run import load_eval_model
    from mox_unlearn.evaluate.tofu import evaluate_tofu

    cached = cached_evaluation(out)
    if cached is not None:
        return cached
    model, tok = load_eval_model(str(model_dir), "float32")
    result = evaluate_tofu(
        model,
        tok,
        data=str(data),
        forget_split=forget_split or cfg.forget_split,
        retain_result=str(retain_result) if retain_result else None,
        batch_size=cfg.eval_batch_size,
        max_new_tokens=cfg.eval_max_new_tokens,
        max_length=cfg.max_length,
        limit=getattr(cfg, "eval_limit", None),
        mia_gradnorm=False,  # a backward pass per answer, for a number no demo or analysis table shows
    )
    result = {"benchmark": "tofu", "model": str(model_dir), "data": str(data), **result}
    write_text_atomic(out, json.dumps(result) + "\n")
    return result


def cached_evaluation(out: Path) -> dict | None:
    """The evaluation cached in `out`, or None where there is none or it was scored by an older mox (whose
    min-k / ES / EM still included EOS: its convention record lacks today's positions), so it is made again."""
    from mox_unlearn.evaluate.convention import POSITIONS

    if not out.is_file():
        return None
    cached = json.loads(out.read_text())
    return cached if (cached.get("convention") or {}).get("positions") == POSITIONS else None


def guess_rouge(data: Path, split: str) -> float:
    """ROUGE-L recall of a wrong value in the right template: what answering by guessing scores."""
    from mox_unlearn.data import load_records
    from mox_unlearn.evaluate import metrics as M

    recs = load_records(str(data / f"{split}_perturbed.jsonl")).records
    preds = [p for r in recs for p in r["perturbed_answer"]]
    refs = [r["paraphrased_answer"] for r in recs for _ in r["perturbed_answer"]]
    return float(M.rouge_l(preds, refs, kind="recall").mean())


def check_gates(target: dict, retain: dict, guess: float, cfg: DemoConfig) -> list[dict]:
    fq = target["summary"]["forget_quality"]
    gates = [
        {
            "gate": f"target answers forget questions (ROUGE-L recall >= {cfg.gate_target_rouge})",
            "value": target["summary"]["forget_rouge"],
            "ok": target["summary"]["forget_rouge"] >= cfg.gate_target_rouge,
        },
        {
            "gate": f"benchmark separates target from retain (FQ < {cfg.gate_fq:g})",
            "value": fq,
            "ok": fq is not None and fq < cfg.gate_fq,
        },
        {
            "gate": f"retain model guesses on forget (ROUGE <= guessing {guess:.3f} + {cfg.gate_guess_margin})",
            "value": retain["summary"]["forget_rouge"],
            "ok": retain["summary"]["forget_rouge"] <= guess + cfg.gate_guess_margin,
        },
    ]
    return gates


# ----------------------------------------------------------------------------- unlearning runs


def workspace_config(cfg: DemoConfig):
    """The experiments workspace's config for this demo: the same models and shared settings; the tuned
    table's frontier (ExperimentConfig's defaults: methods and lr grid) over `tuned_settings` and the demo's
    one seed. Per-epoch weights are kept (as every
    experiment keeps them) for the tuned methods only, whose shared-setting run is then the same run as the
    frontier's at that lr, here and in `mox experiment frontier --out` this folder (see `run_method`)."""
    from mox_unlearn.experiments.workspace import ExperimentConfig, check_settings

    x = ExperimentConfig(**dataclasses.asdict(cfg), frontier_seeds=[cfg.seed])
    try:
        apply_mapping(x, cfg.tuned_settings)
    except MoxError as e:
        raise MoxError(f"tuned_settings: {e}") from None
    check_settings(x)
    return x


def run_method(name: str, cfg: DemoConfig, ws) -> list[tuple[str, Path, float | None]]:
    """Train one method in the workspace (cached by its settings); returns (row name, model folder, α) per
    model to evaluate. A run the tuned table also needs (same lr and seed) is the same run, trained once;
    the other methods keep no per-epoch weights (~6 MB each for the demo model, 10 epochs)."""
    from mox_unlearn.extrapolation import alpha_label

    run, u = ws.run_method(name, **({} if name in ws.cfg.frontier_methods else {"save_epochs": False}))
    if name != "mox":
        alpha = u.alpha if name.startswith("mox") or name == "tv" else None
        return [(name, run / "model", alpha)]
    models = ws.extrapolated(ws.target, run / "memorized", cfg.alphas)  # Eq. 8 for every α from one θ_mem
    return [(f"mox-a{alpha_label(a)}", m, a) for a, m in zip(cfg.alphas, models)]


def tuned_rows(result: dict) -> list[dict]:
    """The tuned table: each method's pick by the retrain-free rule, then by the oracle, with the setting
    picked (one seed: the demo's)."""
    from mox_unlearn.experiments.frontier_rules import ORACLE, RETRAIN_FREE, is_fallback
    from mox_unlearn.report import COLUMNS

    by_id = {r["id"]: r for r in result["records"]}
    rows = []
    for method, by_seed in result["selected"].items():
        for rule in (RETRAIN_FREE, ORACLE):
            for pick in (p[rule] for p in by_seed.values()):
                r = by_id.get(pick["id"])
                if r is None:
                    continue
                knob = "α" if r["knob"] == "alpha" else r["knob"]
                grid = r["setting"].split(", ")[1:]  # the setting's own grid values, after its lr
                picked = ", ".join([f"lr {r['lr']:.3g}", *grid, f"{knob} {r['value']:g}"])
                rows.append(
                    {
                        "name": method,
                        "method": method,
                        "alpha": r["value"] if r["knob"] == "alpha" else None,
                        **{k: r.get(k) for k in COLUMNS[3:]},
                        "rule": rule.replace("_", "-"),
                        "picked": picked + (" (fallback)" if is_fallback(pick) else ""),
                    }
                )
    return rows


def _claim_out(out: Path, cfg: DemoConfig) -> None:
    """OUT reuses finished runs and evaluations, so it must belong to the same settings."""
    marker = out / "demo-config.json"  # the tuned table may be added or left out: its runs are keyed apart
    current = json.dumps({k: v for k, v in dataclasses.asdict(cfg).items() if k != "tuned"}, sort_keys=True)
    if marker.is_file() and marker.read_text() != current:
        raise MoxError(f"{out} holds a demo made with other settings; use --overwrite or another --out")
    write_text_atomic(marker, current)


def untuned_note(cfg: DemoConfig) -> str:
    """What the shared table is and is not: one setting and one seed, and where the tuned comparison is."""
    default = UnlearnConfig()
    lr, epochs = cfg.unlearn.get("lr", default.lr), cfg.unlearn.get("epochs", default.epochs)
    where = (
        "the tuned table below (one seed) and, over three seeds, `mox experiment frontier` (docs/frontier.md)"
        if cfg.tuned
        else "`mox experiment frontier` (docs/frontier.md)"
    )
    return (
        f"One shared, untuned setting for every method (lr {float(lr):g}, {epochs} epochs) and "
        f"one seed ({cfg.seed}): the ranking changes with the learning rate. Every method tuned alike, picked "
        f"by a fixed rule: {where}."
    )


def tuned_note(result: dict, fcfg: dict, cfg: DemoConfig) -> str:
    """What the tuned table is: grid, knob, the two rules, and where the full frontier output is."""
    lrs = ", ".join(f"{lr:.3g}" for lr in sorted({r["lr"] for r in result["records"]}))
    alphas = ", ".join(f"{a:g}" for a in cfg.alphas)
    stops = (
        "every epoch"
        if not fcfg["frontier_epochs"]
        else "epoch " + ", ".join(map(str, sorted(fcfg["frontier_epochs"])))
    )
    return (
        f"Each method trained at lr {lrs} (seed {cfg.seed}) and stopped at {stops}, or for MOX "
        f"extrapolated at α {alphas}; **retrain-free**: the pick a practitioner can make "
        f"(forget set most like unseen holdout data while validation retain utility stays within "
        f"{fcfg['select_tolerance']:.0%} of the original; never reads test FQ); **oracle**: the highest test FQ "
        f"with MU ≥ {fcfg['frontier_mu_ratio']:g} × the original's (needs the retrained model). One seed: "
        "differences between methods below the seed spread of docs/frontier.md mean nothing. Every candidate and "
        "plot: frontier/frontier.{md,json,png}."
    )


def skipped_note(xcfg: Any, out: Path, config_arg: str) -> str:
    """Why there is no tuned table, and the one command that adds it to the same folder."""
    n_lr = len(xcfg.frontier_lrs or xcfg.frontier_lr_scales)
    from mox_unlearn.config import ALPHA_GRID

    # a knob needs more than the table's α columns: the paper's five, as docs/frontier.md runs it
    finer = f' "alphas=[{",".join(f"{a:g}" for a in ALPHA_GRID)}]"' if len(xcfg.alphas) < 3 else ""
    return (
        f"No tuned table (tuned: false, or --untuned): it trains each of {len(xcfg.frontier_methods)} methods at "
        f"{n_lr} learning rates and evaluates every stopping epoch or α, more than this demo's time allows "
        "(`mox demo --fast` takes 3-4 minutes on 2 CPU cores). Make it in this folder, reusing the runs above, with "
        f"`mox experiment frontier --config {config_arg} --out {out}{finer}`; docs/frontier.md has it over "
        "three seeds."
    )


def run_demo(cfg: DemoConfig, out: Path, cache_dir: Path, config_arg: str = "demo") -> dict:
    """`_run_demo` with OUT held by this process: a second demo or experiment into it is refused."""
    from mox_unlearn.io.atomic import held_folder

    with held_folder(out, "demo folder"):
        return _run_demo(cfg, out, cache_dir, config_arg)


def _run_demo(cfg: DemoConfig, out: Path, cache_dir: Path, config_arg: str = "demo") -> dict:
    """The whole demo; returns the results dict that is also written to OUT/results.json.

    OUT is an experiments workspace (experiments/workspace.py): runs, derived models and evaluations are
    cached there by their settings, so `mox experiment ... --out OUT` with the same config reuses them."""
    from mox_unlearn.experiments.workspace import Workspace
    from mox_unlearn.methods import METHODS
    from mox_unlearn.report import row_from_eval, text_table, write_report

    unknown = [m for m in cfg.methods if m.split("-")[0] not in METHODS and m not in ALL_METHODS]
    if unknown:
        raise MoxError(f"unknown demo methods {unknown}; valid: {', '.join(ALL_METHODS)}")
    start = time.perf_counter()
    xcfg = workspace_config(cfg)  # a bad tuned setting fails here, before anything is trained or written
    out.mkdir(parents=True, exist_ok=True)
    _claim_out(out, cfg)
    ws = Workspace(xcfg, out, cache_dir)
    data = Path(ws.data)
    _say("evaluating the target (original) and retain (retrained) models")
    retain_eval = ws.evaluate(ws.retain, "retrained")  # FQ against itself (1.0), from its own result
    target_eval = ws.evaluate(ws.target, "original")
    guess = guess_rouge(data, cfg.forget_split)
    gates = check_gates(target_eval, retain_eval, guess, cfg)
    for g in gates:
        _say(f"  [{'ok' if g['ok'] else 'FAILED'}] {g['gate']}: {g['value']:.3g}")
    rows = [row_from_eval(target_eval, "original", "original"), row_from_eval(retain_eval, "retrained", "retrained")]
    timings: dict[str, float] = {}
    for i, name in enumerate(cfg.methods, 1):
        _say(f"[{i}/{len(cfg.methods)}] {name}")
        t0 = time.perf_counter()
        for row_name, model_dir, alpha in run_method(name, cfg, ws):
            rows.append(row_from_eval(ws.evaluate(model_dir, row_name), row_name, name.split("-")[0], alpha))
        timings[name] = round(time.perf_counter() - t0, 1)
    tuned: list[dict] = []
    if cfg.tuned:
        from mox_unlearn.experiments.frontier import frontier

        _say(
            f"tuned table: {', '.join(xcfg.frontier_methods)} over the learning-rate grid (runs at the shared "
            "setting are reused)"
        )
        t0 = time.perf_counter()
        result = frontier(ws, show=False)
        timings["tuned"] = round(time.perf_counter() - t0, 1)
        tuned = tuned_rows(result)
        second = ("Tuned: each method at the setting a rule picks", tuned_note(result, dataclasses.asdict(xcfg), cfg))
    else:
        second = ("Tuned", skipped_note(xcfg, out, config_arg))
    seconds = round(time.perf_counter() - start, 1)
    extra = {
        "tuned_rows": tuned,
        "gates": gates,
        "guess_rouge": guess,
        "config": dataclasses.asdict(cfg),
        "cache": str(ws.cache),
        "seconds": seconds,
        "method_seconds": timings,
    }
    note = untuned_note(cfg)
    write_report(
        rows,
        out,
        title=f"mox demo: TOFU-style metrics on {cfg.forget_split} of fictitious profiles",
        extra=extra,
        note=note,
        sections=[(*second, tuned)],
    )
    _say("\n" + text_table(rows) + "\n" + note)
    _say(f"\n{second[0]}\n" + (text_table(tuned, extra=("rule", "picked")) + "\n" if tuned else "") + second[1])
    _say(
        f"\n{len(rows) + len(tuned)} rows in {seconds:.0f} s; results in {out}/results.{{md,csv,json}}, plots fq_mu.png"
        + (", alpha_sweep.png" if (out / "alpha_sweep.png").exists() else "")
        + (", frontier/frontier.png" if tuned else "")
    )
    return {"rows": rows, **extra}
