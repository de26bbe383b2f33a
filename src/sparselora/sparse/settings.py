"""SparseLoRA settings, and the per-layer sparsity schedule they describe."""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Sparsity = float  # fraction of channels skipped, in [0, 1)
Predictor = Literal["svd", "oracle", "random"]
SparsePass = Literal["forward", "backward"]
BackwardRule = Literal["contribution", "random", "gradient"]
DenseSpan = Literal["tokens", "batch_span"]
FFNScoreInput = Literal["tokens", "sequence_mean"]

_SEED_FORM = re.compile(r"^layers?\.(\d+)$")  # "layer.3": FFN sparsity of layer 3 (the short form)
_PART_FORM = re.compile(r"^layers\.(\d+)\.(mlp|attn)$")  # "layers.3.mlp" / "layers.3.attn"


class SparseLoRAConfig(BaseModel):
    """How much of the frozen computation to skip, where and when. LoRA itself stays dense."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    sparse_pass: SparsePass = Field(
        "forward",
        description=(
            "'forward': SVD-estimated channels in forward and backward (the paper's method); 'backward': the"
            " forward stays exactly dense LoRA's and only the input gradient through the frozen weights is"
            " sparse (FFN: ffn_sparsity of the channels skipped; attention: attn_sparsity > 0 drops the frozen"
            " q/k/v input gradient)."
        ),
    )
    backward_rule: BackwardRule = Field(
        "contribution",
        description=(
            "sparse_pass backward: which FFN channels carry the input gradient: 'contribution' (largest"
            " ‖h_c‖·‖W_down[:, c]‖ of the batch), 'gradient' (largest share of the input gradient, from the"
            " exact gradient on estimator_tokens sampled tokens) or 'random' (uniform, scaled to stay unbiased)."
        ),
    )
    backward_residual_rank: int = Field(
        0,
        ge=0,
        description=(
            "sparse_pass backward: 0 passes no input gradient through the skipped FFN channels; r > 0 passes"
            " theirs through rank-r SVD factors of the frozen up/gate/down weights (the kept channels stay"
            " exact). Needs the block backward (no adapter on the FFN projections)."
        ),
    )
    svd_rank: int = Field(8, gt=0, description="Rank of the SVD estimator of each selectable projection.")
    ffn_sparsity: float = Field(
        0.5, ge=0, lt=1, description="Fraction of FFN channels skipped in every layer not named in layer_sparsity."
    )
    attn_sparsity: float = Field(
        0.0, ge=0, lt=1, description="Fraction of Q/K and V/O channels skipped per attention head."
    )
    layer_sparsity: dict[str, float] | None = Field(
        None,
        description="Per-layer overrides: {'layer.0': 0.4} (FFN) or {'layers.0.mlp': 0.4, 'layers.0.attn': 0.2}.",
    )
    sparse_warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of training steps run dense first.")
    sparse_cooldown_ratio: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Fraction of training steps run dense at the end (adapters settle on the dense evaluation model).",
    )
    calibration_steps: int = Field(
        2, ge=1, description="First training steps run dense to find outlier channels (part of the warm-up)."
    )
    outlier_factor: float = Field(
        20.0,
        gt=1,
        description="Always keep FFN channels whose output contribution exceeds this multiple of the median channel's.",
    )
    max_outlier_fraction: float = Field(
        0.02, ge=0, lt=1, description="At most this share of channels is kept as outliers."
    )
    predictor: Predictor = Field(
        "svd",
        description=(
            "What picks the channels: 'svd' (the training-free estimator, the method), 'oracle' (the exact"
            " projections: an upper bound on selection quality that saves no time), 'random' (a baseline)."
        ),
    )
    estimator_tokens: int = Field(
        256,
        gt=0,
        description="Score channels on at most this many evenly spaced tokens of the batch (bounds estimator cost).",
    )
    dense_output_tokens: bool = Field(
        True,
        description=(
            "Compute output tokens dense in the FFN and in attention (their q/k/v from the full projections,"
            " their o input dense), context tokens sparse. Decoders: tokens whose next label is trained"
            " (!= -100); encoders: the first token, which the classification head reads."
        ),
    )
    dense_span: DenseSpan = Field(
        "tokens",
        description=(
            "Decoders with dense_output_tokens: which positions run dense: 'tokens' (exactly the output tokens"
            " of each row) or 'batch_span' (every row's positions from the batch's first output position to"
            " its last, the span the reference implementation slices)."
        ),
    )
    ffn_score_input: FFNScoreInput = Field(
        "tokens",
        description=(
            "What the FFN channel scores read: 'tokens' (the norm over sampled tokens of each channel's"
            " estimated activation) or 'sequence_mean' (the estimate at each sequence's mean input, normed"
            " over the batch: one row per sequence)."
        ),
    )
    mean_compensation: bool = Field(
        False,
        description=(
            "Skipped FFN channels contribute their running mean (tracked on dense training steps) instead of"
            " zero, so sparse steps do not shift the FFN output (FLAP-style bias compensation)."
        ),
    )
    svd_cache: str | None = Field(
        None, description="SVD factor cache file; default ~/.cache/sparselora/svd/<model>-r<rank>.safetensors."
    )
    sparse_eval: bool = Field(
        False, description="Also run evaluation sparse (default: evaluation and inference are dense)."
    )

    @field_validator("layer_sparsity")
    @classmethod
    def _valid_layer_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, sparsity in (value or {}).items():
            if not (_SEED_FORM.match(key) or _PART_FORM.match(key)):
                raise ValueError(f"key '{key}' must look like 'layer.N', 'layers.N.mlp' or 'layers.N.attn'")
            if not 0 <= sparsity < 1:
                raise ValueError(f"'{key}': sparsity must be in [0, 1), got {sparsity}")
        return value


def kept_channels(width: int, sparsity: float) -> int:
    """Channels kept out of ``width`` at ``sparsity``: at least one. One rounding rule for engine and FLOPs."""
    return max(1, math.ceil((1.0 - sparsity) * width))


def layer_schedule(config: SparseLoRAConfig, num_layers: int, part: str) -> list[Sparsity]:
    """Sparsity of every layer for ``part`` ('mlp' or 'attn'); layer names beyond the model are an error.

    The short ``layer.N`` keys set the FFN (mlp) sparsity.
    """
    default = config.ffn_sparsity if part == "mlp" else config.attn_sparsity
    schedule = [default] * num_layers
    for key, sparsity in (config.layer_sparsity or {}).items():
        match = _SEED_FORM.match(key) or _PART_FORM.match(key)
        assert match is not None  # validated above
        layer = int(match.group(1))
        if layer >= num_layers:
            raise ValueError(
                f"layer_sparsity key '{key}': this model has layers 0..{num_layers - 1}, there is no layer {layer}"
            )
        key_part = "mlp" if match.re is _SEED_FORM else match.group(2)
        if key_part == part:
            schedule[layer] = sparsity
    return schedule
