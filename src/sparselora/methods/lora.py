"""LoRA (Hu et al., 2022) through PEFT: the baseline every sparse method is measured against."""

from __future__ import annotations

import torch
from peft import LoraConfig, TaskType, get_peft_model
from peft.tuners.tuners_utils import _maybe_include_all_linear_layers
from pydantic import Field
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from sparselora.methods.adapter_options import ScaledAdapterOptions, TargetedOptions
from sparselora.methods.registry import BuildContext, MethodSetup, MethodSpec, register
from sparselora.models import UnknownArchitectureError, target_module_names

PEFT_TASK_TYPES = {
    "sequence_classification": TaskType.SEQ_CLS,
    "causal_lm": TaskType.CAUSAL_LM,
    "masked_lm": None,  # PEFT has no masked-LM task type; the generic wrapper does the job
}


class LoraOptions(ScaledAdapterOptions):
    lora_r: int = Field(8, gt=0, description="LoRA rank r.")


class TargetModuleError(ValueError):
    """A configured target module matches nothing in the model."""


def check_targets(model: PreTrainedModel, targets: list[str]) -> None:
    """PEFT's own error does not say which entry is wrong; name it and list what exists."""
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise TargetModuleError(
            f"config key 'target_modules': {missing} match no module of this model. "
            f"Linear module names present: {', '.join(linear)}."
        )


def resolve_targets(model: PreTrainedModel, options: LoraOptions, ctx: BuildContext) -> list[str] | str:
    if isinstance(options.target_modules, list):
        check_targets(model, options.target_modules)
    if options.target_modules is not None:
        return options.target_modules
    if ctx.arch is None:
        raise UnknownArchitectureError(
            f"model_type '{model.config.model_type}' is not in the architecture map, so LoRA "
            "targets cannot be chosen for you: set `target_modules` (e.g. [q_proj, v_proj])."
        )
    return target_module_names(model, ctx.arch, ctx.arch.default_lora_roles)


def fresh_modules_to_save(ctx: BuildContext) -> list[str] | None:
    """Freshly initialised modules (a new head) must train and be saved with the adapter.

    PEFT's SEQ_CLS task type already adds ``classifier``/``score``; list only the others.
    """
    covered = {"classifier", "score"} if ctx.head == "sequence_classification" else set()
    extra = [name for name in ctx.new_modules if name.rsplit(".", 1)[-1] not in covered]
    return extra or None


def all_linear_modules(model: PreTrainedModel, task_type: str) -> list[str]:
    """The modules PEFT's ``all-linear`` adapts on this model: every linear layer but the output head
    (a language model's output embeddings, a classifier's ``classifier``/``score``)."""
    expanded = _maybe_include_all_linear_layers(LoraConfig(target_modules="all-linear", task_type=task_type), model)
    return sorted(expanded.target_modules)


def check_rank(model: PreTrainedModel, targets: list[str] | str, rank: int, key: str) -> None:
    """A rank above a projection's smaller side adds parameters and no expressiveness (and 1e6 exhausts memory)."""
    sizes = [
        (
            name,
            min(module.in_features, module.out_features) if isinstance(module, nn.Linear) else min(module.weight.shape),
        )
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | Conv1D)  # bitsandbytes' 4-bit layers are nn.Linear with packed weights
        and (targets == "all-linear" or any(name == t or name.endswith("." + t) for t in targets))
    ]
    if sizes:
        name, smallest = min(sizes, key=lambda item: item[1])
        if rank > smallest:
            raise TargetModuleError(
                f"config key '{key}': rank {rank} is larger than the smaller side ({smallest}) of the targeted "
                f"projection '{name}'; use {key} <= {smallest}."
            )


def adapter_placement(model: PreTrainedModel, options: TargetedOptions, ctx: BuildContext, rank_key: str) -> dict:
    """The PEFT config fields every adapter method shares: where adapters go and what else is saved.

    ``rank_key`` names the option holding the adapter rank, checked against the targeted projections.
    """
    targets = resolve_targets(model, options, ctx)
    adapted = all_linear_modules(model, PEFT_TASK_TYPES[ctx.head]) if targets == "all-linear" else targets
    check_rank(model, adapted, getattr(options, rank_key), rank_key)
    return {
        "target_modules": targets,
        "task_type": PEFT_TASK_TYPES[ctx.head],
        "modules_to_save": fresh_modules_to_save(ctx),
    }


def lora_config(model: PreTrainedModel, options: LoraOptions, ctx: BuildContext, **extra) -> LoraConfig:
    """The PEFT config shared by LoRA and its variants (which pass ``extra`` fields)."""
    return LoraConfig(
        r=options.lora_r,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        fan_in_fan_out=bool(ctx.arch and ctx.arch.conv1d),
        **adapter_placement(model, options, ctx, "lora_r"),
        **extra,
    )


def build_lora(model: PreTrainedModel, ctx: BuildContext) -> MethodSetup:
    options: LoraOptions = ctx.config.method_options  # type: ignore[assignment]
    peft_model = get_peft_model(model, lora_config(model, options, ctx))
    return MethodSetup(model=peft_model, measurements=lambda: adapter_report(peft_model))


LORA_CITATION = "Hu et al., *LoRA: Low-Rank Adaptation of Large Language Models*, ICLR 2022."

register(
    MethodSpec(
        name="lora",
        summary="LoRA adapters (PEFT), base frozen",
        options=LoraOptions,
        build=build_lora,
        citations=(LORA_CITATION,),
    )
)


def lora_weights(model: nn.Module) -> list[torch.Tensor]:
    """The LoRA A and B matrices of a PEFT model (what the sparse LoRA variants act on)."""
    return [p for name, p in model.named_parameters() if ("lora_A" in name or "lora_B" in name) and p.requires_grad]


def adapter_report(model: nn.Module) -> dict[str, float]:
    """Adapter size and exact-zero sparsity (the head trained alongside is not counted)."""
    weights = lora_weights(model)
    total = sum(w.numel() for w in weights)
    nonzero = sum(int(w.count_nonzero()) for w in weights)
    return {
        "adapter_params": total,
        "adapter_nonzero": nonzero,
        "adapter_sparsity": 1 - nonzero / total if total else 0.0,
    }
