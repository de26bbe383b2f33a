"""The method registry: every fine-tuning method is one record, like PEFT's registration of a tuner.

``build`` receives the loaded base model and returns a :class:`MethodSetup`: the model to
train plus any ``TrainerCallback`` the method needs (schedules, proximal steps, rank
reallocation). Everything else a method changes — how the base loads, its FLOPs, its model-card
citation and notes — is a field of its :class:`MethodSpec`, so training, evaluation, ``flops``,
``compare`` and the model card know nothing method-specific, and a method is one file and one
``register`` call. Methods outside this package register the same way: list their modules in
``SPARSELORA_METHODS`` (comma-separated) or under the ``sparselora.methods`` entry-point group.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from transformers import PreTrainedModel, TrainerCallback

if TYPE_CHECKING:
    from sparselora.config import RunConfig
    from sparselora.models import ArchSpec


class MethodOptions(BaseModel):
    """Base of every method's options: strict, so a typo is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


@dataclass(frozen=True)
class BuildContext:
    """What a method may need to know about the run besides the model."""

    config: RunConfig
    arch: ArchSpec | None
    head: str  # "sequence_classification", "causal_lm" or "masked_lm"
    new_modules: tuple[str, ...] = ()  # freshly initialised head modules: must train and be saved
    # the first n training batches, for methods that measure the model before training (LayerLens)
    calibration_batches: Callable[[int], list[dict[str, Any]]] | None = None


@dataclass
class MethodSetup:
    """The model to train and the callbacks that implement the method's schedule."""

    model: nn.Module
    callbacks: list[TrainerCallback] = field(default_factory=list)
    # method-specific measurements for metrics.json (e.g. SparseLoRA's kept FFN fraction)
    measurements: Callable[[], dict[str, Any]] | None = None
    # extra files for the run folder (e.g. LayerLens' layer scores and plot), given the folder
    write_artifacts: Callable[[Path], None] | None = None


@dataclass(frozen=True)
class MethodSpec:
    name: str
    summary: str
    options: type[MethodOptions]
    build: Callable[[PreTrainedModel, BuildContext], MethodSetup]
    # extra ``from_pretrained`` arguments for the base model given the method's options and the run's compute
    # dtype (QLoRA's quantization_config; full fine-tuning's fp32 weights), on training and on reload
    load_kwargs: Callable[[Any, torch.dtype], dict[str, Any]] | None = None
    # adjusts the loaded base model before anything runs on it (QLoRA: keep one 4-bit kernel), also on reload
    prepare_base: Callable[[PreTrainedModel], None] | None = None
    # the FLOPs calculator's view of a run: FlopsSetup fields (lora_ranks, full_finetune, sparsity), given
    # the flat run config, the model's layer count and the run's method report; default: LoRA at `lora_r`
    flops_setup: Callable[[dict[str, Any], int, dict[str, Any]], dict[str, Any]] | None = None
    # why `sparselora export --merge` cannot turn this method's adapter into a plain model (None: it can)
    cannot_merge: str | None = None
    # the model card: papers to cite, extra paragraphs, and rows of its adapter table that differ from LoRA's
    citations: tuple[str, ...] = ()
    card_notes: Callable[[RunConfig], list[str]] | None = None
    card_adapter_rows: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # `sparselora eval --sparse`: make a reloaded model evaluate with the method's training-time sparsity,
    # given the run config and the first n training batches (None: the method has no sparse evaluation)
    sparse_evaluation: Callable[[nn.Module, RunConfig, Callable[[int], list[dict[str, Any]]]], None] | None = None


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"method '{spec.name}' is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


PLUGINS_ENV = "SPARSELORA_METHODS"
ENTRY_POINT_GROUP = "sparselora.methods"
_plugins_loaded = False


def _ensure_builtin_methods() -> None:
    """Importing the package registers the built-in methods (each module calls `register`); then plugins."""
    global _plugins_loaded
    import sparselora.methods  # noqa: F401

    if _plugins_loaded:
        return
    _plugins_loaded = True
    modules = [name.strip() for name in os.environ.get(PLUGINS_ENV, "").split(",") if name.strip()]
    modules += [entry.value for entry in entry_points(group=ENTRY_POINT_GROUP)]
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ImportError(f"method module '{module}' (from ${PLUGINS_ENV} or entry points) failed: {err}") from err


def get_method(name: str) -> MethodSpec:
    _ensure_builtin_methods()
    if name not in _REGISTRY:
        raise KeyError(f"unknown method '{name}'; registered methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def method_names() -> list[str]:
    _ensure_builtin_methods()
    return sorted(_REGISTRY)
