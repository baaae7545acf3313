"""What every analysis shares: its settings, the models it starts from, and cached runs and evaluations.

An experiment folder (OUT) is a workspace that any number of experiments share:

  OUT/runs/<label>-<key>/      unlearning runs (`mox unlearn` run folders), keyed by their full config
  OUT/models/<label>-<key>/    models derived from runs without training (extrapolations, momentum folds)
  OUT/evals/<label>-<key>.json TOFU evaluations, keyed by model folder, forget split and eval settings
  OUT/<experiment>/            each experiment's table (JSON, CSV, Markdown) and plot (PNG)

Keys are hashes of everything that shapes the result, so a second experiment reuses what a first one
trained (trajectory and collapse share their runs; sweep, directions and select-alpha share θ_mem),
and a changed setting never picks up a stale result. By default the models are the demo benchmark's
(trained once and cached like `mox demo`); `target=` / `retain_model=` / `data=` point at your own, and
`base=` fine-tunes any model on TOFU into target and retain first (experiments/tofu.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mox_unlearn.config import SELECT_P_MIN, SELECT_TOLERANCE, SelectionSettings, UnlearnConfig, apply_mapping, to_dict
from mox_unlearn.demo.run import DemoConfig, cached_evaluation, evaluate, prepare_models
from mox_unlearn.errors import MoxError
from mox_unlearn.evaluate.tofu import FORGET_SPLITS
from mox_unlearn.methods import method_variant


@dataclass
class ExperimentConfig(DemoConfig):
    """The demo's settings (sizes, model, shared `unlearn` settings, `alphas`) plus the analyses' own."""

    # your own model and data instead of the demo benchmark
    target: str | None = None  # the model to unlearn (θ_ref): HF folder or hub id
    retain_model: str | None = None  # trained without the forget set; FQ is missing without it
    data: str | None = None  # TOFU-layout folder or hub id (default locuslab/TOFU with target=)
    base: str | None = None  # instead of target=: fine-tune this model on TOFU (data=) into target and retain
    tofu_authors: int = 200  # with base=: the last N authors (N <= 20 is a CPU-sized TOFU; see experiments/tofu.py)
    finetune: dict[str, Any] = field(default_factory=dict)  # with base=: settings of both fine-tunes (lr, epochs, ...)
    eval_limit: int | None = None  # evaluate only the first N items of every split (quick checks)
    # the analyses
    save_epochs: bool = True  # keep every epoch's weights (sweep's η, trajectory, collapse need them)
    alpha: float = 4.0  # MOX's α where one value is used
    etas: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.675, 0.9, 1.0])
    weights: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 4.0, 5.0])  # stability: forget-term weights
    forget_splits: list[str] = field(default_factory=lambda: list(FORGET_SPLITS))
    trajectory_methods: list[str] = field(
        default_factory=lambda: ["ga", "graddiff", "kl", "npo", "tv", "mox", "mox-momentum"]
    )
    collapse_methods: list[str] = field(default_factory=lambda: ["ga", "npo", "mox"])
    continual_methods: list[str] = field(default_factory=lambda: ["ga", "graddiff", "kl", "npo", "tv", "mox"])
    continual_epochs: int = 3
    compare_methods: list[str] = field(default_factory=lambda: ["ga", "npo"])  # forget-size, directions, relearn...
    relearn_steps: list[int] = field(default_factory=lambda: [5, 20])
    relearn_lr: float | None = None  # None = the shared unlearning lr
    examples: int = 6  # forget prompts shown by `examples`
    overlap_percent: int = 10
    select_tolerance: float = SELECT_TOLERANCE  # select-alpha / frontier: largest relative drop of retain utility
    select_p_min: float = SELECT_P_MIN  # select-alpha / frontier: KS p-value from which forget ~ holdout
    # frontier (experiments/frontier.py, docs/frontier.md): every method tuned with the same budget, two rules
    frontier_methods: list[str] = field(default_factory=lambda: ["mox", "npo", "graddiff", "simnpo", "ga"])
    frontier_lr_scales: list[float] = field(default_factory=lambda: [1 / 3, 1.0, 3.0])  # × each method's lr
    frontier_lrs: list[float] = field(default_factory=list)  # explicit learning rates instead of the scales
    frontier_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # unlearning seeds (data order, sampling)
    frontier_grids: dict[str, dict[str, list]] = field(default_factory=dict)  # e.g. {npo: {loss.beta: [0.05, 0.1]}}
    frontier_mu_ratio: float = 0.95  # oracle rule: MU >= this × the target's MU
    frontier_score: str = "min_k"  # retrain-free rule: forget-vs-holdout score (min_k or truth_ratio)
    frontier_max_items: int = 100  # retrain-free rule: validation retain / holdout items, spread over each set
    frontier_epochs: list[int] = field(default_factory=list)  # stopping epochs evaluated (empty: every epoch)
    # extrapolation variants (variants.py) swept as knobs of MOX / TV without training again: each a row of its own
    # ("mox+keep0.2"), and one row "mox+variants" whose rules choose over every variant × α (plain included)
    frontier_variants: list[dict] = field(default_factory=list)
    validation_retain: str | None = None  # data spec replacing the derived validation retain items
    validation_holdout: str | None = None  # data spec replacing the derived validation holdout items

    def selection(self, grid) -> SelectionSettings:
        """The selection rule's settings (select_tolerance, select_p_min) over `grid`."""
        return SelectionSettings(tuple(grid), self.select_tolerance, self.select_p_min)


