"""LoRA, then pruning of the adapter, optionally followed by recovery steps with the mask fixed.

Training runs as plain LoRA until ``recovery_steps`` before the end; then the adapter is pruned and
the remaining steps fine-tune with the pruning mask held fixed (weights are re-masked after every
optimiser step: AdamW's moments would otherwise revive zeros). With ``recovery_steps: 0`` pruning
happens after the last step. The saved adapter contains the zeros.

Three structures, each removing ``prune_ratio`` of its units:

- ``unstructured``: the smallest-magnitude weights (per matrix or over all matrices at once);
- ``rank``: rank components (a column of B with its row of A). Importance ``magnitude`` keeps the
  components with the largest ‖B[:, i]‖·‖A[i, :]‖; ``svd`` first rotates the adapter into the SVD
  basis of ΔW = B·A and keeps the top singular directions (the best rank-k approximation,
  Eckart–Young); ``random`` keeps a random subset;
- ``column``: input columns of ΔW (columns of A). ``magnitude`` ranks them by ‖ΔW[:, j]‖, ``svd`` by
  their leverage score in ΔW's top right singular vectors (the CUR criterion), ``random`` at random.
"""

from __future__ import annotations

from typing import Literal

import torch
from peft import get_peft_model
from pydantic import Field, model_validator
from torch import nn
from transformers import PreTrainedModel, TrainerCallback

from sparselora.methods.lora import LORA_CITATION, LoraOptions, adapter_report, lora_config, lora_weights
from sparselora.methods.registry import BuildContext, MethodSetup, MethodSpec, register

Structure = Literal["unstructured", "rank", "column"]
Importance = Literal["magnitude", "svd", "random"]


class LoraPruneOptions(LoraOptions):
    prune_ratio: float = Field(0.5, ge=0, lt=1, description="Fraction of adapter weights (or ranks/columns) removed.")
    prune_scope: Literal["per_matrix", "global"] = Field(
        "per_matrix", description="Unstructured: rank magnitudes within each LoRA matrix, or across all of them."
    )
    prune_structure: Structure = Field(
        "unstructured", description="What is removed: single weights, rank components or input columns."
    )
    prune_importance: Importance = Field("magnitude", description="How structured units are ranked.")
    recovery_steps: int = Field(0, ge=0, description="Final training steps run with the pruning mask held fixed.")

    @model_validator(mode="after")
    def _importance_fits_structure(self) -> LoraPruneOptions:
        if self.prune_structure == "unstructured" and self.prune_importance != "magnitude":
            raise ValueError(
                f"prune_importance '{self.prune_importance}' needs prune_structure 'rank' or 'column'; "
                "unstructured pruning is by magnitude"
            )
        return self


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


def _top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    kept = torch.zeros_like(scores, dtype=torch.bool)
    kept[scores.topk(keep).indices] = True
    return kept


def _random_subset(size: int, keep: int, generator: torch.Generator) -> torch.Tensor:
    kept = torch.zeros(size, dtype=torch.bool)
    kept[torch.randperm(size, generator=generator)[:keep]] = True
    return kept


@torch.no_grad()
def prune_rank(a: torch.Tensor, b: torch.Tensor, keep: int, importance: Importance, generator: torch.Generator):
    """Keep ``keep`` rank components of B·A in place; returns the keep-masks of A and B."""
    rank = a.shape[0]
    if importance == "svd":
        u, s, vh = torch.linalg.svd(b @ a, full_matrices=False)
        root = s[:rank].sqrt()
        b.copy_(u[:, :rank] * root)
        a.copy_(root[:, None] * vh[:rank])
        kept = torch.arange(rank) < keep
    elif importance == "magnitude":
        kept = _top(b.norm(dim=0) * a.norm(dim=1), keep)
    else:
        kept = _random_subset(rank, keep, generator)
    a.mul_(kept[:, None])
    b.mul_(kept[None, :])
    return kept[:, None].expand_as(a).clone(), kept[None, :].expand_as(b).clone()


