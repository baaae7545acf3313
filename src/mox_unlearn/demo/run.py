"""`mox demo`: the paper's Table 1 in miniature, on a laptop CPU, with nothing to download.

1. Generate fictitious profiles (demo/profiles.py) in the TOFU layout.
2. Train a tokenizer and a tiny Llama from scratch with the project's own loop: stage 1 on general
   knowledge, stage 2 on all profiles (the *target*) and, identically, without the forget profiles
   (the *retain* model, FQ's gold standard). Cached, keyed by every setting that shapes them.
3. Check the quality gates: the target knows the forget set, the benchmark tells target and retain
   apart, the retain model only guesses on the forget set.
4. Unlearn the forget split with MOX (α sweep from one θ_mem, targeted, momentum) and every baseline,
   with one shared set of hyper-parameters; evaluate each with the TOFU metrics; write the table and plots.
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
from mox_unlearn.methods import method_variant
from mox_unlearn.modelio import write_text_atomic

ALL_METHODS = ["mox", "mox-targeted", "mox-momentum", "ga", "graddiff", "kl", "npo", "simnpo", "idkpo", "dpo",
               "altpo", "llmu", "rmu", "tv", "whp"]


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


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mox-unlearn" / "demo"


def _say(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------- data and models


def _key(cfg: DemoConfig, fingerprint: str) -> str:
    """Cache key: everything that shapes the trained target / retain models."""
    shape = {k: getattr(cfg, k) for k in ("seed", "vocab_size", "hidden_size", "num_layers", "num_heads",
                                          "intermediate_size", "pretrain_lr", "general_epochs", "profile_epochs",
                                          "pretrain_batch_size", "max_length")}
    blob = json.dumps({"data": fingerprint, "model": shape, "v": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _pretrain(model: Path, data: Path, out: Path, cfg: DemoConfig, epochs: int) -> Path:
    """One pre-training stage with the project's own loop (`finetune` = plain NLL); cached by folder."""
    from mox_unlearn.train import unlearn

    if (out / "run.json").is_file():
        return out / "model"
    run_cfg = UnlearnConfig(model=str(model), forget=str(data), out=str(out), method="finetune",
                            lr=cfg.pretrain_lr, epochs=epochs, batch_size=cfg.pretrain_batch_size,
                            per_device_batch_size=cfg.pretrain_batch_size, warmup_epochs=1.0, weight_decay=0.01,
                            max_length=cfg.max_length, seed=cfg.seed, save_memorized=False, checkpoint_every=0)
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
        build_tiny_llama(tmp, tok, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                         intermediate_size=cfg.intermediate_size, max_position_embeddings=256, seed=cfg.seed)
        os.replace(tmp, root / "init")
    started = time.perf_counter()
    stage1 = _pretrain(root / "init", root / "data" / "general.jsonl", root / "stage1", cfg, cfg.general_epochs)
    paths["target"] = _pretrain(stage1, root / "data" / "train_target.jsonl", root / "target", cfg, cfg.profile_epochs)
    paths["retain"] = _pretrain(stage1, root / "data" / "train_retain.jsonl", root / "retain", cfg, cfg.profile_epochs)
    paths["train_seconds"] = round(time.perf_counter() - started, 1)
    return paths


# ----------------------------------------------------------------------------- evaluation and gates


def evaluate(model_dir: Path, data: Path | str, cfg: DemoConfig, out: Path, retain_result: Path | None,
             forget_split: str | None = None) -> dict:
    """TOFU metrics of one model on the demo data or any TOFU-layout source (cached in `out`, see
    `cached_evaluation`)."""
    from mox_unlearn.evaluate.run import load_eval_model
    from mox_unlearn.evaluate.tofu import evaluate_tofu

    cached = cached_evaluation(out)
    if cached is not None:
        return cached
    model, tok = load_eval_model(str(model_dir), "float32")
    result = evaluate_tofu(model, tok, data=str(data), forget_split=forget_split or cfg.forget_split,
                           retain_result=str(retain_result) if retain_result else None,
                           batch_size=cfg.eval_batch_size, max_new_tokens=cfg.eval_max_new_tokens,
                           max_length=cfg.max_length, limit=getattr(cfg, "eval_limit", None))
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
        {"gate": f"target answers forget questions (ROUGE-L recall >= {cfg.gate_target_rouge})",
         "value": target["summary"]["forget_rouge"], "ok": target["summary"]["forget_rouge"] >= cfg.gate_target_rouge},
        {"gate": f"benchmark separates target from retain (FQ < {cfg.gate_fq:g})", "value": fq,
         "ok": fq is not None and fq < cfg.gate_fq},
        {"gate": f"retain model guesses on forget (ROUGE <= guessing {guess:.3f} + {cfg.gate_guess_margin})",
         "value": retain["summary"]["forget_rouge"], "ok": retain["summary"]["forget_rouge"] <= guess + cfg.gate_guess_margin},
    ]
    return gates


# ----------------------------------------------------------------------------- unlearning runs


def _unlearn_cfg(cfg: DemoConfig, name: str, target: Path, data: Path, out: Path) -> UnlearnConfig:
    method, settings = method_variant(name)
    u = UnlearnConfig(model=str(target), forget=str(data / f"{cfg.forget_split}.jsonl"),
                      retain=str(data / f"retain{100 - int(cfg.forget_split[-2:])}.jsonl"), out=str(out),
                      method=method, max_length=cfg.max_length, seed=cfg.seed, checkpoint_every=0,
                      save_memorized=(name == "mox"))
    apply_mapping(u, cfg.unlearn)
    apply_mapping(u, settings)
    return u


