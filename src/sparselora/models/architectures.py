"""The architecture map: where attention and FFN projections live in each model family.

Later parts (SparseLoRA, LayerLens, FLOPs) need to know, for any supported model, which
``nn.Linear`` is the query projection of layer 3 or the FFN down projection of layer 5.
Rather than string-matching in each of them, every family is described once here.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

Role = Literal["q", "k", "v", "o", "qkv", "up", "gate", "down"]
ATTENTION_ROLES: tuple[Role, ...] = ("q", "k", "v", "o", "qkv")
FFN_ROLES: tuple[Role, ...] = ("up", "gate", "down")


class UnknownArchitectureError(ValueError):
    """Raised when a model family has no entry in the architecture map."""


@dataclass(frozen=True)
class ArchSpec:
    """How one model family names its transformer blocks and projections.

    ``block_pattern`` matches the prefix of one transformer block (group 1 = layer index);
    ``projections`` maps each role to the module path *relative to that block*. ``ffn``: ``mlp`` (up →
    activation → down), ``swiglu`` (gate and up projections), ``fused_swiglu`` (gate and up in one
    projection, Phi-3) or ``experts`` (a mixture of experts whose weights are not ``nn.Linear``, Mixtral).
    ``attention``: whose attention forward the family's follows (``bert``, ``llama``: SparseLoRA's reduced
    heads can run it), ``None`` where that is not known to hold.
    """

    family: str
    model_types: tuple[str, ...]
    kind: Literal["encoder", "decoder"]
    block_pattern: str
    projections: dict[Role, str]
    ffn: Literal["mlp", "swiglu", "fused_swiglu", "experts"]
    attention: Literal["bert", "llama"] | None = None
    activation_attr: str = "hidden_act"
    # GPT-2 stores projections as Conv1D (weight transposed): LoRA needs fan_in_fan_out.
    conv1d: bool = False
    default_lora_roles: tuple[Role, ...] = ("q", "v")
    head_modules: tuple[str, ...] = field(default=())

    def block_regex(self) -> re.Pattern[str]:
        return re.compile(rf"(?:^|\.)(?:{self.block_pattern})\.(\d+)\.(.+)$")


_BERT_LIKE = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "o": "attention.output.dense",
    "up": "intermediate.dense",
    "down": "output.dense",
}
_LLAMA_ATTENTION = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
}
_LLAMA_LIKE = {**_LLAMA_ATTENTION, "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}

ARCHITECTURES: list[ArchSpec] = [
    ArchSpec(
        family="bert",
        model_types=("bert",),
        kind="encoder",
        block_pattern=r"encoder\.layer",
        projections=_BERT_LIKE,
        ffn="mlp",
        attention="bert",
    ),
    ArchSpec(
        family="roberta",
        model_types=("roberta", "xlm-roberta"),
        kind="encoder",
        block_pattern=r"encoder\.layer",
        projections=_BERT_LIKE,
        ffn="mlp",
        attention="bert",
    ),
    ArchSpec(
        family="distilbert",
        model_types=("distilbert",),
        kind="encoder",
        block_pattern=r"transformer\.layer",
        projections={
            "q": "attention.q_lin",
            "k": "attention.k_lin",
            "v": "attention.v_lin",
            "o": "attention.out_lin",
            "up": "ffn.lin1",
            "down": "ffn.lin2",
        },
        ffn="mlp",
        activation_attr="activation",
    ),
    ArchSpec(
        family="llama",
        model_types=("llama", "qwen2", "qwen3", "mistral"),
        kind="decoder",
        block_pattern=r"layers",
        projections=_LLAMA_LIKE,
        ffn="swiglu",
        attention="llama",
    ),
    ArchSpec(  # GeGLU FFN
        family="gemma",
        model_types=("gemma",),
        kind="decoder",
        block_pattern=r"layers",
        projections=_LLAMA_LIKE,
        ffn="swiglu",
        attention="llama",
    ),
    ArchSpec(  # and logit soft-capping and sliding windows, passed to the attention kernel
        family="gemma2",
        model_types=("gemma2",),
        kind="decoder",
        block_pattern=r"layers",
        projections=_LLAMA_LIKE,
        ffn="swiglu",
        attention="llama",
        activation_attr="hidden_activation",
    ),
    ArchSpec(  # q_norm/k_norm normalise the whole projection (all heads at once): no reduced heads
        family="olmo2",
        model_types=("olmo2",),
        kind="decoder",
        block_pattern=r"layers",
        projections=_LLAMA_LIKE,
        ffn="swiglu",
    ),
    ArchSpec(
        family="phi3",
        model_types=("phi3",),
        kind="decoder",
        block_pattern=r"layers",
        projections={"qkv": "self_attn.qkv_proj", "o": "self_attn.o_proj", "down": "mlp.down_proj"},
        ffn="fused_swiglu",
        default_lora_roles=("qkv",),
    ),
    ArchSpec(
        family="mixtral",
        model_types=("mixtral",),
        kind="decoder",
        block_pattern=r"layers",
        projections=dict(_LLAMA_ATTENTION),
        ffn="experts",
        attention="llama",
    ),
    ArchSpec(
        family="gpt2",
        model_types=("gpt2",),
        kind="decoder",
        block_pattern=r"h",
        projections={"qkv": "attn.c_attn", "o": "attn.c_proj", "up": "mlp.c_fc", "down": "mlp.c_proj"},
        ffn="mlp",
        activation_attr="activation_function",
        conv1d=True,
        default_lora_roles=("qkv",),
    ),
]


def register_architecture(spec: ArchSpec, replace: bool = False) -> ArchSpec:
    """Add a model family to the map, so LoRA targets, FLOPs, LayerLens and SparseLoRA find its projections.

    A model type already mapped is refused unless ``replace`` (then the new spec wins for it).
    """
    taken = [t for t in spec.model_types if find_arch(t) is not None]
    if taken and not replace:
        raise ValueError(f"model type(s) {taken} are already in the architecture map; pass replace=True to override")
    if replace:
        ARCHITECTURES[:] = [
            dataclasses.replace(old, model_types=rest)
            for old in ARCHITECTURES
            if (rest := tuple(t for t in old.model_types if t not in spec.model_types))
        ]
    ARCHITECTURES.insert(0, spec)
    return spec


def supported_model_types() -> list[str]:
    return sorted(t for spec in ARCHITECTURES for t in spec.model_types)


def find_arch(model_type: str) -> ArchSpec | None:
    return next((spec for spec in ARCHITECTURES if model_type in spec.model_types), None)


def get_arch(model_type: str) -> ArchSpec:
    spec = find_arch(model_type)
    if spec is None:
        raise UnknownArchitectureError(
            f"model_type '{model_type}' has no entry in the architecture map "
            f"(supported: {', '.join(supported_model_types())}). Set `target_modules` in the "
            "config to name the LoRA target modules yourself, or describe the family with "
            "sparselora.register_architecture(ArchSpec(...)) (docs/sparselora.md, 'A new architecture')."
        )
    return spec


@dataclass(frozen=True)
class Projection:
    """One projection module found in a model: its full name, layer index and role."""

    name: str
    layer: int
    role: Role
    module: nn.Module


def iter_projections(model: nn.Module, spec: ArchSpec) -> Iterator[Projection]:
    """All mapped projections in ``model`` in module order, whatever wrapper surrounds it."""
    regex = spec.block_regex()
    by_path = {path: role for role, path in spec.projections.items()}
    for name, module in model.named_modules():
        match = regex.search(name)
        if match is None:
            continue
        role = by_path.get(match.group(2))
        if role is not None:
            yield Projection(name=name, layer=int(match.group(1)), role=role, module=module)


def num_layers(model: nn.Module, spec: ArchSpec) -> int:
    return 1 + max((p.layer for p in iter_projections(model, spec)), default=-1)


def target_module_names(model: nn.Module, spec: ArchSpec, roles: tuple[Role, ...]) -> list[str]:
    """PEFT ``target_modules`` for the given roles, as short as stays unambiguous.

    PEFT matches a list entry against the *end* of each module name, so ``"dense"`` would
    hit every dense layer of BERT. Use the last path component (``query``, ``q_proj``) when it
    selects exactly the wanted modules, else the block-relative path (``intermediate.dense``),
    else the full names.
    """
    wanted = {p.name for p in iter_projections(model, spec) if p.role in roles}
    if not wanted:
        raise UnknownArchitectureError(f"no modules with roles {roles} found in this {spec.family} model")
    all_names = [name for name, _ in model.named_modules()]
    for shorten in (lambda path: path.rsplit(".", 1)[-1], lambda path: path):
        candidates = sorted({shorten(spec.projections[r]) for r in roles if r in spec.projections})
        matched = {n for n in all_names if any(n == c or n.endswith("." + c) for c in candidates)}
        if matched == wanted:
            return candidates
    return sorted(wanted)
