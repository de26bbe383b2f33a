"""Model aliases, loading, and the architecture map."""

from sparselora.models.architectures import (
    ARCHITECTURES,
    ArchSpec,
    Projection,
    UnknownArchitectureError,
    find_arch,
    get_arch,
    iter_projections,
    num_layers,
    register_architecture,
    target_module_names,
)
from sparselora.models.loading import (
    ALIASES,
    ModelNotFoundError,
    ModelSource,
    hub_id,
    is_decoder,
    load_model,
    load_model_config,
    load_tokenizer,
    resolve_model,
)

__all__ = [
    "ALIASES",
    "ARCHITECTURES",
    "ArchSpec",
    "ModelNotFoundError",
    "ModelSource",
    "Projection",
    "UnknownArchitectureError",
    "find_arch",
    "get_arch",
    "hub_id",
    "is_decoder",
    "iter_projections",
    "load_model",
    "load_model_config",
    "load_tokenizer",
    "num_layers",
    "register_architecture",
    "resolve_model",
    "target_module_names",
]
