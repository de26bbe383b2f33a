"""The keys adapter methods share: where the adapters go, and LoRA's scaling and dropout.

Declared once, so every method that takes ``target_modules`` reads it the same way (a single name is a
one-item list, ``all-linear`` as in PEFT, an empty list refused).
"""

from __future__ import annotations

from pydantic import Field, field_validator

from sparselora.methods.registry import MethodOptions


class TargetedOptions(MethodOptions):
    target_modules: list[str] | str | None = Field(
        None,
        description="Modules that get adapters; default: attention query and value from the architecture map. "
        "'all-linear' is accepted as in PEFT; a single name is a one-item list.",
    )

    @field_validator("target_modules")
    @classmethod
    def _names(cls, value: list[str] | str | None) -> list[str] | str | None:
        if isinstance(value, str) and value != "all-linear":
            return [value]  # `target_modules: query` means the module `query`, as a user reads it
        if isinstance(value, list) and not value:
            raise ValueError("an empty list targets nothing: name at least one module, or omit the key")
        return value


class ScaledAdapterOptions(TargetedOptions):
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA branch input.")
