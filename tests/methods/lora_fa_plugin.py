"""A method from outside the package, in one file: LoRA-FA (Zhang et al., 2023), LoRA with A frozen at init.

Registered through ``SPARSELORA_METHODS=tests.methods.lora_fa_plugin``; nothing else in sparselora
changes for it. tests/methods/test_plugin_method.py runs it through train, eval, flops, compare and the card.
"""

from __future__ import annotations

from peft import get_peft_model
from transformers import PreTrainedModel

from sparselora.flops import uniform_lora
from sparselora.methods import BuildContext, MethodSetup, MethodSpec, register
from sparselora.methods.lora import LORA_CITATION, LoraOptions, adapter_report, lora_config

LORA_FA_CITATION = "Zhang et al., *LoRA-FA: Memory-efficient Low-rank Adaptation for LLMs Fine-tuning*, 2023."


def build_lora_fa(model: PreTrainedModel, ctx: BuildContext) -> MethodSetup:
    peft_model = get_peft_model(model, lora_config(model, ctx.config.method_options, ctx))
    for name, param in peft_model.named_parameters():
        if "lora_A" in name:
            param.requires_grad_(False)  # the random down-projection stays as initialised
    return MethodSetup(model=peft_model, measurements=lambda: adapter_report(peft_model))


register(
    MethodSpec(
        name="lora_fa",
        summary="LoRA-FA: LoRA with the A matrices frozen at initialisation",
        options=LoraOptions,
        build=build_lora_fa,
        flops_setup=uniform_lora("lora_r"),
        citations=(LORA_CITATION, LORA_FA_CITATION),
        card_notes=lambda config: [f"Only the B matrices trained (rank {config.option('lora_r')})."],
    )
)
