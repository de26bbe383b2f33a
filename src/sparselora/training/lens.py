"""LayerLens outside a training run: score a model's layers on a task's batches, and the ranks a budget buys."""

from __future__ import annotations

from typing import Any

from transformers import set_seed

from sparselora.config import build_config
from sparselora.methods.layerlens import METHOD, LensResult
from sparselora.methods.layerlens import lens as run_lens
from sparselora.training.inputs import load_inputs


def lens_of(model: str, task: str, keys: dict[str, Any] | None = None) -> LensResult:
    """The LayerLens scores of ``model`` on ``task`` (``keys``: any run config keys, e.g. trainable_budget)."""
    config = build_config({"model": model, "task": task, **(keys or {}), "method": METHOD})
    set_seed(config.seed)
    inputs = load_inputs(config)
    base, new_modules = inputs.load_base_model()
    return run_lens(base, inputs.build_context(new_modules))