def check_settings(cfg: ExperimentConfig) -> None:
    """Refuse nonsense numbers in one line before any training or evaluation starts."""
    from mox_unlearn.extrapolation import _check_alphas

    for key in ("alphas", "weights"):
        try:
            _check_alphas(getattr(cfg, key), allow_negative=False)
        except MoxError as e:
            raise MoxError(f"{key}: {e}") from None
    _check_alphas([cfg.alpha], allow_negative=False)
    bad_eta = [e for e in cfg.etas if not 0 < e <= 1]  # NaN fails the comparison too
    if not cfg.etas or bad_eta:
        raise MoxError(f"etas must be a non-empty list of momentum coefficients in (0, 1], got {cfg.etas}")
    from mox_unlearn.experiments.frontier_rules import check_frontier_settings

    check_frontier_settings(cfg)
    unknown = [s for s in cfg.forget_splits if s not in FORGET_SPLITS]
    if unknown or cfg.forget_split not in FORGET_SPLITS:
        raise MoxError(
            f"unknown forget split {(unknown or [cfg.forget_split])[0]!r}; valid: {', '.join(FORGET_SPLITS)}"
        )


def _check_local(key: str, value: str | None, marker: str | None) -> None:
    """A value that names a local path (io.loading.looks_like_path: absolute, ./, ~, existing, or inside an
    existing folder) must exist (with `marker` inside); anything else is taken for a hub id, which cannot
    be checked offline."""
    from mox_unlearn.io.loading import looks_like_path

    if not value:
        return
    path = Path(value).expanduser()
    if not looks_like_path(value):
        return
    if not path.is_dir():
        raise MoxError(f"{key}={value}: no such folder")
    if marker and not (path / marker).is_file():
        raise MoxError(f"{key}={value}: not a model folder (no {marker})")


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def spell(path: Any, root: Path) -> str:
    """How a path enters a cache key: inside the workspace `root` relative to it ("OUT/models/..."), so a
    workspace that is moved, or named relatively or through a link, keeps its cache; another local path
    absolute and resolved; anything else (a hub id) as written."""
    p = Path(str(path)).expanduser()
    if not (p.is_absolute() or p.exists()):
        return str(path)
    p, home = p.resolve(), Path(root).expanduser().resolve()
    return f"OUT/{p.relative_to(home).as_posix()}" if p.is_relative_to(home) else p.as_posix()


def cache_keys(parts: Callable[[Callable[[Any], str]], Any], root: Path) -> list[str]:
    """The keys of a cached item made of `parts(spelling)`: the current one (paths by `spell`), then that of a
    cache made before paths were keyed so (paths as written, up to 2026-12-02), looked up but never written."""
    return list(dict.fromkeys([_key(parts(lambda p: spell(p, root))), _key(parts(str))]))


def first_done(paths: Sequence[Path], done: Callable[[Path], bool] = Path.exists) -> Path:
    """The first of `paths` that `done` accepts, else the first (where a new item is written)."""
    return next((p for p in paths if done(p)), paths[0])


def _say(msg: str) -> None:
    print(msg, flush=True)


