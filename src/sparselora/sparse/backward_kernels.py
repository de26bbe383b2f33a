"""The exact-forward mode's autograd functions: an exact forward, an input gradient over kept channels only.

What each computes, and why, is in ``sparse/backward.py``; this module holds the arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sparselora.sparse.svd import LowRank


@dataclass
class Kept:
    """The kept channels of one forward, filled by the down projection, read by the backward of all three.

    The ``gradient`` rule leaves ``channels`` empty in the forward and ``choose`` fills them from the down
    projection's output gradient, before the up (and gate) backward runs.
    """

    channels: torch.Tensor | None = None
    scale: float = 1.0
    choose: Callable[[torch.Tensor], torch.Tensor] | None = None
    samples: dict[str, torch.Tensor] = field(default_factory=dict)  # gradient rule: pre-activations, sampled tokens


class ColumnsInputGrad(torch.autograd.Function):
    """``h·Wᵀ + b`` exactly; backward ``dh[..., kept] = scale · dy·W[:, kept]``, zero elsewhere."""

    @staticmethod
    def forward(ctx, h, weight, bias, kept: Kept):
        ctx.save_for_backward(weight)
        ctx.kept, ctx.shape = kept, h.shape
        return F.linear(h, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        (weight,) = ctx.saved_tensors
        kept = ctx.kept
        if kept.channels is None:  # the gradient rule chooses now, from the gradient
            kept.channels = kept.choose(grad_out)
        grad_h = grad_out.new_zeros(ctx.shape)
        part = grad_out @ weight.index_select(1, kept.channels).to(grad_out.dtype)
        grad_h.index_copy_(grad_h.dim() - 1, kept.channels, part * kept.scale if kept.scale != 1.0 else part)
        return grad_h, None, None, None


class RowsInputGrad(torch.autograd.Function):
    """``x·Wᵀ + b`` exactly; backward ``dx = dy[..., kept]·W[kept]`` (dy is zero outside the kept channels)."""

    @staticmethod
    def forward(ctx, x, weight, bias, kept: Kept):
        ctx.save_for_backward(weight)
        ctx.kept = kept
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        (weight,) = ctx.saved_tensors
        channels = ctx.kept.channels
        grad_x = grad_out.index_select(-1, channels) @ weight.index_select(0, channels).to(grad_out.dtype)
        return grad_x, None, None, None


def derivative(activation: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, step: float = 1e-3) -> torch.Tensor:
    """An elementwise activation's derivative by central differences: any activation, and no autograd call
    inside the backward (nested autograd breaks under FlopCounterMode and other autograd hooks)."""
    return (activation(z + step) - activation(z - step)) / (2 * step)


def activation_backward(activation: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """``(grad, z) ↦ grad ⊙ act'(z)`` with the kernel autograd itself uses, in the inputs' dtype; None for an
    activation without one (the block then keeps the per-projection backward)."""
    name = type(activation).__name__
    if name in ("SiLUActivation", "SiLU"):
        return torch.ops.aten.silu_backward
    if name == "GELUActivation" and getattr(activation, "act", None) is F.gelu:
        return lambda grad, z: torch.ops.aten.gelu_backward(grad, z, approximate="none")
    if name in ("GELUTanh", "PytorchGELUTanh", "NewGELUActivation", "FastGELUActivation"):
        return lambda grad, z: torch.ops.aten.gelu_backward(grad, z, approximate="tanh")
    if name == "ReLU":
        return lambda grad, z: grad * (z > 0)
    return None


@dataclass
class KeptPlan:
    """What the block's backward needs besides its saved pre-activations: weights, channels, activation."""

    up_weight: torch.Tensor
    gate_weight: torch.Tensor | None
    down_weight: torch.Tensor
    down_bias: torch.Tensor | None
    down_weight_t: torch.Tensor  # W_downᵀ, contiguous: W_down[:, k] is its row gather
    activation: nn.Module
    activation_grad: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    channels: torch.Tensor | None  # None: chosen in the backward (gradient rule) by ``choose``
    scale: float = 1.0
    choose: Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor] | None = None
    residual: dict[str, LowRank] | None = None  # rank-r factors of up/gate/down: the skipped channels' gradient


