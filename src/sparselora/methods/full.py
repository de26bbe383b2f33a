"""Full fine-tuning: every weight trains. The reference point for accuracy and cost."""

from __future__ import annotations

from transformers import PreTrainedModel

from sparselora.methods.registry import BuildContext, MethodOptions, MethodSetup, MethodSpec, register


def build_full(model: PreTrainedModel, ctx: BuildContext) -> MethodSetup:
    model.requires_grad_(True)
    return MethodSetup(model=model)


register(
    MethodSpec(
        name="full",
        summary="full fine-tuning, all weights train",
        options=MethodOptions,
        build=build_full,
        flops_setup=lambda _config, _layers, _report: {"full_finetune": True, "lora_ranks": {}},
    )
)