class Workspace:
    """Models, data and cached runs / evaluations of one experiment folder."""

    def __init__(self, cfg: ExperimentConfig, root: Path, cache_dir: Path):
        self.cfg, self.root = cfg, Path(root)  # created by the first thing written, so a refusal leaves nothing
        check_settings(cfg)
        for key in ("target", "retain_model", "base"):
            _check_local(key, getattr(cfg, key), "config.json")
        _check_local("data", cfg.data, None)
        if cfg.target and cfg.base:
            raise MoxError(
                "give either target= (a model that already knows the data) or base= (fine-tuned here), not both"
            )
        if cfg.base:
            from mox_unlearn.experiments.tofu import prepare_tofu_models

            models = prepare_tofu_models(cfg, self.root)
            self.demo, self.cache = False, None
            self.target, self.retain, self.data = models["target"], models["retain"], models["data"]
        elif cfg.target:
            from mox_unlearn.evaluate.tofu import TOFU_HUB_ID

            self.demo = False
            self.target = cfg.target
            self.retain = cfg.retain_model
            self.data = cfg.data or TOFU_HUB_ID
            self.cache: Path | None = None
        else:
            models = prepare_models(cfg, Path(cache_dir))
            self.demo = True
            self.target, self.retain, self.data = str(models["target"]), str(models["retain"]), str(models["data"])
            self.cache = Path(models["root"])

    # ------------------------------------------------------------------ data
    def split_spec(self, split: str) -> str:
        """A data spec for one TOFU-layout split: a local `<split>.jsonl` or `hf:<id>:<split>:train`."""
        local = Path(self.data) / f"{split}.jsonl"
        if local.is_file():
            return str(local)
        if Path(self.data).is_dir():
            for name in (f"{split}.json", f"{split}/train.jsonl"):
                if (Path(self.data) / name).is_file():
                    return str(Path(self.data) / name)
            raise MoxError(f"{self.data}: no {split}.jsonl")
        return f"hf:{self.data}:{split}:train"

    def write_split(self, name: str, records: Sequence[dict]) -> str:
        """Write derived training data (relearn slices, carved sets) under OUT/data/ and return its path."""
        from mox_unlearn.io.atomic import write_text_atomic

        path = self.root / "data" / f"{name}.jsonl"
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
        return str(path)

    # ------------------------------------------------------------------ training
    def unlearn_config(
        self,
        name: str,
        *,
        model: str | None = None,
        forget_split: str | None = None,
        forget: str | None = None,
        retain: str | None = None,
        **overrides: Any,
    ) -> UnlearnConfig:
        """The shared settings for method `name` ("mox", "mox-momentum", "mox-targeted", "npo", ...)."""
        split = forget_split or self.cfg.forget_split
        method, settings = method_variant(name)
        u = UnlearnConfig(
            model=model or self.target,
            forget=forget or self.split_spec(split),
            retain=retain or self.split_spec(f"retain{100 - int(split[-2:])}"),
            method=method,
            max_length=self.cfg.max_length,
            seed=self.cfg.seed,
            checkpoint_every=0,
            alpha=self.cfg.alpha,
            save_epochs=self.cfg.save_epochs,
        )
        apply_mapping(u, self.cfg.unlearn)
        apply_mapping(u, settings)
        apply_mapping(u, overrides)
        return u

    def train(self, label: str, u: UnlearnConfig) -> Path:
        """Run `u` once (reused while its config is unchanged); returns the run folder."""
        from mox_unlearn.train import unlearn

        wanted = run_settings(to_dict(u))
        run = self.root / "runs" / f"{label}-{_key(wanted)}"
        if not (run / "run.json").is_file():
            run = self._find_run(label, wanted) or run
        if not (run / "run.json").is_file():
            u.out = str(run)
            _say(f"training {label}")
            unlearn(u, overwrite=True, argv=[f"mox experiment ({label})"])
        return run

    def _find_run(self, label: str, wanted: dict) -> Path | None:
        """A finished run with these settings under another name: another analysis's label, or a key from
        before a config field was added. Label-named runs are tried first."""
        from mox_unlearn.io.portable import absolute_config, resolve_config
        from mox_unlearn.train.folder import paths_relative

        runs = self.root / "runs"
        wanted = run_settings(absolute_config(wanted))
        for saved in sorted(runs.glob(f"{label}-*/run.json")) + sorted(runs.glob("*/run.json")):
            config = json.loads(saved.read_text())["config"]
            if paths_relative(saved.parent):  # run.json names local paths relative to its folder
                config = resolve_config(config, saved.parent)
            if run_settings(absolute_config(config)) == wanted:
                return saved.parent
        return None

    def run_method(self, name: str, label: str | None = None, **kw: Any) -> tuple[Path, UnlearnConfig]:
        """Train method `name` with the shared settings (see `unlearn_config`); returns (run folder, config)."""
        u = self.unlearn_config(name, **kw)
        return self.train(label or name, u), u

    # ------------------------------------------------------------------ derived models
    def extrapolated(self, ref: str | Path, mem: Path, alphas: Sequence[float], variant: Any = None) -> list[Path]:
        """Eq. 8 for each α from one θ_mem, in one pass (with an extrapolation `variant`, variants.py); cached."""
        from mox_unlearn.extrapolation import extrapolate_folders

        missing = [a for a in alphas if not (self._alpha_dir(ref, mem, a, variant) / "config.json").is_file()]
        if missing:
            fields = None if variant is None or variant.plain else variant.fields()
            key = _key([spell(ref, self.root), spell(mem, self.root), missing, fields])
            tmp = self.root / "models" / f".tmp-{key}"
            shutil.rmtree(tmp, ignore_errors=True)
            written = extrapolate_folders(Path(ref), Path(mem), missing, tmp, progress=False, variant=variant)
            for a, path in zip(missing, written):
                os.replace(path, self._alpha_dir(ref, mem, a, variant))
            shutil.rmtree(tmp, ignore_errors=True)
        return [self._alpha_dir(ref, mem, a, variant) for a in alphas]

    def _alpha_dir(self, ref: str | Path, mem: Path, alpha: float, variant: Any = None) -> Path:
        """OUT/models/<run>-memorized-a<α>[-<variant>]-<key>; a plain variant adds nothing to the key, so its folders
        from before variants existed are found."""
        from mox_unlearn.extrapolation import alpha_label

        plain = variant is None or variant.plain
        name = f"{Path(mem).parent.name}-{Path(mem).name}-a{alpha_label(alpha)}"
        name += "" if plain else f"-{variant.label()}"

        def parts(spelled: Callable[[Any], str]) -> list[Any]:
            return [spelled(ref), spelled(mem), alpha] + ([] if plain else [variant.fields()])

        keys = cache_keys(parts, self.root)
        return first_done([self.root / "models" / f"{name}-{k}" for k in keys], lambda d: (d / "config.json").is_file())

    def momentum_folds(self, ref: str | Path, snapshots: Sequence[Path], alpha: float, eta: float) -> list[Path]:
        """The momentum model (Eq. 10, θ̄ ← η·θ_for^k + (1−η)·θ̄) after each per-epoch θ_mem snapshot:
        element k averages snapshots[:k+1]. Equals a run with momentum=true and one update per epoch,
        without training again for each η. Cached; the missing ones come from one pass over the snapshots."""
        dests = [self._momentum_dir(ref, snapshots[: k + 1], alpha, eta) for k in range(len(snapshots))]
        if not all((d / "config.json").is_file() for d in dests):
            write_momentum_folds(Path(ref), list(snapshots), alpha, eta, dests)
        return dests

    def momentum_fold(self, ref: str | Path, snapshots: Sequence[Path], alpha: float, eta: float) -> Path:
        """The momentum model over all `snapshots` (see `momentum_folds`); only this one is written."""
        dest = self._momentum_dir(ref, snapshots, alpha, eta)
        if not (dest / "config.json").is_file():
            write_momentum_folds(Path(ref), list(snapshots), alpha, eta, [None] * (len(snapshots) - 1) + [dest])
        return dest

    def _momentum_dir(self, ref: str | Path, snapshots: Sequence[Path], alpha: float, eta: float) -> Path:
        keys = cache_keys(lambda spelled: [spelled(ref), [spelled(s) for s in snapshots], alpha, eta], self.root)
        dirs = [self.root / "models" / f"momentum-eta{eta:g}-a{alpha:g}-{k}" for k in keys]
        return first_done(dirs, lambda d: (d / "config.json").is_file())

    def forget_models_by_epoch(
        self, run: Path, u: UnlearnConfig, *, eta: float | None = None
    ) -> list[tuple[int, Path]]:
        """(epoch, unlearned model) after every epoch of a run made with save_epochs=true.

        Extrapolating methods (MOX, task vectors) turn each epoch's trained weights into θ_for;
        with momentum, into the momentum average so far.
        """
        from mox_unlearn.methods import get_method

        snaps = epoch_snapshots(run)
        if not get_method(u.method).extrapolate:
            return snaps
        if u.momentum:
            folds = self.momentum_folds(u.model, [p for _, p in snaps], u.alpha, u.eta if eta is None else eta)
            return [(k, fold) for (k, _), fold in zip(snaps, folds)]
        return [(k, self.extrapolated(u.model, p, [u.alpha])[0]) for k, p in snaps]

    # ------------------------------------------------------------------ evaluation
    def retain_result(self, split: str) -> Path | None:
        """The retain model's evaluation on `split` (FQ's reference); None without a retain model."""
        if not self.retain:
            return None
        path = self._eval_path(self.retain, "retrained", split)
        if cached_evaluation(path) is None:  # missing, or scored by an older mox
            _say(f"evaluating the retain model on {split}")
            evaluate(Path(self.retain), self.data, self.cfg, path, None, forget_split=split)
        return path

    def _eval_path(self, model: str | Path, label: str, split: str) -> Path:
        """OUT/evals/<label>-<split>-<key>.json, the key made of everything that shapes the result; where only
        another label has it (the demo's `npo` row is the frontier's `frontier-npo-...` model), that file."""
        c = self.cfg

        def parts(spelled: Callable[[Any], str]) -> list[Any]:
            shape = [spelled(model), split, spelled(self.data), c.eval_max_new_tokens, c.eval_batch_size]
            return shape + [c.max_length] + ([c.eval_limit] if c.eval_limit is not None else [])

        keys = cache_keys(parts, self.root)
        for key in keys:
            path = self.root / "evals" / f"{label}-{split}-{key}.json"
            same = [p for p in sorted(path.parent.glob(f"*-{split}-{key}.json")) if cached_evaluation(p) is not None]
            if path.is_file() or same:
                return path if path.is_file() else same[0]
        return self.root / "evals" / f"{label}-{split}-{keys[0]}.json"

    def evaluate(self, model: str | Path, label: str, split: str | None = None) -> dict:
        """TOFU metrics of `model` on `split`, FQ against the retain model where there is one; cached."""
        from mox_unlearn.evaluate.tofu import add_forget_quality

        split = split or self.cfg.forget_split
        retain = self.retain_result(split)
        if retain is not None and spell(model, self.root) == spell(self.retain, self.root):
            return add_forget_quality(json.loads(retain.read_text()), retain)
        path = self._eval_path(model, label, split)
        if not path.is_file():
            _say(f"evaluating {label} on {split}")
        result = evaluate(Path(model), self.data, self.cfg, path, retain, forget_split=split)
        # the cache is keyed by the model scored, not by the retain model: FQ and PrivLeak are read against
        # this run's retain model (or said to be missing), whichever one the cached file was made with
        return add_forget_quality(result, retain)

    def out(self, experiment: str) -> Path:
        path = self.root / experiment
        path.mkdir(parents=True, exist_ok=True)
        return path


