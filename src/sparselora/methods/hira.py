"""HiRA (Huang et al., ICLR 2025): high-rank updates as a Hadamard product ΔW = W₀ ⊙ (B·A). PEFT's own.

The update inherits the rank of the frozen weight while training only r(n+m) parameters.
"""

from __future__ import annotations

import peft
from pydantic import Field
from transformers import PreTrainedModel

from sparselora.flops import uniform_lora
from sparselora.methods.adapter_options import TargetedOptions
from sparselora.methods.lora import adapter_placement
from sparselora.methods.registry import BuildContext, MethodSetup, MethodSpec, register


class MissingHiraError(ImportError):
    """The installed PEFT has no HiRA."""


class HiraOptions(TargetedOptions):
    hira_r: int = Field(32, gt=0, description="Rank r of the B·A factor multiplied element-wise with W₀.")
    hira_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the HiRA branch input.")


def hira_config_class() -> type:
    config_class = getattr(peft, "HiraConfig", None)
    if config_class is None:
        raise MissingHiraError(
            f"method 'hira' needs PEFT ≥ 0.20 (HiraConfig); installed PEFT is {peft.__version__}: "
            "`pip install -U 'peft>=0.20'`."
        )
    return config_class


def build_hira(model: PreTrainedModel, ctx: BuildContext) -> MethodSetup:
    options: HiraOptions = ctx.config.method_options  # type: ignore[assignment]
    config = hira_config_class()(
        r=options.hira_r,
        hira_dropout=options.hira_dropout,
        fan_in_fan_out=bool(ctx.arch and ctx.arch.conv1d),
        **adapter_placement(model, options, ctx, "hira_r"),
    )
    peft_model = peft.get_peft_model(model, config)
    return MethodSetup(model=peft_model, measurements=lambda: {"adapter_params": _hira_params(peft_model)})


def _hira_params(model) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if "hira_" in name and p.requires_grad)


register(
    MethodSpec(
        name="hira",
        summary="HiRA: Hadamard high-rank adaptation W₀ ⊙ BA (PEFT HiraConfig)",
        options=HiraOptions,
        build=build_hira,
        flops_setup=uniform_lora("hira_r"),
        citations=("Huang et al., *HiRA: Parameter-Efficient Hadamard High-Rank Adaptation*, ICLR 2025.",),
        card_adapter_rows=lambda adapter: {"Dropout": adapter.get("hira_dropout", "–")},
    )
)
