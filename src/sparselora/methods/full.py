"""Full fine-tuning: every weight trains. The reference point for accuracy and cost."""

from __future__ import annotations

import torch
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
        # every weight trains: fp32 master weights whatever the precision (autocast computes in bf16/fp16)
        load_kwargs=lambda _options, _dtype: {"dtype": torch.float32},
        flops_setup=lambda _config, _layers, _report: {"full_finetune": True, "lora_ranks": {}},
    )
)
