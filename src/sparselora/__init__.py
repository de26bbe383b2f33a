"""sparselora: sparse fine-tuning methods for Hugging Face models, and honest measurements of them.

The front door::

    import sparselora

    config = sparselora.load_config("configs/sst2_lora.yaml", ["lora_r=16"])
    run_dir = sparselora.train(config)
    recorded, measured = sparselora.evaluate_run(run_dir)

    engine = sparselora.apply_sparselora(peft_model, sparselora.SparseLoRAConfig(ffn_sparsity=0.7))

Names resolve on first use, so ``import sparselora`` stays cheap (torch loads with the first of them).
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"


def _drop_optional_kernel_notice(record: logging.LogRecord) -> bool:
    """bitsandbytes (imported by PEFT whenever installed) logs at import that an optional CPU kernel package is
    missing, then falls back by itself: that line says nothing about a run, so it is dropped, nothing else."""
    return "gemm_4bit_forward from kernels-community" not in str(record.msg)


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_drop_optional_kernel_notice)

_EXPORTS = {
    # configs and runs
    "RunConfig": "sparselora.config",
    "load_config": "sparselora.config",
    "build_config": "sparselora.config",
    "train": "sparselora.training.loop",
    "load_inputs": "sparselora.training.inputs",
    "evaluate_run": "sparselora.evaluation.rerun",
    "read_run": "sparselora.run_folder.layout",
    # SparseLoRA in your own Trainer or loop
    "apply_sparselora": "sparselora.sparse.apply",
    "SparseLoRAConfig": "sparselora.sparse.settings",
    "SparseLoRAEngine": "sparselora.sparse.engine",
    # methods: the registry and what a method file declares
    "register": "sparselora.methods.registry",
    "get_method": "sparselora.methods.registry",
    "method_names": "sparselora.methods.registry",
    "MethodSpec": "sparselora.methods.registry",
    "MethodSetup": "sparselora.methods.registry",
    "MethodOptions": "sparselora.methods.registry",
    "BuildContext": "sparselora.methods.registry",
    # models, comparisons, FLOPs
    "resolve_model": "sparselora.models",
    "register_architecture": "sparselora.models",
    "ArchSpec": "sparselora.models",
    "run_comparison": "sparselora.compare",
    "load_compare_config": "sparselora.compare",
    "config_flops": "sparselora.flops",
}
__all__ = [
    "ArchSpec",
    "BuildContext",
    "MethodOptions",
    "MethodSetup",
    "MethodSpec",
    "RunConfig",
    "SparseLoRAConfig",
    "SparseLoRAEngine",
    "__version__",
    "apply_sparselora",
    "build_config",
    "config_flops",
    "evaluate_run",
    "get_method",
    "load_compare_config",
    "load_config",
    "load_inputs",
    "method_names",
    "read_run",
    "register",
    "register_architecture",
    "resolve_model",
    "run_comparison",
    "train",
]

if TYPE_CHECKING:
    from sparselora.compare import load_compare_config, run_comparison
    from sparselora.config import RunConfig, build_config, load_config
    from sparselora.evaluation.rerun import evaluate_run
    from sparselora.flops import config_flops
    from sparselora.methods.registry import (
        BuildContext,
        MethodOptions,
        MethodSetup,
        MethodSpec,
        get_method,
        method_names,
        register,
    )
    from sparselora.models import ArchSpec, register_architecture, resolve_model
    from sparselora.run_folder.layout import read_run
    from sparselora.sparse.apply import apply_sparselora
    from sparselora.sparse.engine import SparseLoRAEngine
    from sparselora.sparse.settings import SparseLoRAConfig
    from sparselora.training.inputs import load_inputs
    from sparselora.training.loop import train


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sparselora' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
