"""The run's numeric precision: how the base model is stored and what autocast computes in.

The recipe GPU users run with the Trainer and PEFT: the frozen base is loaded in bf16 (or fp16), every
trainable weight (adapters, heads, everything under full fine-tuning) is kept in fp32, and matrix products
run under autocast in the low precision. ``auto`` means bf16 on a CUDA device that supports it and fp32
elsewhere: CPU autocast in bf16 works (the tests use it) but is slower than fp32 on most CPUs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

from sparselora.config import Precision

Resolved = Literal["fp32", "bf16", "fp16"]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def training_device() -> torch.device:
    """The device the Trainer picks: the first CUDA device when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def parse_device(name: str | None) -> torch.device:
    """``--device``: a torch device that exists here (None: the training device)."""
    if name is None:
        return training_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device '{name}' is not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"--device '{name}': no such CUDA device here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device '{name}': sparselora evaluates on cpu or cuda")
    return device


def resolve_precision(precision: Precision, device: torch.device) -> Resolved:
    """``auto`` → bf16 where the device computes it natively (CUDA with bf16 support), else fp32."""
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise ValueError(
                "config key 'precision': fp16 needs a CUDA device (its loss scaler does not run on the CPU); "
                "use precision: bf16 or fp32 on the CPU"
            )
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def trainable_in_fp32(model: nn.Module) -> int:
    """Cast every trainable parameter to fp32 (the optimiser's master weights); returns how many were cast.

    PEFT already keeps LoRA adapters in fp32 on a half-precision base; heads (``modules_to_save``), DoRA
    magnitudes and fully trained weights are cast here, so the optimiser never steps in bf16/fp16.
    """
    cast = 0
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
            cast += 1
    return cast


@contextlib.contextmanager
def autocast(device: torch.device, precision: Resolved) -> Iterator[None]:
    """Autocast in the run's precision (nothing in fp32), as the Trainer's bf16/fp16 flags do in training."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=DTYPES[precision]):
        yield
