"""Fine-tuning methods. Each module registers itself; import order is registration order."""

from sparselora.methods import dora, full, lora, lora_l1, lora_prune, sparselora  # noqa: F401
from sparselora.methods.registry import (
    BuildContext,
    MethodOptions,
    MethodSetup,
    MethodSpec,
    get_method,
    method_names,
    register,
)

__all__ = ["BuildContext", "MethodOptions", "MethodSetup", "MethodSpec", "get_method", "method_names", "register"]
