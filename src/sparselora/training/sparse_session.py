"""Set-up shared by the SparseLoRA analysis commands (`sparse recall`, `calibrate`).

Loads a run config's model with SparseLoRA attached and takes real calibration batches from the
task's training split, then calibrates the outlier channels exactly as training would.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import set_seed

from sparselora.config import RunConfig
from sparselora.methods.sparselora import METHOD
from sparselora.sparse.engine import SparseLoRAEngine, engine_of
from sparselora.training.inputs import load_inputs


@dataclass
class SparseSession:
    model: nn.Module
    engine: SparseLoRAEngine
    batches: list[dict]


def open_session(config: RunConfig, num_batches: int) -> SparseSession:
    if config.method != METHOD:
        raise ValueError(f"config key 'method' must be '{METHOD}' for this command, got '{config.method}'")
    if config.option("sparse_pass") != "forward":
        raise ValueError(
            "config key 'sparse_pass': recall and calibrate measure the forward mode's channel predictor; "
            "set sparse_pass: forward (the backward mode's forward is exact: there is nothing to measure)"
        )
    set_seed(config.seed)
    inputs = load_inputs(config)
    setup = inputs.build_method()
    engine = engine_of(setup.model)
    batches = inputs.first_batches(num_batches)
    engine.calibrate_outliers(setup.model, batches[: config.method_options.calibration_steps])
    return SparseSession(model=setup.model, engine=engine, batches=batches)
