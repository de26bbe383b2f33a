"""SparseLoRA (Khaki et al., ICML 2025): dense LoRA adapters, contextually sparse frozen FFN.

The method is LoRA plus the engine in ``sparselora.sparse``; this file only wires the two into
the registry. The saved adapter is a plain PEFT LoRA adapter: sparsity changes how training
computes, not what is learned or stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from peft import get_peft_model
from torch import nn
from transformers import PreTrainedModel

from sparselora.flops import uniform_lora
from sparselora.methods.lora import LORA_CITATION, LoraOptions, lora_config
from sparselora.methods.registry import BuildContext, MethodSetup, MethodSpec, register
from sparselora.sparse.apply import apply_sparselora
from sparselora.sparse.settings import SparseLoRAConfig, layer_schedule

if TYPE_CHECKING:
    from sparselora.config import RunConfig

METHOD = "sparselora"


class SparseLoRAOptions(LoraOptions, SparseLoRAConfig):
    """LoRA keys plus the sparsity keys (svd_rank, ffn_sparsity, layer_sparsity, ...)."""


def sparse_config_of(options: SparseLoRAOptions, **changes) -> SparseLoRAConfig:
    """The engine's settings out of a run's method options (which also hold the LoRA keys)."""
    return SparseLoRAConfig(**{key: getattr(options, key) for key in SparseLoRAConfig.model_fields} | changes)


def lora_counterpart(config: RunConfig) -> RunConfig:
    """The same run as plain dense LoRA: what SparseLoRA is measured against (benchmarks)."""
    from sparselora.config import build_config

    keep = set(type(config).model_fields) - {"method_options", "method"} | set(LoraOptions.model_fields)
    return build_config({k: v for k, v in config.to_flat_dict().items() if k in keep} | {"method": "lora"})


def build_sparselora(model: PreTrainedModel, ctx: BuildContext) -> MethodSetup:
    options: SparseLoRAOptions = ctx.config.method_options  # type: ignore[assignment]
    peft_model = get_peft_model(model, lora_config(model, options, ctx))
    sparse_config = sparse_config_of(options)
    engine = apply_sparselora(peft_model, sparse_config, model_name=ctx.config.model, progress=ctx.config.progress)
    return MethodSetup(model=peft_model, callbacks=[engine.callback()], measurements=engine.measurements)


def sparse_evaluation(model: nn.Module, config: RunConfig, batches: Callable[[int], list[dict]]) -> None:
    """The run's engine, sparse in evaluation too; outliers re-found on its first training batches.

    Separates what sparse training learned from how well it carries over to the dense model.
    """
    sparse_config = sparse_config_of(config.method_options, sparse_eval=True)
    engine = apply_sparselora(model, sparse_config, model_name=config.model, progress=False)
    engine.calibrate_outliers(model, batches(sparse_config.calibration_steps))
    engine.start_sparse_now()


def sparselora_flops(config: dict[str, Any], layers: int, method_report: dict[str, Any]) -> dict[str, Any]:
    """LoRA ranks plus each layer's FFN/attention sparsity and the estimator's size."""
    sparse = SparseLoRAConfig(**{key: config[key] for key in SparseLoRAConfig.model_fields if key in config})
    return {
        **uniform_lora()(config, layers, method_report),
        "ffn_sparsity": layer_schedule(sparse, layers, "mlp"),
        "attn_sparsity": layer_schedule(sparse, layers, "attn"),
        "svd_rank": sparse.svd_rank,
        "estimator_tokens": sparse.estimator_tokens,
        "sparse_pass": sparse.sparse_pass,
        "backward_rule": sparse.backward_rule,
        "backward_residual_rank": sparse.backward_residual_rank,
    }


register(
    MethodSpec(
        name=METHOD,
        summary="LoRA + SVD-estimated contextual sparsity of the frozen FFN and attention",
        options=SparseLoRAOptions,
        build=build_sparselora,
        flops_setup=sparselora_flops,
        sparse_evaluation=sparse_evaluation,
        citations=(
            LORA_CITATION,
            "Khaki et al., *SparseLoRA: Accelerating LLM Fine-Tuning with Contextual Sparsity*, ICML 2025.",
        ),
    )
)
