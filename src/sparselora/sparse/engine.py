"""`apply_sparselora(peft_model, SparseLoRAConfig(...))` and the Trainer callback that drives it.

Usable without the rest of sparselora, in a user's own Trainer script::

    model = get_peft_model(base, LoraConfig(...))
    engine = apply_sparselora(model, SparseLoRAConfig(ffn_sparsity=0.7), model_name="minilm")
    trainer = Trainer(model=model, ..., callbacks=[engine.callback()])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn
from transformers import TrainerCallback

from sparselora.models import get_arch, iter_projections, num_layers
from sparselora.sparse.config import SparseLoRAConfig, ffn_schedule
from sparselora.sparse.ffn import SparseFFN, activation_of
from sparselora.sparse.svd import default_cache_path, factor_for, get_factors


@dataclass
class SparseLoRAEngine:
    """All sparsified layers of one model, and the step-wise schedule (calibrate → warm-up → sparse)."""

    config: SparseLoRAConfig
    layers: list[SparseFFN]
    svd_stats: dict[str, float] = field(default_factory=dict)
    step: int = 0
    sparse_from_step: int = 0
    calibrating: bool = True
    enabled: bool = True

    def sparse_now(self, layer: SparseFFN) -> bool:
        if not self.enabled or self.calibrating or layer.sparsity == 0.0:
            return False
        if not layer.block.training and not self.config.sparse_eval:
            return False  # evaluation and inference run dense unless asked
        return self.step >= self.sparse_from_step

    def begin_step(self, step: int, max_steps: int) -> None:
        """Called before each optimiser step; ends calibration once its steps are done."""
        self.step = step
        warmup = math.ceil(self.config.sparse_warmup_ratio * max_steps) if max_steps > 0 else 0
        self.sparse_from_step = max(self.config.calibration_steps, warmup)
        if self.calibrating and step >= self.config.calibration_steps:
            for layer in self.layers:
                layer.fix_outliers(self.config.outlier_factor, self.config.max_outlier_fraction)
            self.calibrating = False

    def start_sparse_now(self) -> None:
        """Skip calibration and warm-up (benchmarks, tests): sparse from the next forward."""
        self.calibrating, self.sparse_from_step = False, 0

    def detach(self) -> None:
        for layer in self.layers:
            layer.detach()

    def callback(self) -> TrainerCallback:
        return SparseLoRACallback(self)

    def report(self) -> dict:
        """What metrics.json records for a SparseLoRA run."""
        return {
            "ffn_kept_fraction": self.kept_fraction(),
            "ffn_sparsity_per_layer": [layer.sparsity for layer in self.layers],
            "outlier_channels_per_layer": [int(layer.outliers.numel()) for layer in self.layers],
            "sparse_from_step": self.sparse_from_step,
            "svd_rank": self.config.svd_rank,
            "svd_build_seconds": self.svd_stats.get("seconds", 0.0),
            "svd_cache_megabytes": self.svd_stats.get("megabytes", 0.0),
        }

    def kept_fraction(self) -> float:
        """Share of FFN channels computed, averaged over layers (1.0 = dense)."""
        return sum(1 - layer.sparsity for layer in self.layers) / max(len(self.layers), 1)


class SparseLoRACallback(TrainerCallback):
    """Feeds the global step to the engine so that warm-up and calibration follow training."""

    def __init__(self, engine: SparseLoRAEngine):
        self.engine = engine

    def on_step_begin(self, args, state, control, **kwargs):
        self.engine.begin_step(state.global_step, state.max_steps)


def apply_sparselora(
    model: nn.Module, config: SparseLoRAConfig, model_name: str | None = None, progress: bool = True
) -> SparseLoRAEngine:
    """Attach contextual FFN sparsity to a (PEFT-wrapped) model. LoRA adapters are untouched."""
    base_config = getattr(model, "config", None) or model.get_base_model().config
    spec = get_arch(base_config.model_type)
    layers_count = num_layers(model, spec)
    schedule = ffn_schedule(config, layers_count)
    name = model_name or base_config.name_or_path or base_config.model_type
    cache = Path(config.svd_cache) if config.svd_cache else default_cache_path(name, config.svd_rank)
    factors, stats = get_factors(model, spec, config.svd_rank, cache, progress=progress)
    if spec.conv1d:
        raise NotImplementedError(f"SparseLoRA does not support {spec.family} yet (Conv1D projections)")
    modules = dict(model.named_modules())
    by_layer: dict[int, dict[str, str]] = {}
    for proj in iter_projections(model, spec):
        by_layer.setdefault(proj.layer, {})[proj.role] = proj.name
    swiglu = spec.ffn == "swiglu"
    layers = []
    for index in range(layers_count):
        names = by_layer[index]
        layers.append(
            SparseFFN(
                layer=index,
                # the FFN block is the parent of the up projection (BertIntermediate, LlamaMLP, ...)
                block=modules[names["up"].rsplit(".", 1)[0]],
                up=modules[names["up"]],
                down=modules[names["down"]],
                gate=modules[names["gate"]] if swiglu else None,
                activation=activation_of(base_config, spec.activation_attr),
                up_estimator=factor_for(factors, index, "up"),
                gate_estimator=factor_for(factors, index, "gate") if swiglu else None,
                sparsity=schedule[index],
                estimator_tokens=config.estimator_tokens,
            )
        )
    engine = SparseLoRAEngine(config=config, layers=layers, svd_stats=stats)
    for layer in layers:
        layer.attach(engine)
    return engine
