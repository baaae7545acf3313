"""Target and retain models for TOFU made from any base model (e.g. SmolLM2 imported offline).

TOFU's protocol fine-tunes a base model on all 200 fictitious authors (the *target*) and, identically,
on the retain split only (the *retain* model, FQ's gold standard). On a CPU the whole of TOFU is too
much, so `tofu_authors` can take the last N ≤ 20 authors instead: those are exactly the authors of
forget10, whose `_perturbed` evaluation records exist, so every TOFU metric still has its data:

  train_target      the last N authors' QA (20 each)
  train_retain      the same without the forget split's authors
  <forget split>    and its _perturbed / holdout records, unchanged (must lie inside the N authors)
  retain_perturbed  the trained-but-kept authors' records of forget10_perturbed
  real_authors_perturbed, world_facts_perturbed   unchanged (general knowledge of the base model)

With tofu_authors = 200 the data is TOFU's own (train_target = full, train_retain = retainXX).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mox_unlearn.config import UnlearnConfig, apply_mapping
from mox_unlearn.data import load_records
from mox_unlearn.errors import MoxError
from mox_unlearn.evaluate.tofu import FORGET_AUTHORS, FORGET_SPLITS, HOLDOUT_SPLITS, check_forget_split
from mox_unlearn.io.atomic import write_text_atomic

QA_PER_AUTHOR = 20
COPIED = (
    *FORGET_SPLITS,
    *(f"{split}_perturbed" for split in FORGET_SPLITS),
    *HOLDOUT_SPLITS,
    "real_authors_perturbed",
    "world_facts_perturbed",
)


def _spec(source: str, split: str) -> str:
    local = Path(source) / f"{split}.jsonl"
    return str(local) if Path(source).is_dir() else f"hf:{source}:{split}:train"


def _records(source: str, split: str) -> list[dict]:
    return load_records(_spec(source, split), name=f"TOFU {split}").records


def _write(folder: Path, split: str, records: list[dict]) -> None:
    write_text_atomic(folder / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in records))


def write_tofu_subset(source: str, authors: int, forget_split: str, folder: Path) -> Path:
    """The TOFU layout for fine-tuning on the last `authors` authors (see the module docstring)."""
    check_forget_split(forget_split)
    n_forget = FORGET_AUTHORS[forget_split]
    if authors != 200 and not n_forget < authors <= 20:
        raise MoxError(
            f"tofu_authors must be 200 (all of TOFU) or in {n_forget + 1}..20 for {forget_split} "
            f"(the authors of forget10, whose evaluation records exist), got {authors}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    for split in COPIED:
        _write(folder, split, _records(source, split))
    full = _records(source, "full")
    if authors == 200:
        _write(folder, "train_target", full)
        retain = _records(source, f"retain{100 - int(forget_split[-2:])}")
        _write(folder, "train_retain", retain)
        _write(folder, f"retain{100 - int(forget_split[-2:])}", retain)
        _write(folder, "retain_perturbed", _records(source, "retain_perturbed"))
        return folder
    subset = full[-authors * QA_PER_AUTHOR :]
    kept = subset[: len(subset) - n_forget * QA_PER_AUTHOR]
    _write(folder, "train_target", subset)
    _write(folder, "train_retain", kept)
    kept_questions = {r["question"] for r in kept}
    _write(
        folder,
        "retain_perturbed",
        [r for r in _records(source, "forget10_perturbed") if r["question"] in kept_questions],
    )
    # unlearning's retain set: the kept authors (TOFU's retainXX would name authors never trained here)
    _write(folder, f"retain{100 - int(forget_split[-2:])}", kept)
    return folder


def prepare_tofu_models(cfg: Any, root: Path) -> dict[str, str]:
    """Fine-tune cfg.base into target and retain models on TOFU (cached in root/tofu-<key>/)."""
    from mox_unlearn.evaluate.tofu import TOFU_HUB_ID
    from mox_unlearn.train import unlearn

    source = cfg.data or TOFU_HUB_ID
    from mox_unlearn.experiments.workspace import cache_keys, first_done

    def settings(spelled) -> dict[str, Any]:
        return {
            "base": spelled(cfg.base),
            "data": spelled(source),
            "authors": cfg.tofu_authors,
            "split": cfg.forget_split,
            "finetune": cfg.finetune,
            "max_length": cfg.max_length,
            "seed": cfg.seed,
        }

    # the key with paths as the workspace spells them, or as written (fine-tunes from before)
    homes = [root / f"tofu-{key}" for key in cache_keys(settings, root)]
    home = first_done(homes, lambda h: (h / "target" / "run.json").is_file())
    data = home / "data"
    if not (data / "train_retain.jsonl").is_file():
        write_tofu_subset(source, cfg.tofu_authors, cfg.forget_split, data)
    out = {"data": str(data)}
    for role, corpus in (("target", "train_target"), ("retain", "train_retain")):
        run = home / role
        if not (run / "run.json").is_file():
            print(f"fine-tuning {cfg.base} on {corpus} -> {role}", flush=True)
            u = UnlearnConfig(
                model=cfg.base,
                forget=str(data / f"{corpus}.jsonl"),
                out=str(run),
                method="finetune",
                max_length=cfg.max_length,
                seed=cfg.seed,
                save_memorized=False,
                checkpoint_every=0,
            )
            apply_mapping(u, cfg.finetune)
            unlearn(u, overwrite=True, argv=[f"mox experiment (TOFU {role} fine-tune)"])
        out[role] = str(run / "model")
    return out
