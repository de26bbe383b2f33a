"""DoRA (Liu et al., 2024): weight-decomposed LoRA, magnitude and direction trained apart. PEFT's own."""

from __future__ import annotations

from peft import get_peft_model
from transformers import PreTrainedModel

from sparselora.methods.lora import LORA_CITATION, LoraOptions, adapter_report, lora_config
from sparselora.methods.registry import BuildContext, MethodSetup, MethodSpec, register


def build_dora(model: PreTrainedModel, ctx: BuildContext) -> MethodSetup:
    options: LoraOptions = ctx.config.method_options  # type: ignore[assignment]
    peft_model = get_peft_model(model, lora_config(model, options, ctx, use_dora=True))
    return MethodSetup(model=peft_model, measurements=lambda: adapter_report(peft_model))


register(
    MethodSpec(
        name="dora",
        summary="DoRA: weight-decomposed LoRA (PEFT use_dora)",
        options=LoraOptions,
        build=build_dora,
        citations=(LORA_CITATION, "Liu et al., *DoRA: Weight-Decomposed Low-Rank Adaptation*, ICML 2024."),
    )
)
