"""Contextual FFN sparsity: per batch, compute only the FFN channels the estimator predicts matter.

For each layer, a pre-hook on the FFN block runs the SVD estimator on the block's input, scores
every intermediate channel by the L2 norm (over the batch's tokens) of its *estimated
activation* — the value that feeds the down projection — and keeps the top-k plus the outlier
channels found during calibration. The up (and gate) projection then multiplies only the kept
rows of its weight, the down projection only the kept columns, so forward **and** backward
(the input gradient through the frozen weights) shrink by the kept fraction. LoRA branches stay
dense: their low-rank products are computed in full and sliced, never approximated.

Optionally (``mean_compensation``), the skipped channels are not taken as zero but as their running
mean, tracked like BatchNorm's on dense training steps: the down projection adds
``W_down[:, skipped] · mean[skipped]``, one matrix-vector product per layer and batch. Dropping
channels shifts the FFN output by their mean contribution, a bias the adapters would otherwise learn
to undo and then carry into dense evaluation (FLAP's bias compensation, An et al. 2024).

Wiring is per instance: each projection's ``forward`` attribute is replaced on that module
object only (``del module.forward`` restores it). No library class is patched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from sparselora.sparse.settings import FFNScoreInput, Predictor, kept_channels
from sparselora.sparse.svd import LowRank


def linear_parts(module: nn.Module) -> tuple[nn.Linear, list[tuple[torch.Tensor, torch.Tensor, float, nn.Module]]]:
    """The frozen base linear and its active LoRA branches (A weight, B weight, scale, dropout)."""
    base = getattr(module, "base_layer", None)
    if base is None:
        return module, []  # type: ignore[return-value]
    if getattr(module, "disable_adapters", False) or getattr(module, "merged", False):
        return base, []
    if any(getattr(module, "use_dora", {}).get(name, False) for name in module.active_adapters):
        raise NotImplementedError("SparseLoRA supports plain LoRA adapters, not DoRA, on sparsified FFN projections")
    branches = [
        (module.lora_A[name].weight, module.lora_B[name].weight, module.scaling[name], module.lora_dropout[name])
        for name in module.active_adapters
        if name in module.lora_A
    ]
    return base, branches


def rows_forward(module: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Output channels ``keep`` only: ``x @ W[keep].T (+ b[keep]) + LoRA(x)[keep]``."""
    base, branches = linear_parts(module)
    bias = base.bias.index_select(0, keep) if base.bias is not None else None
    out = F.linear(x, base.weight.index_select(0, keep), bias)
    for a, b, scale, dropout in branches:
        lora = F.linear(F.linear(dropout(x).to(a.dtype), a), b.index_select(0, keep)) * scale
        out = (out + lora).to(out.dtype)  # as PEFT: fp32 adapters over a bf16 base add in fp32
    return out


def predicted_projection(flat: torch.Tensor, module: nn.Module, factor: LowRank, predictor: Predictor) -> torch.Tensor:
    """What channel scores are computed from: the SVD estimate of ``module(flat)`` (the method), the
    exact output ('oracle', which costs the projection it means to skip) or noise ('random')."""
    base = linear_parts(module)[0]
    if predictor == "random":
        return torch.rand(flat.shape[0], base.weight.shape[0], device=flat.device, dtype=flat.dtype)
    if predictor == "oracle":
        return F.linear(flat, base.weight, base.bias)
    out = flat @ factor.a @ factor.b
    return out if base.bias is None else out + base.bias


def transposed(weight: torch.Tensor, cached: torch.Tensor | None) -> torch.Tensor:
    """Wᵀ made contiguous, rebuilt only when the model moved or changed dtype since ``cached`` was made."""
    if cached is not None and cached.device == weight.device and cached.dtype == weight.dtype:
        return cached
    return weight.detach().T.contiguous()


