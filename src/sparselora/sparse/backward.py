"""Exact-forward SparseLoRA (``sparse_pass: backward``): the forward is dense LoRA's, bit for bit; only the
backward through the frozen weights is sparse.

In a LoRA step every frozen projection costs twice: the forward ``y = x·Wᵀ`` and the input gradient
``dx = dy·W`` that the layers below need. The second need not be exact to train well (the residual stream
carries the gradient past every block exactly), so here it is computed for a subset of channels only:

- FFN: the down projection's input gradient is computed for the kept intermediate channels only (zeros
  elsewhere), ranked per batch by their forward contribution ``‖h_c‖·‖W_down[:, c]‖`` — a score the forward
  already has, no estimator. The activation's backward keeps those zeros, so the up (and gate) projection's
  input gradient needs only the kept rows: both backward matmuls shrink by the kept fraction. ``random``
  keeps a uniform sample instead, scaled by width / kept so the gradient stays unbiased.
- ``gradient``: the channels are chosen in the backward, from the gradient itself: on at most
  ``estimator_tokens`` sampled tokens the exact input gradient of the activation (``dy·W_down`` through
  the activation's derivative at the saved pre-activations) times each channel's up (and gate) row norm,
  i.e. each channel's share of the input gradient the layers below receive. The sample's matmul costs
  ``estimator_tokens / tokens`` of the down projection's dense backward.
- Attention (``attn_sparsity`` > 0 in a layer): the frozen q/k/v projections get no input gradient; their
  LoRA branches and the output projection keep theirs.

When no adapter sits on the FFN's projections (LoRA on attention only, the usual decoder setting), the
whole up → activation → down block has one backward (:class:`KeptChannelsFFNBackward`) that touches
the kept channels only: ``dh_k = dy·W_down[:, k]``, ``dz_k = dh_k ⊙ act'(z_k)`` (gated: both branches),
``dx = dz_k·W_up[k]`` (+ ``dg_k·W_gate[k]``). The projections' outputs are then computed without a graph,
so the activation's backward never runs over the full width and no full-width gradient is allocated; it
saves the kept pre-activations only (the gradient rule, which chooses in the backward: all of them), no
more than the activation's own backward would. ``W_down`` is kept transposed once per layer, so that
every weight slice is a contiguous row gather. Elsewhere each projection has its own autograd function.

``backward_residual_rank`` r > 0 (in the block backward) gives the skipped channels an approximate input
gradient instead of zero, as CE-LoRA does (Chen et al., 2025): ``dh`` through rank-r factors of ``W_down``
(exact on the kept channels), the activation's backward over the full width, and ``dz_s·W_up[s]`` through
rank-r factors of ``W_up`` (and ``W_gate``): 2r·(hidden + width) extra multiply-adds per token and projection.

The kept channels of one forward travel with its graph, so several forwards before one backward
(gradient accumulation) stay correct.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from sparselora.sparse.backward_kernels import (
    ColumnsInputGrad,
    Kept,
    KeptChannelsFFNBackward,
    KeptPlan,
    RowsInputGrad,
    activation_backward,
    derivative,
)
from sparselora.sparse.ffn import linear_parts, transposed
from sparselora.sparse.settings import BackwardRule, kept_channels
from sparselora.sparse.svd import LowRank, low_rank


@dataclass
class _BlockInputs:
    """One forward through a fused block: its input (which the gradient flows to) and pre-activations."""

    x: torch.Tensor
    pre: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class BackwardSparseFFN:
    """One layer's FFN in backward mode: which channels carry the input gradient of this batch."""

    layer: int
    up: nn.Module
    down: nn.Module
    gate: nn.Module | None
    sparsity: float
    rule: BackwardRule = "contribution"
    estimator_tokens: int = 256  # the scores read at most this many evenly spaced tokens
    activation: Callable[[torch.Tensor], torch.Tensor] | None = None  # the gradient rule differentiates it
    outliers: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))  # none needed here
    keep: torch.Tensor | None = None  # the last batch's kept channels (gradient rule: once its backward ran)
    fuse: bool = True  # use the block's kept-channels-only backward where the block allows it
    fused: bool = False  # whether attach installed it
    residual_rank: int = 0  # > 0: the skipped channels' input gradient through rank-r factors (block backward)
    _pending: Kept | _BlockInputs | None = None
    _down_weight_t: torch.Tensor | None = None
    _activation_grad: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    _column_norms: torch.Tensor | None = None
    _row_norms: dict[str, torch.Tensor] = field(default_factory=dict)
    _generator: torch.Generator | None = None
    _hooks: list = field(default_factory=list)
    _residual: dict[str, LowRank] | None = None

    @property
    def width(self) -> int:
        return linear_parts(self.up)[0].weight.shape[0]

    @property
    def num_kept(self) -> int:
        return kept_channels(self.width, self.sparsity)

    @torch.no_grad()
    def select(self, h: torch.Tensor, step: int) -> torch.Tensor:
        """The channels whose input gradient is computed, from the down projection's input ``h``."""
        if self.rule == "random":
            # its own generator (the global one draws the forward's dropout masks), seeded by layer and step
            # so that a resumed run draws what the uninterrupted one did
            if self._generator is None or self._generator.device != h.device:
                self._generator = torch.Generator(h.device)
            self._generator.manual_seed(1_000_003 * step + self.layer)
            order = torch.randperm(self.width, device=h.device, generator=self._generator)
            return order[: self.num_kept].sort().values
        weight = linear_parts(self.down)[0].weight
        if self._column_norms is None or self._column_norms.device != weight.device:
            self._column_norms = weight.float().norm(dim=0)
        flat = h.detach().reshape(-1, h.shape[-1])
        flat = flat[:: max(1, flat.shape[0] // self.estimator_tokens)]
        scores = flat.float().norm(dim=0) * self._column_norms
        return torch.topk(scores, self.num_kept, sorted=False).indices.sort().values

    def _sample(self, tokens: int, device: torch.device) -> torch.Tensor:
        """The evenly spaced token positions the scores read (the same in forward and backward)."""
        return torch.arange(0, tokens, max(1, tokens // self.estimator_tokens), device=device)[: self.estimator_tokens]

    @torch.no_grad()
    def _gradient_choice(self, pending: Kept) -> Callable[[torch.Tensor], torch.Tensor]:
        """Chooses, from the down projection's output gradient, the channels carrying most input gradient."""

        def choose(grad_out: torch.Tensor) -> torch.Tensor:
            channels = self._gradient_channels(grad_out.reshape(-1, grad_out.shape[-1]), pending.samples)
            pending.samples.clear()
            return channels

        return choose

    @torch.no_grad()
    def _gradient_channels(self, grad: torch.Tensor, samples: dict[str, torch.Tensor]) -> torch.Tensor:
        """The channels carrying most input gradient, from the exact gradient on the sampled tokens.

        ``grad``: the down projection's output gradient (tokens × hidden); ``samples``: the up (and gate)
        pre-activations at the sampled tokens, or at every token (then sampled here)."""
        sample = self._sample(grad.shape[0], grad.device)
        weight = linear_parts(self.down)[0].weight
        grad_h = grad[sample].float() @ weight.float()  # exact dL/dh on the sampled tokens
        samples = {role: (z if z.shape[0] == len(sample) else z[sample]).float() for role, z in samples.items()}
        if self.gate is None:  # h = act(z)
            grads = {"up": grad_h * derivative(self.activation, samples["up"])}
        else:  # h = act(g) ⊙ u
            gate = samples["gate"]
            grads = {
                "up": grad_h * self.activation(gate),
                "gate": grad_h * samples["up"] * derivative(self.activation, gate),
            }
        scores = sum(grad.norm(dim=0) * self._row_norm(role) for role, grad in grads.items())
        self.keep = torch.topk(scores, self.num_kept, sorted=False).indices.sort().values
        return self.keep

    def _row_norm(self, role: str) -> torch.Tensor:
        weight = linear_parts(getattr(self, role))[0].weight
        if role not in self._row_norms or self._row_norms[role].device != weight.device:
            self._row_norms[role] = weight.float().norm(dim=1)
        return self._row_norms[role]

    def _keep_sample_of(self, role: str):
        """Forward hook of up/gate (the adapted module: its output is the real pre-activation)."""

        def hook(_module, _args, output: torch.Tensor) -> None:
            pending = self._pending
            if pending is not None and pending.channels is None and output.requires_grad:
                flat = output.detach().reshape(-1, output.shape[-1])
                pending.samples[role] = flat[self._sample(flat.shape[0], flat.device)]

        return hook

    def fix_outliers(self, factor: float, max_fraction: float) -> None:
        """Nothing to calibrate: the forward is exact and the score is exact."""

    def record(self, h: torch.Tensor) -> None:
        """No calibration statistics in backward mode."""

    def attach(self, engine) -> None:
        projections = [p for p in (self.up, self.gate, self.down) if p is not None]
        self._activation_grad = activation_backward(self.activation)
        self.fused = (
            self.fuse and self._activation_grad is not None and not any(linear_parts(p)[1] for p in projections)
        )
        if self.residual_rank and not self.fused:
            raise ValueError(
                f"backward_residual_rank={self.residual_rank} needs the FFN's block backward, which layer "
                f"{self.layer} cannot use: remove the FFN projections from target_modules, or set "
                "backward_residual_rank: 0"
            )
        if self.residual_rank:
            self._residual = {
                role: low_rank(linear_parts(getattr(self, role))[0].weight, self.residual_rank)
                for role in ("up", "gate", "down")
                if getattr(self, role) is not None
            }
        if self.fused:
            for role in ("up", "gate"):
                if getattr(self, role) is not None:
                    base = linear_parts(getattr(self, role))[0]
                    base.forward = self._pre_activation_forward_for(base, role, engine)
            base_down = linear_parts(self.down)[0]
            base_down.forward = self._fused_down_forward_for(base_down, engine)
            return
        for projection in (self.up, self.gate):
            if projection is not None:
                base = linear_parts(projection)[0]
                base.forward = self._rows_forward_for(base, engine)
        base_down = linear_parts(self.down)[0]
        base_down.forward = self._columns_forward_for(base_down, engine)
        if self.rule == "gradient":
            for role in ("up", "gate"):
                if getattr(self, role) is not None:
                    self._hooks.append(getattr(self, role).register_forward_hook(self._keep_sample_of(role)))

    def _active(self, engine, x: torch.Tensor) -> bool:
        return x.requires_grad and torch.is_grad_enabled() and engine.sparse_now(self.sparsity, self.up.training)

    def _rows_forward_for(self, base: nn.Linear, engine):
        dense = type(base).forward.__get__(base)

        def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            if args or kwargs or not self._active(engine, x):
                return dense(x, *args, **kwargs)
            if self._pending is None or self._pending.channels is not None:
                self._pending = Kept()  # a new forward: up (and gate) run before down fills it
            return RowsInputGrad.apply(x, base.weight, base.bias, self._pending)

        return forward

    def _columns_forward_for(self, base: nn.Linear, engine):
        dense = type(base).forward.__get__(base)

        def forward(h: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            pending, self._pending = self._pending, None
            if args or kwargs or pending is None or not self._active(engine, h):
                return dense(h, *args, **kwargs)
            if self.rule == "gradient":
                pending.choose = self._gradient_choice(pending)
            else:
                pending.channels = self.keep = self.select(h, engine.step)
                pending.scale = self.width / self.num_kept if self.rule == "random" else 1.0
            return ColumnsInputGrad.apply(h, base.weight, base.bias, pending)

        return forward

    def _pre_activation_forward_for(self, base: nn.Linear, role: str, engine):
        """Fused block: up/gate computed exactly but without a graph; the down projection's function
        carries the gradient from the block's output to its input ``x``."""
        dense = type(base).forward.__get__(base)

        def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            if args or kwargs or not self._active(engine, x):
                return dense(x, *args, **kwargs)
            pending = self._pending
            if not isinstance(pending, _BlockInputs) or pending.x is not x:
                pending = self._pending = _BlockInputs(x)  # a new forward through the block
            pending.pre[role] = out = dense(x.detach())
            return out

        return forward

    def _residual_like(self, h: torch.Tensor) -> dict[str, LowRank] | None:
        """The residual's factors on ``h``'s device and dtype, converted once (not in every backward)."""
        if self._residual is not None:
            self._residual = {role: factors.to(h) for role, factors in self._residual.items()}
        return self._residual

    def _fused_down_forward_for(self, base: nn.Linear, engine):
        dense = type(base).forward.__get__(base)
        roles = ["up"] + (["gate"] if self.gate is not None else [])

        def forward(h: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            pending, self._pending = self._pending, None
            if not isinstance(pending, _BlockInputs):
                return dense(h, *args, **kwargs)
            if args or kwargs or sorted(pending.pre) != sorted(roles):
                raise RuntimeError(  # the up/gate outputs carry no graph: the block must end here
                    f"SparseLoRA backward mode, layer {self.layer}: the FFN's down projection got an unexpected call"
                )
            self._down_weight_t = transposed(base.weight, self._down_weight_t)
            plan = KeptPlan(
                up_weight=linear_parts(self.up)[0].weight,
                gate_weight=linear_parts(self.gate)[0].weight if self.gate is not None else None,
                down_weight=base.weight,
                down_bias=base.bias,
                down_weight_t=self._down_weight_t,
                activation=self.activation,
                activation_grad=self._activation_grad,
                channels=None if self.rule == "gradient" else self.select(h, engine.step),
                residual=self._residual_like(h),
            )
            if self.rule == "gradient":
                plan.choose = self._gradient_channels
            else:
                self.keep = plan.channels
                plan.scale = self.width / self.num_kept if self.rule == "random" else 1.0
            return KeptChannelsFFNBackward.apply(h, pending.x, pending.pre["up"], pending.pre.get("gate"), plan)

        return forward

    def detach(self) -> None:
        for projection in (self.up, self.gate, self.down):
            if projection is not None:
                base = linear_parts(projection)[0]
                if "forward" in base.__dict__:
                    del base.forward
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self.keep, self._pending, self._down_weight_t, self._residual = None, None, None, None


@dataclass
class BackwardSparseAttention:
    """One layer's attention in backward mode: the frozen q/k/v projections pass no input gradient."""

    layer: int
    q: nn.Module
    k: nn.Module
    v: nn.Module
    sparsity: float
    selection: bool | None = None  # True once a forward ran without the frozen input gradient

    def attach(self, engine) -> None:
        for projection in (self.q, self.k, self.v):
            base = linear_parts(projection)[0]
            dense = type(base).forward.__get__(base)

            def forward(x: torch.Tensor, *args, _dense=dense, **kwargs) -> torch.Tensor:
                if x.requires_grad and engine.sparse_now(self.sparsity, self.q.training):
                    self.selection = True
                    # the same values; the frozen weight's input gradient is dropped
                    return _dense(x.detach(), *args, **kwargs)
                return _dense(x, *args, **kwargs)

            base.forward = forward

    def detach(self) -> None:
        for projection in (self.q, self.k, self.v):
            base = linear_parts(projection)[0]
            if "forward" in base.__dict__:
                del base.forward
        self.selection = None
