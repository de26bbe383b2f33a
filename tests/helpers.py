"""Helpers the tests import (fixtures live in conftest.py): the repository root and a tiny run config."""

from __future__ import annotations

from pathlib import Path

from sparselora.compare.plan import CompareConfig

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


def tiny_comparison(model_dir, out, methods=None, seeds=(0, 1, 2), targets=(), max_steps=3, **keys) -> CompareConfig:
    """A comparison of tiny runs (LoRA and L1 LoRA by default) on SST-2."""
    shared = tiny_run(model_dir, out, max_steps=max_steps)
    for key in ("output_dir", "method", "task"):
        shared.pop(key)
    return CompareConfig(
        name=keys.pop("name", "tiny"),
        output_dir=out,
        reference="lora",
        seeds=list(seeds),
        tasks=["sst2"],
        shared=shared,
        methods=methods or {"lora": {}, "lora_l1": {"l1_lambda": 1.0}},
        targets=list(targets),
        **keys,
    )