def columns_forward(module: nn.Module, h: torch.Tensor, keep: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """Input channels ``keep`` only (the others are zero): ``h @ W[:, keep].T (+ b) + LoRA``.

    ``weight_t`` is Wᵀ kept contiguous so that selecting columns is a fast row gather.
    """
    base, branches = linear_parts(module)
    out = F.linear(h, weight_t.index_select(0, keep).T, base.bias)
    for a, b, scale, dropout in branches:
        lora = F.linear(F.linear(dropout(h).to(a.dtype), a.index_select(1, keep)), b) * scale
        out = (out + lora).to(out.dtype)
    return out


def skipped_mean_output(module: nn.Module, means: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """What the skipped input channels add on average: ``W[:, skipped] · mean[skipped]`` plus LoRA's share.

    No bias (``columns_forward`` adds it) and no dropout: this stands in for the mean, not a sample.
    """
    base, branches = linear_parts(module)
    skipped = means.to(base.weight.dtype).index_fill(0, keep, 0.0)
    out = F.linear(skipped, base.weight)
    for a, b, scale, _dropout in branches:
        out = out + F.linear(F.linear(skipped.to(a.dtype), a), b) * scale
    return out


@dataclass
class SparseFFN:
    """One layer's FFN: its projections, estimator, schedule and the current batch's kept channels."""

    layer: int
    block: nn.Module  # receives the FFN input (BertIntermediate, LlamaMLP, ...)
    up: nn.Module
    down: nn.Module
    gate: nn.Module | None
    activation: nn.Module
    up_estimator: LowRank
    gate_estimator: LowRank | None
    sparsity: float
    estimator_tokens: int = 256
    predictor: Predictor = "svd"
    dense_tokens: Literal["labels", "first"] | None = None  # decoder output tokens / the token an encoder's head reads
    score_input: FFNScoreInput = "tokens"
    keep: torch.Tensor | None = None
    outliers: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    channel_sq_sums: torch.Tensor | None = None  # calibration statistics
    mean_compensation: bool = False
    running_mean: torch.Tensor | None = None  # of each channel's activation, over dense training steps
    mean_momentum: float = 0.1  # as BatchNorm's
    _handles: list = field(default_factory=list)
    _down_weight_t: torch.Tensor | None = None
    _first_token_h: torch.Tensor | None = None  # encoders: the first token's dense activation, joined at down

    @property
    def width(self) -> int:
        return linear_parts(self.up)[0].weight.shape[0]

    @property
    def num_kept(self) -> int:
        return kept_channels(self.width, self.sparsity)

    # selection ------------------------------------------------------------------------------
    @torch.no_grad()
    def estimate(self, x: torch.Tensor) -> torch.Tensor:
        """Estimated post-activation intermediate values, (sampled tokens or sequences × channels).

        Channel scores are norms over tokens: an evenly spaced subset of tokens estimates them
        well and bounds the estimator's cost independently of batch size. ``sequence_mean`` scores
        the estimate at each sequence's mean input instead (the reference implementation's default).
        """
        if self.score_input == "sequence_mean" and x.dim() == 3:
            flat = x.mean(dim=1)  # one mean input per sequence
        else:
            flat = x.reshape(-1, x.shape[-1])
            flat = flat[:: max(1, flat.shape[0] // self.estimator_tokens)]
        self.up_estimator = self.up_estimator.to(flat)
        up = predicted_projection(flat, self.up, self.up_estimator, self.predictor)
        if self.gate_estimator is None:
            return self.activation(up)
        self.gate_estimator = self.gate_estimator.to(flat)
        return self.activation(predicted_projection(flat, self.gate, self.gate_estimator, self.predictor)) * up

    @torch.no_grad()
    def select(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.estimate(x).norm(dim=0)
        if self.outliers.numel():
            scores[self.outliers] = float("inf")
        return torch.topk(scores, self.num_kept, sorted=False).indices.sort().values

    # calibration ----------------------------------------------------------------------------
    @torch.no_grad()
    def record(self, h: torch.Tensor) -> None:
        sums = h.detach().float().pow(2).reshape(-1, h.shape[-1]).sum(0)
        self.channel_sq_sums = sums if self.channel_sq_sums is None else self.channel_sq_sums + sums

    @torch.no_grad()
    def track_mean(self, h: torch.Tensor) -> None:
        batch_mean = h.detach().reshape(-1, h.shape[-1]).float().mean(0)
        if self.running_mean is None or self.running_mean.device != batch_mean.device:
            self.running_mean = batch_mean
        else:
            self.running_mean.lerp_(batch_mean, self.mean_momentum)

    @torch.no_grad()
    def fix_outliers(self, factor: float, max_fraction: float) -> None:
        """Channels whose contribution ‖h_c‖·‖W_down[:, c]‖ dwarfs the median's are always kept."""
        if self.channel_sq_sums is None:
            return
        contribution = self.channel_sq_sums.sqrt() * linear_parts(self.down)[0].weight.float().norm(dim=0)
        candidates = torch.nonzero(contribution > factor * contribution.median()).flatten()
        limit = int(max_fraction * self.width)
        order = contribution[candidates].argsort(descending=True)[:limit]
        self.outliers = candidates[order].sort().values
        self.channel_sq_sums = None

    # wiring -----------------------------------------------------------------------------------
    def attach(self, engine) -> None:
        """Install the selection hook and the sparse forwards on this layer's module instances."""

        def choose(_module, args, kwargs):
            x = args[0] if args else next(iter(kwargs.values()))
            self.keep = None
            if engine.sparse_now(self.sparsity, self.block.training):
                with engine.timing_selection():
                    self.keep = self.select(x)

        def observe_dense(_module, args):
            """Statistics of dense training forwards: outlier calibration, running means."""
            if not self.block.training:
                return
            if engine.calibrating:
                self.record(args[0])
            if self.mean_compensation and self.sparsity > 0 and not engine.sparse_now(self.sparsity, training=True):
                self.track_mean(args[0])

        self._handles = [
            self.block.register_forward_pre_hook(choose, with_kwargs=True),
            self.down.register_forward_pre_hook(observe_dense),
        ]
        for projection in (self.up, self.gate):
            if projection is not None:
                projection.forward = self._rows_forward_for(projection)
        self.down.forward = self._columns_forward_for(self.down)
        if self.dense_tokens == "labels":
            self.block.forward = self._token_split_forward_for(self.block, engine)
        elif self.dense_tokens == "first":
            self.block.forward = self._first_token_forward_for(self.block)

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        for module in (self.up, self.gate, self.down, self.block):
            if module is not None and "forward" in module.__dict__:
                del module.forward
        self._handles, self.keep, self._down_weight_t, self._first_token_h = [], None, None, None

    def _dense(self, forward, x: torch.Tensor) -> torch.Tensor:
        """Run ``forward`` with every channel: the projections read ``self.keep`` at call time."""
        keep, self.keep = self.keep, None
        try:
            return forward(x)
        finally:
            self.keep = keep

    def _rows_forward_for(self, module: nn.Module):
        dense = type(module).forward.__get__(module)

        def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            return dense(x, *args, **kwargs) if self.keep is None else rows_forward(module, x, self.keep)

        return forward

    def _token_split_forward_for(self, block: nn.Module, engine):
        """Decoder FFN: tokens whose next label is trained (output tokens) dense, context tokens sparse.

        The FFN is position-wise, so the two token sets can run separately; the projections read
        ``self.keep`` at call time, so clearing it for the output tokens makes them dense.
        """
        whole = type(block).forward.__get__(block)

        def forward(x: torch.Tensor) -> torch.Tensor:
            split = engine.output_tokens
            if self.keep is None or split is None or split.mask.shape != x.shape[:-1]:
                return whole(x)
            flat = x.reshape(-1, x.shape[-1])
            dense_out = self._dense(whole, flat.index_select(0, split.dense))
            sparse_out = whole(flat.index_select(0, split.sparse))
            return split.join(dense_out, sparse_out).view(*x.shape[:-1], -1)

        return forward

    def _first_token_forward_for(self, block: nn.Module):
        """Encoder FFN: the first token ([CLS], the one the classification head reads) dense, the rest sparse.

        The up projection's block returns the sparse activations of every token and sets the first
        token's dense activation aside; the down projection swaps it in. Computing the first token
        sparse as well wastes one token but spares copying the input and its gradient.
        """
        whole = type(block).forward.__get__(block)
        down_inside = any(module is self.down for module in block.modules())  # DistilBERT's FFN: up and down

        def forward(x: torch.Tensor) -> torch.Tensor:
            if self.keep is None:
                return whole(x)
            if down_inside:
                first = self._dense(whole, x[:, :1])
                return torch.cat([first, whole(x)[:, 1:]], dim=1)
            self._first_token_h = self._dense(whole, x[:, :1])
            return whole(x)

        return forward

    def _columns_forward_for(self, module: nn.Module):
        dense = type(module).forward.__get__(module)

        def forward(h: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            if self.keep is None:
                return dense(h, *args, **kwargs)
            self._down_weight_t = transposed(linear_parts(module)[0].weight, self._down_weight_t)
            out = columns_forward(module, h, self.keep, self._down_weight_t)
            if self.mean_compensation and self.running_mean is not None:
                out = out + skipped_mean_output(module, self.running_mean, self.keep).to(out.dtype)
            first, self._first_token_h = self._first_token_h, None
            return out if first is None else torch.cat([dense(first), out[:, 1:]], dim=1)

        return forward


def activation_of(config, attr: str) -> nn.Module:
    return ACT2FN[getattr(config, attr)]
