"""Fine-tuning methods. Each module registers itself; import order is registration order."""

from sparselora.methods import (  # noqa: F401
    adalora,
    dora,
    full,
    hira,
    layerlens,
    lora,
    lora_l1,
    lora_prune,
    qlora,
    sparselora,
)
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