def run_settings(config: dict) -> dict:
    """What makes a run: the config values that differ from UnlearnConfig's defaults, without `out`.

    Keying on these (not on every field) keeps finished runs valid when a new config field with a
    default is added; values go through JSON so a saved run.json compares equal to a live config.
    """
    defaults = json.loads(json.dumps(to_dict(UnlearnConfig()), default=str))
    values = json.loads(json.dumps(config, default=str))
    return {k: v for k, v in values.items() if k != "out" and (k not in defaults or v != defaults[k])}


def epoch_snapshots(run: Path) -> list[tuple[int, Path]]:
    """(epoch, folder) of OUT/epochs/epoch-K, in epoch order."""
    snaps = sorted((int(p.name.split("-")[1]), p) for p in (Path(run) / "epochs").glob("epoch-*") if p.is_dir())
    if not snaps:
        raise MoxError(f"{run} has no per-epoch weights (train with save_epochs=true)")
    return snaps


def write_momentum_folds(ref: Path, snapshots: list[Path], alpha: float, eta: float, dests: list[Path | None]) -> None:
    """Fold θ_for of each snapshot into the momentum average (Eq. 10), in order, and after snapshot k save
    the average so far to dests[k] (an HF folder, atomically) unless it is None or there already. Tensors
    are read one at a time (io.reading.open_weights); only the average is held in full."""
    from mox_unlearn.io.atomic import atomic_output_dir
    from mox_unlearn.io.loading import load_model, load_tokenizer
    from mox_unlearn.io.reading import open_weights
    from mox_unlearn.momentum import MomentumAverage

    avg = MomentumAverage(eta, alpha)
    model = load_model(str(snapshots[-1]), "float32")  # every snapshot has the same config and buffers
    tokenizer = load_tokenizer(str(snapshots[-1]))
    with open_weights({"ref": ref}) as reference:
        for snap, dest in zip(snapshots, dests):
            with open_weights({"snap": snap}) as current:
                avg.update(reference["ref"], current["snap"].items())
            if dest is None or (dest / "config.json").is_file():
                continue
            state = model.state_dict()
            model.load_state_dict({k: v.to(state[k].dtype) for k, v in avg.avg.items() if k in state}, strict=False)
            with atomic_output_dir(dest, overwrite=True) as tmp:
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)


def config_dict(cfg: ExperimentConfig) -> dict:
    return dataclasses.asdict(cfg)