@torch.no_grad()
def prune_columns(a: torch.Tensor, b: torch.Tensor, keep: int, importance: Importance, generator: torch.Generator):
    """Keep ``keep`` input columns of ΔW = B·A (columns of A) in place; returns A's keep-mask."""
    columns = a.shape[1]
    if importance == "random":
        kept = _random_subset(columns, keep, generator)
    else:
        delta = b @ a
        if importance == "magnitude":
            kept = _top(delta.norm(dim=0), keep)
        else:  # leverage scores in the top right singular vectors
            _, _, vh = torch.linalg.svd(delta, full_matrices=False)
            kept = _top(vh[: min(keep, a.shape[0])].pow(2).sum(dim=0), keep)
    a.mul_(kept[None, :])
    return kept[None, :].expand_as(a).clone()


def lora_pairs(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(A, B) weight pairs of every LoRA module."""
    return [
        (module.lora_A["default"].weight, module.lora_B["default"].weight)
        for module in model.modules()
        if hasattr(module, "lora_A") and "default" in module.lora_A
    ]


def prune_adapters(
    model: nn.Module,
    ratio: float,
    structure: Structure = "unstructured",
    importance: Importance = "magnitude",
    scope: str = "per_matrix",
    generator: torch.Generator | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Prune every LoRA adapter of ``model`` in place. Returns the pruned weights and their keep-masks."""
    if structure == "unstructured":
        weights = lora_weights(model)
        masks = magnitude_masks(weights, ratio, scope)
        apply_masks(weights, masks)
        return weights, masks
    generator = generator or torch.Generator().manual_seed(0)
    weights, masks = [], []
    for a, b in lora_pairs(model):
        if structure == "rank":
            keep = max(1, round((1 - ratio) * a.shape[0]))
            mask_a, mask_b = prune_rank(a, b, keep, importance, generator)
            weights += [a, b]
            masks += [mask_a, mask_b]
        else:
            keep = max(1, round((1 - ratio) * a.shape[1]))
            weights.append(a)
            masks.append(prune_columns(a, b, keep, importance, generator))
    return weights, masks


@torch.no_grad()
def apply_masks(weights: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
    """Zero the pruned weights again (AdamW's moments would otherwise revive them)."""
    for weight, mask in zip(weights, masks, strict=True):
        weight.mul_(mask)


class AdapterPruning(TrainerCallback):
    def __init__(self, model: nn.Module, options: LoraPruneOptions, seed: int = 0):
        self.model = model
        self.options = options
        self.generator = torch.Generator().manual_seed(seed)
        self.weights: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] | None = None

    def prune(self) -> None:
        options = self.options
        self.weights, self.masks = prune_adapters(
            self.model,
            options.prune_ratio,
            options.prune_structure,
            options.prune_importance,
            options.prune_scope,
            self.generator,
        )

    def _in_recovery(self, state) -> bool:
        return bool(self.options.recovery_steps) and state.global_step >= state.max_steps - self.options.recovery_steps

    def on_train_begin(self, args, state, control, **kwargs):
        if self._in_recovery(state):  # resumed from a checkpoint taken after pruning: its zeros are the mask
            self.weights = lora_weights(self.model)
            self.masks = [weight != 0 for weight in self.weights]

    def on_step_end(self, args, state, control, **kwargs):
        if self.masks is None and self._in_recovery(state):
            self.prune()

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.masks is not None:
            apply_masks(self.weights, self.masks)

    def on_train_end(self, args, state, control, **kwargs):
        if self.masks is None:
            self.prune()


def build_lora_prune(model: PreTrainedModel, ctx: BuildContext) -> MethodSetup:
    options: LoraPruneOptions = ctx.config.method_options  # type: ignore[assignment]
    peft_model = get_peft_model(model, lora_config(model, options, ctx))
    return MethodSetup(
        model=peft_model,
        callbacks=[AdapterPruning(peft_model, options, seed=ctx.config.seed)],
        measurements=lambda: adapter_report(peft_model),
    )


register(
    MethodSpec(
        name="lora_prune",
        summary="LoRA, then pruning of the adapter (weights, rank components or columns; optional recovery)",
        options=LoraPruneOptions,
        build=build_lora_prune,
        citations=(LORA_CITATION,),
    )
)
