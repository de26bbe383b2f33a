"""Parameter counts: total, trainable, and nonzero trainable (sparse methods make exact zeros)."""

from __future__ import annotations

from torch import nn


def _numel(param: nn.Parameter) -> int:
    """Logical element count: a 4-bit bitsandbytes weight packs two values per stored byte."""
    quant_state = getattr(param, "quant_state", None)
    return quant_state.shape.numel() if quant_state is not None else param.numel()


def count_parameters(model: nn.Module) -> dict[str, float]:
    total = trainable = nonzero = 0
    for param in model.parameters():
        total += _numel(param)
        if param.requires_grad:
            trainable += param.numel()
            nonzero += int(param.count_nonzero())
    return {
        "total": total,
        "trainable": trainable,
        "trainable_pct": 100.0 * trainable / total if total else 0.0,
        "nonzero_trainable": nonzero,
        "trainable_sparsity": 1.0 - nonzero / trainable if trainable else 0.0,
    }
