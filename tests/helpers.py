"""Helpers the tests import (fixtures live in conftest.py): the repository root and a tiny run config."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tiny_run(model_dir: Path, output_dir: Path, **overrides) -> dict:
    """A run config for a few seconds of training on real data with a tiny model."""
    config = {
        "model": str(model_dir),
        "task": "sst2",
        "method": "lora",
        "max_train_samples": 64,
        "max_eval_samples": 48,
        "batch_size": 16,
        "eval_batch_size": 16,
        "epochs": 1,
        "learning_rate": 1e-3,
        "logging_steps": 2,
        "timing_warmup_steps": 1,
        "output_dir": str(output_dir),
        "progress": False,
    }
    config.update(overrides)
    return config
