"""AdaLoRA (Zhang et al., ICLR 2023): SVD-shaped adapters whose rank budget moves to where it matters.

PEFT's ``AdaLoraConfig`` holds the schedule in absolute steps, but a run knows its step count only
once the Trainer has sized the data; so the options are fractions of training, turned into steps
at ``on_train_begin``. ``update_and_allocate`` must see the gradients of every step: it runs after
the optimiser step and before the Trainer zeroes them.
"""

from __future__ import annotations

from peft import AdaLoraConfig, get_peft_model
from pydantic import Field, model_validator
from torch import nn
from transformers import PreTrainedModel, TrainerCallback

from sparselora.flops import uniform_lora
from sparselora.methods.adapter_options import ScaledAdapterOptions
from sparselora.methods.lora import LORA_CITATION, adapter_placement
from sparselora.methods.registry import BuildContext, MethodSetup, MethodSpec, register

_PLACEHOLDER_TOTAL_STEPS = 1_000  # replaced by the real step count when training starts


class AdaLoraOptions(ScaledAdapterOptions):
    init_r: int = Field(12, gt=0, description="Rank every adapter starts with.")
    target_r: int = Field(8, gt=0, description="Average rank left after budget reallocation.")
    warmup_ratio_adalora: float = Field(0.1, ge=0, lt=1, description="Fraction of steps before ranks start to move.")
    final_ratio_adalora: float = Field(0.2, ge=0, lt=1, description="Fraction of final steps with ranks frozen.")
    delta_t: int = Field(1, gt=0, description="Reallocate the budget every delta_t steps.")
    orth_reg_weight: float = Field(0.5, ge=0, description="Weight of the orthogonality regulariser on P and Q.")

    @model_validator(mode="after")
    def _schedule_leaves_room(self) -> AdaLoraOptions:
        if self.warmup_ratio_adalora + self.final_ratio_adalora >= 1:
            raise ValueError(
                "warmup_ratio_adalora + final_ratio_adalora must be < 1, or no step is left to reallocate ranks"
            )
        if self.target_r > self.init_r:
            raise ValueError("target_r must be ≤ init_r: AdaLoRA only removes rank")
        return self


class RankReallocation(TrainerCallback):
    """Sizes AdaLoRA's schedule to the run and calls ``update_and_allocate`` every step."""

    def __init__(self, model: nn.Module, options: AdaLoraOptions):
        self.model = model
        self.options = options

    def on_train_begin(self, args, state, control, **kwargs):
        config = self.model.peft_config["default"]
        total = state.max_steps
        config.total_step = total
        config.tinit = int(self.options.warmup_ratio_adalora * total)
        config.tfinal = int(self.options.final_ratio_adalora * total)
        self.model.base_model.rankallocator.set_total_step(total)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.model.base_model.update_and_allocate(state.global_step)


def current_ranks(model: nn.Module) -> dict[str, int]:
    """Ranks in use per adapted module: PEFT's rank masks once the budget has moved, else init_r."""
    config = model.peft_config["default"]
    pattern = config.rank_pattern or {}
    ranks = {}
    for name, param in model.named_parameters():
        if name.endswith("lora_E.default"):
            module = name.removeprefix("base_model.model.").removesuffix(".lora_E.default")
            mask = pattern.get(f"{module}.lora_E.default", pattern.get(f"{module}.lora_E"))
            ranks[module] = int(sum(mask)) if mask is not None else param.shape[0]
    return ranks


def build_adalora(model: PreTrainedModel, ctx: BuildContext) -> MethodSetup:
    options: AdaLoraOptions = ctx.config.method_options  # type: ignore[assignment]
    config = AdaLoraConfig(
        init_r=options.init_r,
        target_r=options.target_r,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        deltaT=options.delta_t,
        orth_reg_weight=options.orth_reg_weight,
        total_step=_PLACEHOLDER_TOTAL_STEPS,
        **adapter_placement(model, options, ctx, "init_r"),
    )
    peft_model = get_peft_model(model, config)

    def report() -> dict:
        ranks = current_ranks(peft_model)
        return {"ranks": ranks, "rank_total": sum(ranks.values()), "rank_budget": options.target_r * len(ranks)}

    return MethodSetup(model=peft_model, callbacks=[RankReallocation(peft_model, options)], measurements=report)


register(
    MethodSpec(
        name="adalora",
        summary="AdaLoRA: adaptive rank budget (PEFT AdaLoraConfig, update_and_allocate every step)",
        options=AdaLoraOptions,
        build=build_adalora,
        flops_setup=uniform_lora("init_r"),
        citations=(
            LORA_CITATION,
            "Zhang et al., *AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning*, ICLR 2023.",
        ),
        card_adapter_rows=lambda adapter: {
            "Rank r": f"{adapter.get('init_r')} at start → {adapter.get('target_r')} on average (budget reallocated)"
        },
    )
)