class KeptChannelsFFNBackward(torch.autograd.Function):
    """``h·W_downᵀ + b`` exactly, where ``h = act(z_up)`` (or ``act(z_gate) ⊙ z_up``) was computed from ``x``
    without a graph; backward: the FFN's input gradient ``dx`` through the kept channels only."""

    @staticmethod
    def forward(ctx, h, x, up_pre, gate_pre, plan: KeptPlan):
        out = F.linear(h, plan.down_weight, plan.down_bias)
        pre = [up_pre] if gate_pre is None else [up_pre, gate_pre]
        if plan.channels is not None and plan.residual is None:  # known now: save only the kept columns
            pre = [z.index_select(-1, plan.channels) for z in pre]
        ctx.save_for_backward(*pre)
        ctx.plan, ctx.x_shape = plan, x.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):
        plan = ctx.plan
        grad = grad_out.reshape(-1, grad_out.shape[-1])
        pre = [z.reshape(-1, z.shape[-1]) for z in ctx.saved_tensors]
        if plan.channels is None:
            plan.channels = plan.choose(grad, dict(zip(("up", "gate"), pre, strict=False)))
            if plan.residual is None:
                pre = [z.index_select(1, plan.channels) for z in pre]
        kept, dtype = plan.channels, grad.dtype
        grad_h = grad @ plan.down_weight_t.index_select(0, kept).to(dtype).T  # dy·W_down[:, k]
        if plan.scale != 1.0:
            grad_h = grad_h * plan.scale
        if plan.residual is not None:
            return None, with_residual(plan, grad, grad_h, pre).view(ctx.x_shape), None, None, None
        if plan.gate_weight is None:  # h = act(z)
            grad_x = plan.activation_grad(grad_h, pre[0].to(dtype)) @ plan.up_weight.index_select(0, kept).to(dtype)
        else:  # h = act(g) ⊙ u
            up, gate = pre[0].to(dtype), pre[1].to(dtype)
            grad_up = grad_h * plan.activation(gate)
            grad_gate = plan.activation_grad(grad_h * up, gate)
            grad_x = grad_up @ plan.up_weight.index_select(0, kept).to(dtype)
            grad_x = grad_x + grad_gate @ plan.gate_weight.index_select(0, kept).to(dtype)
        return None, grad_x.view(ctx.x_shape), None, None, None


def with_residual(plan: KeptPlan, grad: torch.Tensor, grad_h_kept: torch.Tensor, pre: list[torch.Tensor]):
    """The block's input gradient with the skipped channels through rank-r factors (``W ≈ bᵀ·aᵀ``).

    ``dh = dy·W_down`` comes from the factors and is exact on the kept channels; ``dz = dh ⊙ act'`` over the
    full width; ``dx = dz_k·W[k]`` exactly plus ``dz_s·W[s] ≈ (dz·bᵀ − dz_k·b[:, k]ᵀ)·aᵀ`` for up (and gate).
    """
    kept, dtype = plan.channels, grad.dtype
    factors = {role: f.to(grad) for role, f in plan.residual.items()}  # converted in the forward already
    grad_h = (grad @ factors["down"].b.T) @ factors["down"].a.T
    grad_h.index_copy_(1, kept, grad_h_kept)
    if plan.gate_weight is None:  # h = act(z)
        grad_z = {"up": plan.activation_grad(grad_h, pre[0].to(dtype))}
    else:  # h = act(g) ⊙ u
        up, gate = pre[0].to(dtype), pre[1].to(dtype)
        grad_z = {"up": grad_h * plan.activation(gate), "gate": plan.activation_grad(grad_h * up, gate)}
    weights = {"up": plan.up_weight, "gate": plan.gate_weight}
    grad_x = 0
    for role, dz in grad_z.items():
        dz_kept, b = dz.index_select(1, kept), factors[role].b
        skipped = dz @ b.T - dz_kept @ b.index_select(1, kept).T
        grad_x = grad_x + dz_kept @ weights[role].index_select(0, kept).to(dtype) + skipped @ factors[role].a.T
    return grad_x
