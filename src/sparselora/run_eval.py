"""`sparselora eval`: reload a run's saved adapter (or model) and measure it again."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from torch import nn
from transformers import set_seed

from sparselora.config import RunConfig, build_config
from sparselora.pipeline import RunInputs, load_inputs, load_trained
from sparselora.runs import read_run
from sparselora.train import run_evaluation


def evaluate_run(
    run_dir: Path, overrides: dict[str, Any] | None = None, sparse: bool = False
) -> tuple[dict[str, float], dict[str, float]]:
    """(metrics recorded at training time, metrics measured now from the saved files).

    ``sparse``: evaluate a SparseLoRA run with its training-time sparsity instead of dense.
    """
    raw_config, recorded = read_run(run_dir)
    label_names = recorded.get("run", {}).get("label_names")
    if raw_config.get("label_names") is None and label_names:  # the class mapping without the training file
        raw_config = {**raw_config, "label_names": label_names}
    config = build_config({**raw_config, **(overrides or {})}, source=f"in '{run_dir}/config.yaml' ")
    if sparse and config.method != "sparselora":
        raise ValueError(f"--sparse evaluates SparseLoRA runs; '{run_dir}' was trained with method '{config.method}'")
    set_seed(config.seed)
    inputs = load_inputs(config)
    model = load_trained(Path(run_dir), inputs)
    if sparse:
        _attach_sparsity(model, config, inputs)
    result = run_evaluation(model, inputs)
    return recorded["task_metrics"], result.metrics


def _attach_sparsity(model: nn.Module, config: RunConfig, inputs: RunInputs) -> None:
    """The run's SparseLoRA engine, sparse in evaluation too; outliers re-found on its first training batches.

    Separates what sparse training learned from how well it carries over to the dense model.
    """
    from sparselora.methods.sparselora import sparse_config_of
    from sparselora.sparse.engine import apply_sparselora

    sparse_config = sparse_config_of(config.method_options, sparse_eval=True)
    engine = apply_sparselora(model, sparse_config, model_name=config.model, progress=False)
    engine.calibrate_outliers(model, list(itertools.islice(inputs.train_loader(), sparse_config.calibration_steps)))
    engine.start_sparse_now()
