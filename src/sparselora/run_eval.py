"""`sparselora eval`: reload a run's saved adapter (or model) and measure it again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import set_seed

from sparselora.config import build_config
from sparselora.pipeline import load_inputs, load_trained
from sparselora.runs import read_run
from sparselora.train import run_evaluation


def evaluate_run(run_dir: Path, overrides: dict[str, Any] | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """(metrics recorded at training time, metrics measured now from the saved files)."""
    raw_config, recorded = read_run(run_dir)
    config = build_config({**raw_config, **(overrides or {})}, source=f"in '{run_dir}/config.yaml' ")
    set_seed(config.seed)
    inputs = load_inputs(config)
    model = load_trained(Path(run_dir), inputs)
    result = run_evaluation(model, inputs)
    return recorded["task_metrics"], result.metrics