def run_method(name: str, cfg: DemoConfig, models: dict, out: Path) -> list[tuple[str, Path, float | None]]:
    """Train one method (cached by its run.json); returns (row name, model folder, α) per model to evaluate."""
    from mox_unlearn.extrapolate import alpha_label, extrapolate_folders
    from mox_unlearn.train import unlearn

    run_dir = out / "runs" / name
    u = _unlearn_cfg(cfg, name, models["target"], models["data"], run_dir)
    if not (run_dir / "run.json").is_file():
        unlearn(u, overwrite=True, argv=[f"mox demo ({name})"])
    if name != "mox":
        alpha = u.alpha if name.startswith("mox") or name == "tv" else None
        return [(name, run_dir / "model", alpha)]
    sweep = out / "runs" / "mox-alphas"
    if not sweep.is_dir():  # Eq. 8 for every α from the one θ_mem, in one pass
        extrapolate_folders(models["target"], run_dir / "memorized", cfg.alphas, sweep, shard_size="2GB",
                            progress=False)
    if len(cfg.alphas) == 1:
        return [(f"mox-a{alpha_label(cfg.alphas[0])}", sweep, cfg.alphas[0])]
    return [(f"mox-a{alpha_label(a)}", sweep / f"alpha-{alpha_label(a)}", a) for a in cfg.alphas]


def _claim_out(out: Path, cfg: DemoConfig) -> None:
    """OUT reuses finished runs and evaluations, so it must belong to the same settings."""
    marker = out / "demo-config.json"
    current = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    if marker.is_file() and marker.read_text() != current:
        raise MoxError(f"{out} holds a demo made with other settings; use --overwrite or another --out")
    marker.write_text(current)


def untuned_note(cfg: DemoConfig) -> str:
    """What the table is and is not: one shared setting and one seed, and where the tuned comparison is."""
    default = UnlearnConfig()
    lr, epochs = cfg.unlearn.get("lr", default.lr), cfg.unlearn.get("epochs", default.epochs)
    return (f"One shared, untuned setting for every method (lr {float(lr):g}, {epochs} epochs) and "
            f"one seed ({cfg.seed}): the ranking changes with the learning rate. Every method tuned alike over "
            "three seeds, picked by a fixed rule: `mox experiment frontier` (docs/frontier.md).")


def run_demo(cfg: DemoConfig, out: Path, cache_dir: Path) -> dict:
    """The whole demo; returns the results dict that is also written to OUT/results.json."""
    from mox_unlearn.evaluate.tofu import add_forget_quality
    from mox_unlearn.methods import METHODS
    from mox_unlearn.report import row_from_eval, text_table, write_report

    unknown = [m for m in cfg.methods if m.split("-")[0] not in METHODS and m not in ALL_METHODS]
    if unknown:
        raise MoxError(f"unknown demo methods {unknown}; valid: {', '.join(ALL_METHODS)}")
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    _claim_out(out, cfg)
    models = prepare_models(cfg, cache_dir)
    data = models["data"]
    evals = out / "evals"
    _say("evaluating the target (original) and retain (retrained) models")
    retain_file = evals / "retrained.json"
    # the retrained row's FQ is against itself (1.0): computed from its result, not a second evaluation
    retain_eval = add_forget_quality(evaluate(models["retain"], data, cfg, retain_file, None), retain_file)
    target_eval = evaluate(models["target"], data, cfg, evals / "original.json", retain_file)
    guess = guess_rouge(data, cfg.forget_split)
    gates = check_gates(target_eval, retain_eval, guess, cfg)
    for g in gates:
        _say(f"  [{'ok' if g['ok'] else 'FAILED'}] {g['gate']}: {g['value']:.3g}")
    rows = [row_from_eval(target_eval, "original", "original"), row_from_eval(retain_eval, "retrained", "retrained")]
    timings: dict[str, float] = {}
    for i, name in enumerate(cfg.methods, 1):
        _say(f"[{i}/{len(cfg.methods)}] {name}")
        t0 = time.perf_counter()
        for row_name, model_dir, alpha in run_method(name, cfg, models, out):
            result = evaluate(model_dir, data, cfg, evals / f"{row_name}.json", retain_file)
            rows.append(row_from_eval(result, row_name, name.split("-")[0], alpha))
        timings[name] = round(time.perf_counter() - t0, 1)
    seconds = round(time.perf_counter() - start, 1)
    extra = {"gates": gates, "guess_rouge": guess, "config": dataclasses.asdict(cfg), "cache": str(models["root"]),
             "seconds": seconds, "method_seconds": timings}
    note = untuned_note(cfg)
    write_report(rows, out, title=f"mox demo: TOFU-style metrics on {cfg.forget_split} of fictitious profiles",
                 extra=extra, note=note)
    _say("\n" + text_table(rows) + "\n" + note)
    _say(f"\n{len(rows)} models evaluated in {seconds:.0f} s; results in {out}/results.{{md,csv,json}}, plots fq_mu.png"
         + (", alpha_sweep.png" if (out / "alpha_sweep.png").exists() else ""))
    return {"rows": rows, **extra}
