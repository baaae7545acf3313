"""The miniature demo benchmark the experiment tests share: 10 people, a 2-layer Llama, 2 epochs (seconds)."""

from __future__ import annotations

import copy

from mox_unlearn.config import apply_mapping
from mox_unlearn.experiments import ExperimentConfig

MINI_DEMO = {
    "sizes": {
        "n_profiles": 10,
        "n_holdout": 1,
        "n_attributes": 8,
        "n_train_phrasings": 2,
        "n_authors": 6,
        "n_world": 6,
        "n_retain_eval": 10,
    },
    "vocab_size": 400,
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 2,
    "intermediate_size": 64,
    "general_epochs": 1,
    "profile_epochs": 2,
    "pretrain_lr": 1e-3,
    "unlearn": {"lr": 1e-3, "epochs": 2, "batch_size": 4, "per_device_batch_size": 4},
    "alphas": [1.0, 4.0],
    "eval_max_new_tokens": 8,
    "eval_batch_size": 16,
}


def mini_settings(**changes) -> dict:
    return {**copy.deepcopy(MINI_DEMO), **changes}


def mini_config(**changes) -> ExperimentConfig:
    cfg = ExperimentConfig()
    apply_mapping(cfg, mini_settings(**changes))
    return cfg
