"""LoRA, then magnitude pruning of the adapter weights, optionally followed by recovery steps.

Training runs as plain LoRA until ``recovery_steps`` before the end; then the smallest
``prune_ratio`` of adapter weights (per matrix, or over all matrices at once) are set to exactly
zero, and the remaining steps fine-tune with that mask held fixed (gradients and weights are
re-masked after every optimiser step). With ``recovery_steps: 0`` pruning happens after the last
step. The saved adapter contains the zeros.
"""

from __future__ import annotations

from typing import Literal

import torch
from peft import get_peft_model
from pydantic import Field
from torch import nn
from transformers import PreTrainedModel, TrainerCallback

from sparselora.methods.lora import LoraOptions, adapter_report, lora_config, lora_weights
from sparselora.methods.registry import BuildContext, MethodSetup, MethodSpec, register


class LoraPruneOptions(LoraOptions):
    prune_ratio: float = Field(0.5, ge=0, lt=1, description="Fraction of adapter weights set to zero.")
    prune_scope: Literal["per_matrix", "global"] = Field(
        "per_matrix", description="Rank magnitudes within each LoRA matrix, or across all of them."
    )
    recovery_steps: int = Field(0, ge=0, description="Final training steps run with the pruning mask held fixed.")


@torch.no_grad()
def magnitude_masks(weights: list[torch.Tensor], ratio: float, scope: str) -> list[torch.Tensor]:
    """Boolean keep-masks that zero the ``ratio`` smallest-magnitude weights."""
    if ratio == 0:
        return [torch.ones_like(w, dtype=torch.bool) for w in weights]
    if scope == "global":
        magnitudes = torch.cat([w.abs().flatten() for w in weights])
        cut = magnitudes.kthvalue(max(1, int(ratio * magnitudes.numel()))).values
        return [w.abs() > cut for w in weights]
    masks = []
    for weight in weights:
        flat = weight.abs().flatten()
        cut = flat.kthvalue(max(1, int(ratio * flat.numel()))).values
        masks.append(weight.abs() > cut)
    return masks


class MagnitudePruning(TrainerCallback):
    def __init__(self, model: nn.Module, options: LoraPruneOptions):
        self.weights = lora_weights(model)
        self.options = options
        self.masks: list[torch.Tensor] | None = None

    @torch.no_grad()
    def prune(self) -> None:
        self.masks = magnitude_masks(self.weights, self.options.prune_ratio, self.options.prune_scope)
        for weight, mask in zip(self.weights, self.masks, strict=True):
            weight.mul_(mask)

    def on_step_end(self, args, state, control, **kwargs):
        if (
            self.masks is None
            and self.options.recovery_steps
            and state.global_step >= state.max_steps - self.options.recovery_steps
        ):
            self.prune()

    @torch.no_grad()
    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.masks is not None:  # recovery: the mask is held fixed (AdamW moments would revive zeros)
            for weight, mask in zip(self.weights, self.masks, strict=True):
                weight.mul_(mask)

    def on_train_end(self, args, state, control, **kwargs):
        if self.masks is None:
            self.prune()


def build_lora_prune(model: PreTrainedModel, ctx: BuildContext) -> MethodSetup:
    options: LoraPruneOptions = ctx.config.method_options  # type: ignore[assignment]
    peft_model = get_peft_model(model, lora_config(model, options, ctx))
    return MethodSetup(
        model=peft_model,
        callbacks=[MagnitudePruning(peft_model, options)],
        report=lambda: adapter_report(peft_model),
    )


register(
    MethodSpec(
        name="lora_prune",
        summary="LoRA, then magnitude pruning of the adapter (optional recovery with the mask fixed)",
        options=LoraPruneOptions,
        build=build_lora_prune,
    )
)
