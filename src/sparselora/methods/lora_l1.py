"""LoRA with an L1 penalty that produces *exact* zeros: a proximal soft-threshold step.

Adding λ‖w‖₁ to the loss only pushes weights towards zero; they never land on it, so sparsity
would have to be thresholded after the fact. The proximal step of L1 after each optimiser step,
``w ← sign(w)·max(|w| − lr·λ, 0)``, sets small weights to exactly zero, so the reported sparsity is
counted, not chosen.
"""

from __future__ import annotations

import torch
from peft import get_peft_model
from pydantic import Field
from torch import nn
from transformers import PreTrainedModel, TrainerCallback

from sparselora.methods.lora import LORA_CITATION, LoraOptions, adapter_report, lora_config, lora_weights
from sparselora.methods.registry import BuildContext, MethodSetup, MethodSpec, register


class LoraL1Options(LoraOptions):
    l1_lambda: float = Field(1e-3, ge=0, description="L1 strength λ: each step shrinks adapter weights by lr·λ.")


@torch.no_grad()
def soft_threshold(weights: list[torch.Tensor], threshold: float) -> None:
    for weight in weights:
        weight.copy_(weight.sign() * (weight.abs() - threshold).clamp_min(0))


class ProximalL1(TrainerCallback):
    """After every optimiser step, the L1 proximal step with the learning rate of that step."""

    def __init__(self, model: nn.Module, l1_lambda: float):
        self.weights = lora_weights(model)
        self.l1_lambda = l1_lambda

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        soft_threshold(self.weights, optimizer.param_groups[0]["lr"] * self.l1_lambda)


def build_lora_l1(model: PreTrainedModel, ctx: BuildContext) -> MethodSetup:
    options: LoraL1Options = ctx.config.method_options  # type: ignore[assignment]
    peft_model = get_peft_model(model, lora_config(model, options, ctx))
    return MethodSetup(
        model=peft_model,
        callbacks=[ProximalL1(peft_model, options.l1_lambda)],
        measurements=lambda: adapter_report(peft_model),
    )


register(
    MethodSpec(
        name="lora_l1",
        summary="LoRA + L1 proximal step: exact zeros",
        options=LoraL1Options,
        build=build_lora_l1,
        citations=(LORA_CITATION,),
    )
)
