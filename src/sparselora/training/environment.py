"""Where a run ran: device, threads, library versions (recorded in every metrics.json)."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

import torch

_PACKAGES = ("sparselora", "torch", "transformers", "peft", "accelerate", "datasets", "safetensors")


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def describe_environment() -> dict:
    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "device_type": "cuda" if cuda else "cpu",
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in _PACKAGES},
    }
