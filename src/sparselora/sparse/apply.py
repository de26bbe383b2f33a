"""`apply_sparselora`: the sparse blocks an architecture's map calls for, attached to a (PEFT) model.

Which parts of SparseLoRA a family supports is decided here, once, with the reason and the key to change when
it does not (``check_supported``); the engine that drives the blocks during training is in ``engine.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from torch import nn
from transformers import PretrainedConfig

from sparselora.models import ArchSpec, get_arch, iter_projections, num_layers
from sparselora.sparse.attention import SparseAttention
from sparselora.sparse.backward import BackwardSparseAttention, BackwardSparseFFN
from sparselora.sparse.engine import SparseLoRAEngine
from sparselora.sparse.ffn import SparseFFN, activation_of
from sparselora.sparse.settings import SparseLoRAConfig, layer_schedule
from sparselora.sparse.svd import LowRank, default_cache_path, factor_for, get_factors, weights_dtype


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
    modules, names = dict(model.named_modules()), _projection_names(model, spec)
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
    modules, names = dict(model.named_modules()), _projection_names(model, spec)
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


def _projection_names(model: nn.Module, spec: ArchSpec) -> dict[int, dict[str, str]]:
    """Layer → role (up, down, q, ...) → module name."""
    names: dict[int, dict[str, str]] = {}
    for proj in iter_projections(model, spec):
        names.setdefault(proj.layer, {})[proj.role] = proj.name
    return names


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
