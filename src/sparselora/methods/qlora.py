"""QLoRA (Dettmers et al., 2023): LoRA on a base model stored as 4-bit NormalFloat (bitsandbytes).

The base weights are quantised while loading (``quantization_config``), so the method is a load
argument plus ordinary PEFT LoRA. Freshly initialised modules (a new classifier, MiniLM's pooler)
and the LM head stay in full precision: they train, and quantising random weights only adds
noise. On CPU every forward dequantises each layer, so QLoRA saves memory and costs time; the
comparison tables report both.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from peft import get_peft_model, prepare_model_for_kbit_training
from pydantic import Field
from transformers import BitsAndBytesConfig, PreTrainedModel

from sparselora.methods.lora import LORA_CITATION, LoraOptions, adapter_report, lora_config
from sparselora.methods.registry import BuildContext, MethodSetup, MethodSpec, register

# Heads and poolers that must not be quantised, across the supported architectures. transformers
# matches these from the start of a module name, as a regex, or as a suffix: ".*pooler" catches
# "bert.pooler.dense".
_FULL_PRECISION_MODULES = [".*classifier", ".*pooler", ".*score", ".*lm_head", ".*cls"]


class MissingBitsAndBytesError(ImportError):
    """QLoRA needs bitsandbytes for its 4-bit layers."""


class QLoraOptions(LoraOptions):
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type of the base weights.")
    double_quant: bool = Field(True, description="Also quantise the per-block scales (QLoRA's double quantisation).")


def require_bitsandbytes() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise MissingBitsAndBytesError(
            "method 'qlora' needs bitsandbytes, which is not installed: `pip install 'sparselora[qlora]'` "
            "(its CPU backend works), or choose another `method`."
        ) from None


def quantization_kwargs(options: QLoraOptions, compute_dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """4-bit NF4 storage; the 4-bit layers compute in the run's precision (bf16 on a GPU with ``precision: auto``)."""
    require_bitsandbytes()
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=options.quant_type,
            bnb_4bit_use_double_quant=options.double_quant,
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=_FULL_PRECISION_MODULES,
        )
    }


def keep_training_kernel(model: PreTrainedModel) -> None:
    """Evaluate the 4-bit layers with the kernel they train with.

    Recent bitsandbytes (0.50.2 here) repacks a ``Linear4bit`` weight for a fused AVX512-BF16 kernel at its first
    CPU forward in eval mode without gradients. The repack reshapes the block scales as
    ``[out_features, in_features // blocksize]``, so it fails on any layer whose ``in_features`` is not
    a multiple of the block size (64): ``RuntimeError: shape '[32, 0]' is invalid`` on a hidden size of
    32 (0.50.2). Where it works it computes in bf16 whatever ``bnb_4bit_compute_dtype`` says, so the
    evaluation would measure other numerics than training. Turning it off keeps one code path.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def build_qlora(model: PreTrainedModel, ctx: BuildContext) -> MethodSetup:
    # No forward pass before wrapping: bitsandbytes' CPU path then fails with an in-place view error.
    options: QLoraOptions = ctx.config.method_options  # type: ignore[assignment]
    # PEFT's k-bit recipe: norms, embeddings and heads in fp32, input gradients on for checkpointing
    model = prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=ctx.config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    peft_model = get_peft_model(model, lora_config(model, options, ctx))
    return MethodSetup(model=peft_model, measurements=lambda: {**adapter_report(peft_model), **quantized_report(model)})


def quantized_report(model: PreTrainedModel) -> dict[str, Any]:
    """How much of the base is 4-bit, and the weights' footprint in memory."""
    import bitsandbytes as bnb

    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    return {
        "quantized_linear_layers": len(quantized),
        "weights_footprint_mb": model.get_memory_footprint() / 2**20,
    }


register(
    MethodSpec(
        name="qlora",
        summary="QLoRA: LoRA on a 4-bit NF4 base (bitsandbytes); heads stay full precision",
        options=QLoraOptions,
        build=build_qlora,
        load_kwargs=quantization_kwargs,
        prepare_base=keep_training_kernel,
        cannot_merge=(
            "the adapter was trained against 4-bit NF4 weights; merged into them the model stays 4-bit, and merged "
            "into the full-precision base it is not the model that was evaluated. Serve the adapter on the 4-bit "
            "base (PeftModel.from_pretrained), as the model card shows"
        ),
        citations=(LORA_CITATION, "Dettmers et al., *QLoRA: Efficient Finetuning of Quantized LLMs*, NeurIPS 2023."),
        card_notes=lambda _config: [
            "The adapter was trained on a base model loaded in 4-bit NF4 (bitsandbytes); load the base with "
            "the same `quantization_config` (see `sparselora.methods.qlora.quantization_kwargs`) to reproduce "
            "the metrics exactly."
        ],
    )
)
