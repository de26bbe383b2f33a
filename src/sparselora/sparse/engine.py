"""`apply_sparselora(peft_model, SparseLoRAConfig(...))` and the Trainer callback that drives it.

Usable without the rest of sparselora, in a user's own Trainer script::

    model = get_peft_model(base, LoraConfig(...))
    engine = apply_sparselora(model, SparseLoRAConfig(ffn_sparsity=0.7), model_name="minilm")
    trainer = Trainer(model=model, ..., callbacks=[engine.callback()])

In a loop of your own (no callback), the engine counts training forwards as steps: the first
``calibration_steps`` run dense to find outlier channels, every later one sparse (the warm-up and
cool-down ratios need the Trainer's ``max_steps`` and apply only with the callback). It logs this
at the first training forward; ``engine.start_sparse_now()`` skips the calibration.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import PretrainedConfig, TrainerCallback

from sparselora.models import ArchSpec, get_arch, iter_projections, num_layers
from sparselora.sparse.attention import SparseAttention
from sparselora.sparse.backward import BackwardSparseAttention, BackwardSparseFFN
from sparselora.sparse.ffn import SparseFFN, activation_of
from sparselora.sparse.settings import SparseLoRAConfig, layer_schedule
from sparselora.sparse.svd import LowRank, default_cache_path, factor_for, get_factors, weights_dtype
from sparselora.sparse.tokens import TokenSplit

logger = logging.getLogger(__name__)


@dataclass
class SparseLoRAEngine:
    """All sparsified blocks of one model, and the step-wise schedule (calibrate → warm-up → sparse)."""

    config: SparseLoRAConfig
    ffn: list[SparseFFN | BackwardSparseFFN]
    attention: list[SparseAttention | BackwardSparseAttention] = field(default_factory=list)
    svd_stats: dict[str, float] = field(default_factory=dict)
    step: int = 0
    sparse_from_step: int = 0
    sparse_until_step: int | None = None  # dense cool-down from this step on
    calibrating: bool = True
    enabled: bool = True
    output_tokens: TokenSplit | None = None  # decoders: this batch's output / context positions
    driven_by_callback: bool = False  # the callback (begin_step) sets the step; otherwise training forwards count
    forwards_counted: int = 0
    realised: list[tuple[float, float]] = field(default_factory=list)  # per step: FFN and attention kept shares
    selection_seconds: float = 0.0  # host time spent choosing channels (the estimator), all steps so far
    _model_hook: object = None
    _model: nn.Module | None = None
    _first_token: TokenSplit | None = None
    _step_hook: object = None

    def sparse_now(self, sparsity: float, training: bool) -> bool:
        if not self.enabled or self.calibrating or sparsity == 0.0:
            return False
        if not training and not self.config.sparse_eval:
            return False  # evaluation and inference run dense unless asked
        return self.step >= self.sparse_from_step and (
            self.sparse_until_step is None or self.step < self.sparse_until_step
        )

    def begin_step(self, step: int, max_steps: int) -> None:
        """Called before each optimiser step (by the callback); from then on the caller drives the schedule."""
        self.driven_by_callback = True
        self._advance(step, max_steps)
        self._record_step()

    def _advance(self, step: int, max_steps: int) -> None:
        """Set the step; ends calibration once its steps are done."""
        self.step = step
        warmup = math.ceil(self.config.sparse_warmup_ratio * max_steps) if max_steps > 0 else 0
        self.sparse_from_step = max(self.config.calibration_steps, warmup)
        if max_steps > 0 and self.config.sparse_cooldown_ratio > 0:
            self.sparse_until_step = max_steps - math.ceil(self.config.sparse_cooldown_ratio * max_steps)
        if self.calibrating and step >= self.config.calibration_steps:
            for layer in self.ffn:
                layer.fix_outliers(self.config.outlier_factor, self.config.max_outlier_fraction)
            self.calibrating = False

    @torch.no_grad()
    def calibrate_outliers(self, model: nn.Module, batches: list[dict]) -> None:
        """Outside a Trainer: run ``batches`` dense (train mode, no grad) and fix the outlier channels."""
        self.calibrating = True
        was_training = model.training
        model.train()
        for batch in batches:
            model(**{k: v for k, v in batch.items() if k != "labels"})
        for layer in self.ffn:
            layer.fix_outliers(self.config.outlier_factor, self.config.max_outlier_fraction)
        self.calibrating = False
        model.train(was_training)

    def start_sparse_now(self) -> None:
        """Skip calibration and warm-up (benchmarks, tests): sparse from the next forward."""
        self.calibrating, self.sparse_from_step = False, 0

    def count_training_forward(self, module: nn.Module, _args, _kwargs) -> None:
        """Model pre-hook: without the callback, each training forward with gradients is one step."""
        if self.driven_by_callback or not module.training or not torch.is_grad_enabled():
            return
        if self.forwards_counted == 0 and self.calibrating:
            logger.warning(
                "SparseLoRA without its Trainer callback: training forwards count as steps; the first %d run "
                "dense to calibrate outlier channels, then every one runs sparse (sparse_warmup_ratio and "
                "sparse_cooldown_ratio need the callback). engine.start_sparse_now() skips the calibration.",
                self.config.calibration_steps,
            )
        if self.calibrating:
            self._advance(self.forwards_counted, max_steps=0)
        self.forwards_counted += 1
        self._record_step()

    def capture_output_tokens(self, _module, args, kwargs) -> None:
        """Model pre-hook: position t is an output token when labels[t + 1] is trained (causal LM shift)."""
        labels = kwargs.get("labels")
        if labels is None or labels.dim() != 2:
            self.output_tokens = None
            return
        self.output_tokens = TokenSplit.output_tokens(labels, self.config.dense_span)

    def first_token_split(self, batch: int, seq: int, device: torch.device) -> TokenSplit:
        """Encoders: the first token dense; one split per batch shape, shared by every layer."""
        split = self._first_token
        if split is None or split.mask.shape != (batch, seq) or split.mask.device != device:
            split = self._first_token = TokenSplit.first_token(batch, seq, device)
        return split

    def detach(self) -> None:
        for block in [*self.ffn, *self.attention]:
            block.detach()
        for hook in (self._model_hook, self._step_hook):
            if hook is not None:
                hook.remove()
        if self._model is not None and getattr(self._model, "_sparselora_engine", None) is self:
            del self._model._sparselora_engine

    def callback(self) -> TrainerCallback:
        """The Trainer callback that drives the schedule by the global step (warm-up, cool-down)."""
        self.driven_by_callback = True
        return SparseLoRACallback(self)

    @contextmanager
    def timing_selection(self) -> Iterator[None]:
        """Adds the host time of one channel selection to ``selection_seconds`` (on a GPU: launch time only)."""
        start = time.perf_counter()
        yield
        self.selection_seconds += time.perf_counter() - start

    def kept_fraction(self) -> float:
        """Share of FFN channels the current training step computes, averaged over layers: 1.0 on a dense step
        (calibration, warm-up, cool-down, or the engine disabled)."""
        return _mean([_kept_share(layer) if self.sparse_now(layer.sparsity, True) else 1.0 for layer in self.ffn])

    def attention_kept_fraction(self) -> float:
        """Share of attention's q/k/v/o channels the current training step computes (forward mode), 1.0 when dense;
        in backward mode the share of layers whose frozen q/k/v pass an input gradient."""
        shares = [1.0] * (len(self.ffn) - len(self.attention))
        for block in self.attention:
            sparse = self.sparse_now(block.sparsity, True)
            shares.append((block.num_kept / block.head_dim if hasattr(block, "head_dim") else 0.0) if sparse else 1.0)
        return _mean(shares)

    def configured_kept_fraction(self) -> float:
        """Share of FFN channels a sparse step computes, averaged over layers (the configuration)."""
        return _mean([_kept_share(layer) for layer in self.ffn])

    def _record_step(self) -> None:
        """The realised sparsity of the step about to run (metrics.json's summary and the Trainer's logs)."""
        self.realised.append((self.kept_fraction(), self.attention_kept_fraction()))

    def measurements(self) -> dict:
        """What metrics.json records for a SparseLoRA run: the configuration and what the steps realised."""
        steps = len(self.realised)
        return {
            "ffn_kept_fraction": self.configured_kept_fraction(),
            "realised": {
                "steps": steps,
                "sparse_steps": sum(ffn < 1.0 or attn < 1.0 for ffn, attn in self.realised),
                "ffn_kept_fraction_mean": _mean([ffn for ffn, _ in self.realised]) if steps else None,
                "attn_kept_fraction_mean": _mean([attn for _, attn in self.realised]) if steps else None,
            },
            "ffn_sparsity_per_layer": [layer.sparsity for layer in self.ffn],
            "attn_sparsity_per_layer": [block.sparsity for block in self.attention] or [0.0] * len(self.ffn),
            "outlier_channels_per_layer": [int(layer.outliers.numel()) for layer in self.ffn],
            "sparse_from_step": self.sparse_from_step,
            "sparse_until_step": self.sparse_until_step,
            "sparse_pass": self.config.sparse_pass,
            "backward_rule": self.config.backward_rule,
            "svd_rank": self.config.svd_rank,
            "predictor": self.config.predictor,
            "mean_compensation": self.config.mean_compensation,
            "selection_seconds": self.selection_seconds,
            "svd_build_seconds": self.svd_stats.get("seconds", 0.0),
            "svd_cache_megabytes": self.svd_stats.get("megabytes", 0.0),
        }


class SparseLoRACallback(TrainerCallback):
    """Feeds the global step to the engine so that warm-up and calibration follow training."""

    def __init__(self, engine: SparseLoRAEngine):
        self.engine = engine
        self._since = (time.perf_counter(), 0.0)  # wall clock and selection seconds at the last log

    def on_step_begin(self, args, state, control, **kwargs):
        self.engine.begin_step(state.global_step, state.max_steps)

    def on_log(self, args, state, control, logs=None, **kwargs):
        """The step's realised sparsity, phase and the selection's share of the time since the last log, next to
        its loss, for the trackers (TensorBoard, W&B) and the log: callbacks after this one see it (sparselora's
        own runs put this callback first)."""
        if logs is None or "loss" not in logs:
            return
        engine = self.engine
        now, selected = time.perf_counter(), engine.selection_seconds
        wall = now - self._since[0]
        ffn, attention = engine.kept_fraction(), engine.attention_kept_fraction()
        values = {
            "sparselora/ffn_kept_fraction": ffn,
            "sparselora/attn_kept_fraction": attention,
            "sparselora/sparse_step": float(ffn < 1.0 or attention < 1.0),
            "sparselora/selection_share": (selected - self._since[1]) / wall if wall > 0 else 0.0,
        }
        self._since = (now, selected)
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)


def _kept_share(block) -> float:
    return block.num_kept / block.width


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 1.0


class UnsupportedModelError(ValueError):
    """The architecture is in the map, but this part of SparseLoRA is not implemented for it."""


# What SparseLoRA claims: FFN sparsity for every mapped family with separate up (and gate) projections and no
# Conv1D, attention sparsity where the map names the attention forward the family follows (ArchSpec.attention).
# tests/sparse/test_exactness.py holds each claim to "keeping every channel is dense LoRA".
FFN_REFUSED = {
    "fused_swiglu": "its FFN computes gate and up in one projection (gate_up_proj), whose rows SparseLoRA "
    "does not split",
    "experts": "its FFN is a mixture of experts whose weights are 3-D tensors, not per-expert linear layers",
}


def check_supported(spec: ArchSpec, ffn_sparse: bool, attention_sparse: bool, sparse_pass: str) -> None:
    """Refuse, with the reason and the key to change, what SparseLoRA cannot run on this family."""
    if spec.conv1d:
        raise UnsupportedModelError(
            f"SparseLoRA does not support {spec.family} (Conv1D projections); use method lora on this model"
        )
    if ffn_sparse and spec.ffn in FFN_REFUSED:
        raise UnsupportedModelError(
            f"FFN sparsity does not apply to {spec.family}: {FFN_REFUSED[spec.ffn]}; set ffn_sparsity: 0 "
            "(and layer_sparsity without mlp entries), or use method lora"
        )
    qkv_separate = all(role in spec.projections for role in ("q", "k", "v"))
    forward_attention = sparse_pass != "backward" and spec.attention is None
    if attention_sparse and (forward_attention or not qkv_separate):
        raise UnsupportedModelError(
            f"attention sparsity is implemented for BERT-like and LLaMA-like attention with separate q/k/v "
            f"projections, not {spec.family}; set attn_sparsity: 0"
        )


def _model_config(model: nn.Module) -> PretrainedConfig:
    return getattr(model, "config", None) or model.get_base_model().config


def apply_sparselora(
    model: nn.Module, config: SparseLoRAConfig, model_name: str | None = None, progress: bool = True
) -> SparseLoRAEngine:
    """Attach contextual FFN and attention sparsity to a (PEFT-wrapped) model. LoRA adapters are untouched."""
    if getattr(model, "_sparselora_engine", None) is not None:
        raise ValueError(
            "SparseLoRA is already applied to this model; call engine.detach() on its engine before applying it again"
        )
    base_config = _model_config(model)
    spec = get_arch(base_config.model_type)
    layers_count = num_layers(model, spec)
    ffn_sparsity = layer_schedule(config, layers_count, "mlp")
    attn_sparsity = layer_schedule(config, layers_count, "attn")
    check_supported(spec, any(ffn_sparsity), any(attn_sparsity), config.sparse_pass)
    if config.sparse_pass == "backward":
        return _attach(_backward_engine(model, spec, config, layers_count, ffn_sparsity, attn_sparsity), model)
    name = model_name or base_config.name_or_path or base_config.model_type
    dtype = weights_dtype(model, spec)
    cache = Path(config.svd_cache) if config.svd_cache else default_cache_path(name, config.svd_rank, dtype)
    factors, stats = get_factors(model, spec, config.svd_rank, cache, progress=progress)
    modules = dict(model.named_modules())
    names: dict[int, dict[str, str]] = {}
    for proj in iter_projections(model, spec):
        names.setdefault(proj.layer, {})[proj.role] = proj.name
    engine = SparseLoRAEngine(
        config=config,
        ffn=[
            _ffn_block(modules, names[i], spec, base_config, factors, i, ffn_sparsity[i], config)
            for i in range(layers_count)
            if spec.ffn not in FFN_REFUSED
        ],
        attention=[
            _attention_block(modules, names[i], spec, base_config, factors, i, attn_sparsity[i], config)
            for i in range(layers_count)
            if attn_sparsity[i] > 0
        ],
        svd_stats=stats,
    )
    if spec.kind == "decoder" and config.dense_output_tokens:
        engine._model_hook = model.register_forward_pre_hook(engine.capture_output_tokens, with_kwargs=True)
    return _attach(engine, model)


def _attach(engine: SparseLoRAEngine, model: nn.Module) -> SparseLoRAEngine:
    for block in [*engine.ffn, *engine.attention]:
        block.attach(engine)
    engine._step_hook = model.register_forward_pre_hook(engine.count_training_forward, with_kwargs=True)
    engine._model = model
    model._sparselora_engine = engine
    return engine


def _backward_engine(model, spec: ArchSpec, config: SparseLoRAConfig, layers_count, ffn_sparsity, attn_sparsity):
    """Exact forward, sparse input gradients through the frozen weights: no estimator to build."""
    modules = dict(model.named_modules())
    names: dict[int, dict[str, str]] = {}
    for proj in iter_projections(model, spec):
        names.setdefault(proj.layer, {})[proj.role] = proj.name
    ffn = [
        BackwardSparseFFN(
            layer=i,
            up=modules[names[i]["up"]],
            down=modules[names[i]["down"]],
            gate=modules[names[i]["gate"]] if "gate" in names[i] else None,
            sparsity=ffn_sparsity[i],
            rule=config.backward_rule,
            estimator_tokens=config.estimator_tokens,
            activation=activation_of(_model_config(model), spec.activation_attr),
            residual_rank=config.backward_residual_rank,
        )
        for i in range(layers_count)
        if spec.ffn not in FFN_REFUSED
    ]
    attention = [
        BackwardSparseAttention(i, *(modules[names[i][role]] for role in ("q", "k", "v")), sparsity=attn_sparsity[i])
        for i in range(layers_count)
        if attn_sparsity[i] > 0
    ]
    return SparseLoRAEngine(config=config, ffn=ffn, attention=attention)


def _parent(modules: dict[str, nn.Module], name: str) -> nn.Module:
    return modules[name.rsplit(".", 1)[0]]


def _ffn_block(modules, names, spec: ArchSpec, base_config, factors: dict[str, LowRank], layer, sparsity, config):
    swiglu = spec.ffn == "swiglu"
    return SparseFFN(
        layer=layer,
        block=_parent(modules, names["up"]),  # BertIntermediate, LlamaMLP, ...: receives the FFN input
        up=modules[names["up"]],
        down=modules[names["down"]],
        gate=modules[names["gate"]] if swiglu else None,
        activation=activation_of(base_config, spec.activation_attr),
        up_estimator=factor_for(factors, layer, "up"),
        gate_estimator=factor_for(factors, layer, "gate") if swiglu else None,
        sparsity=sparsity,
        estimator_tokens=config.estimator_tokens,
        predictor=config.predictor,
        dense_tokens=_dense_tokens(spec, config),
        score_input=config.ffn_score_input,
        mean_compensation=config.mean_compensation,
    )


def _attention_block(modules, names, spec: ArchSpec, base_config, factors, layer, sparsity, config):
    heads = base_config.num_attention_heads
    return SparseAttention(
        layer=layer,
        module=_parent(modules, names["q"]),  # BertSelfAttention, LlamaAttention, ...
        q=modules[names["q"]],
        k=modules[names["k"]],
        v=modules[names["v"]],
        o=modules[names["o"]],
        heads=heads,
        kv_heads=getattr(base_config, "num_key_value_heads", None) or heads,
        head_dim=getattr(base_config, "head_dim", None) or base_config.hidden_size // heads,
        rotary=spec.kind == "decoder",
        estimators={role: factor_for(factors, layer, role) for role in ("q", "k", "v")},
        sparsity=sparsity,
        estimator_tokens=config.estimator_tokens,
        predictor=config.predictor,
        dense_tokens=_dense_tokens(spec, config),
    )


def _dense_tokens(spec: ArchSpec, config: SparseLoRAConfig) -> Literal["labels", "first"] | None:
    """Which tokens run dense in every sparse block: a decoder's output tokens, an encoder's first token."""
    if not config.dense_output_tokens:
        return None
    return "labels" if spec.kind == "decoder" else "first"


def engine_of(model: nn.Module) -> SparseLoRAEngine:
    """The engine ``apply_sparselora`` attached to ``model`` (the analysis commands and benchmarks use it)."""
    engine = getattr(model, "_sparselora_engine", None)
    if engine is None:
        raise ValueError("this model has no SparseLoRA engine: build it with method sparselora or apply_sparselora")
    return engine
