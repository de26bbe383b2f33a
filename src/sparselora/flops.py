"""Per-token FLOPs of a forward pass and a training step, dense or SparseLoRA-sparse.

Convention: one multiply-add = 2 FLOPs, and only matrix products are counted (the same thing
``torch.utils.flop_counter.FlopCounterMode`` counts): projections, attention scores (QKᵀ and
AV), the LoRA branch, the task head and the SVD estimator. Norms, activations, softmax and
embedding lookups are left out; they are a few percent of a transformer layer.

A training step is forward plus backward. Backward of a frozen projection computes only the
gradient of its input (same FLOPs as its forward), and only where a gradient flows: below the
lowest trainable layer nothing runs backward, and the q/k/v projections that read a frozen
layer input need no input gradient. A trainable weight (full fine-tuning, LoRA's A and B) adds
its weight gradient. Attention's backward is twice its forward (gradients of both operands of
both products). The estimator runs without gradients, on at most ``estimator_tokens`` tokens
of each batch, so its per-token cost shrinks with batch size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from transformers import PretrainedConfig

from sparselora.models import ArchSpec
from sparselora.models.loading import Head, head_for
from sparselora.sparse.settings import kept_channels


@dataclass(frozen=True)
class ModelShape:
    """The sizes the calculator needs, read from a transformers config."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    swiglu: bool
    vocab: int
    rotary: bool

    @classmethod
    def from_config(cls, config: PretrainedConfig, arch: ArchSpec) -> ModelShape:
        hidden = getattr(config, "hidden_size", None) or config.n_embd
        heads = getattr(config, "num_attention_heads", None) or config.n_head
        return cls(
            layers=getattr(config, "num_hidden_layers", None) or config.n_layer,
            hidden=hidden,
            intermediate=getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or hidden // heads,
            swiglu=arch.ffn == "swiglu",
            vocab=config.vocab_size,
            rotary=arch.kind == "decoder" and arch.family != "gpt2",
        )

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection role of one layer."""
        q_out, kv_out = self.heads * self.head_dim, self.kv_heads * self.head_dim
        shapes = {
            "q": (self.hidden, q_out),
            "k": (self.hidden, kv_out),
            "v": (self.hidden, kv_out),
            "o": (q_out, self.hidden),
            "up": (self.hidden, self.intermediate),
            "down": (self.intermediate, self.hidden),
        }
        if self.swiglu:
            shapes["gate"] = (self.hidden, self.intermediate)
        return shapes


@dataclass(frozen=True)
class FlopsSetup:
    """What is trained and what is sparse. ``lora_ranks`` maps layer → rank (absent: no adapter)."""

    seq_len: int
    batch_size: int = 1
    head: Head = "sequence_classification"
    num_labels: int = 2
    full_finetune: bool = False
    lora_roles: tuple[str, ...] = ("q", "v")
    lora_ranks: dict[int, int] = field(default_factory=dict)
    ffn_sparsity: list[float] | None = None  # per layer
    attn_sparsity: list[float] | None = None
    svd_rank: int = 8
    estimator_tokens: int = 256
    # "backward": the forward stays dense; the sparsity applies to the frozen projections' input gradients only
    sparse_pass: Literal["forward", "backward"] = "forward"
    backward_rule: str = "contribution"  # "gradient": the backward scores channels with a sampled matmul
    backward_residual_rank: int = 0  # > 0: the skipped channels' input gradient through rank-r factors


@dataclass
class LayerFlops:
    """Per-token FLOPs of one layer: forward and training step (forward + backward), by component."""

    forward: dict[str, float] = field(default_factory=dict)
    train: dict[str, float] = field(default_factory=dict)

    def add(self, component: str, forward: float, backward: float) -> None:
        self.forward[component] = self.forward.get(component, 0.0) + forward
        self.train[component] = self.train.get(component, 0.0) + forward + backward


@dataclass
class FlopsReport:
    layers: list[LayerFlops]
    head: LayerFlops

    def total(self, kind: Literal["forward", "train"] = "train", component: str | None = None) -> float:
        parts = [*self.layers, self.head]
        return sum(value for part in parts for name, value in getattr(part, kind).items() if component in (None, name))

    def components(self) -> list[str]:
        names: list[str] = []
        for part in [*self.layers, self.head]:
            names += [n for n in part.forward if n not in names]
        return names


def kept_head_dims(shape: ModelShape, sparsity: float) -> int:
    kept = kept_channels(shape.head_dim, sparsity)
    return kept + kept % 2 if shape.rotary else kept


def count_flops(shape: ModelShape, setup: FlopsSetup) -> FlopsReport:
    """Per-token FLOPs of every layer and the head for ``setup`` on a model of ``shape``."""
    projections = shape.projections()
    first_grad_layer = 0 if setup.full_finetune else min(setup.lora_ranks, default=shape.layers)
    estimator_share = min(1.0, setup.estimator_tokens / (setup.batch_size * setup.seq_len))
    layers = []
    for layer in range(shape.layers):
        flops = LayerFlops()
        backward = layer >= first_grad_layer
        ffn_s = setup.ffn_sparsity[layer] if setup.ffn_sparsity else 0.0
        attn_s = setup.attn_sparsity[layer] if setup.attn_sparsity else 0.0
        exact_forward = setup.sparse_pass == "backward"  # attention keeps every head dimension; FFN below
        qk_dims = v_dims = kept_head_dims(shape, attn_s) if attn_s and not exact_forward else shape.head_dim
        kept_ffn = kept_channels(shape.intermediate, ffn_s) if ffn_s else shape.intermediate
        width = {
            "q": shape.heads * qk_dims,
            "k": shape.kv_heads * qk_dims,
            "v": shape.kv_heads * v_dims,
            "o": shape.heads * v_dims,
            "up": kept_ffn,
            "gate": kept_ffn,
            "down": kept_ffn,
        }
        for role, (n_in, n_out) in projections.items():
            # the sparse dimension is the output of q/k/v/up/gate and the input of o/down
            computed = 2 * (width[role] * n_out if role in ("o", "down") else n_in * width[role])
            reads_layer_input = role in ("q", "k", "v")
            input_grad = backward and (setup.full_finetune or layer > first_grad_layer or not reads_layer_input)
            weight_grad = backward and setup.full_finetune
            component = "ffn" if role in ("up", "gate", "down") else "attn_proj"
            if exact_forward:  # dense forward; the FFN input gradient runs at the kept width, q/k/v's may drop
                dense = 2 * n_in * n_out
                frozen_grad = 0.0 if reads_layer_input and attn_s else computed
                flops.add(component, dense, frozen_grad * input_grad + dense * weight_grad)
            else:
                flops.add(component, computed, computed * (input_grad + weight_grad))
            rank = setup.lora_ranks.get(layer)
            if rank and role in setup.lora_roles and not setup.full_finetune:
                lora_backward = 2 * rank * (2 * n_out + n_in) + (2 * rank * n_in if input_grad else 0)
                flops.add("lora", 2 * rank * (n_in + n_out), lora_backward)
        qk_scores = 2 * setup.seq_len * shape.heads * qk_dims  # QKᵀ per query token
        av_scores = 2 * setup.seq_len * shape.heads * v_dims  # AV
        flops.add(
            "attn_scores",
            qk_scores + av_scores,
            _attention_backward(setup, layer, first_grad_layer, qk_scores, av_scores),
        )
        # the exact-forward mode ranks channels by a norm of activations it has: no estimator matmul to count
        estimated = (["up", "gate"] if shape.swiglu else ["up"]) if ffn_s and not exact_forward else []
        estimated += ["q", "k", "v"] if attn_s and not exact_forward else []
        estimator = sum(2 * setup.svd_rank * sum(projections[role]) for role in estimated) * estimator_share
        if estimator:
            flops.add("estimator", estimator, 0.0)
        if exact_forward and ffn_s and backward and setup.backward_rule == "gradient":
            # dL/dh of the sampled tokens through the whole down projection
            flops.add("estimator", 0.0, 2 * shape.intermediate * shape.hidden * estimator_share)
        if exact_forward and ffn_s and backward and setup.backward_residual_rank:
            # dy·b_downᵀ·a_downᵀ, and per up/gate projection dz·bᵀ·aᵀ: r·(hidden + width) multiply-adds each
            projections_count = 3 if shape.swiglu else 2
            residual = 2 * setup.backward_residual_rank * (shape.hidden + shape.intermediate) * projections_count
            flops.add("ffn_residual", 0.0, residual)
        layers.append(flops)
    return FlopsReport(layers=layers, head=_head_flops(shape, setup))


def _attention_backward(setup: FlopsSetup, layer: int, first_grad_layer: int, qk: float, av: float) -> float:
    """Each operand's gradient costs one forward product, and only operands that need it get one.

    Above the first trainable layer Q, K and V all depend on trainable weights; in that layer only
    the projections with an adapter do.
    """
    if layer < first_grad_layer:
        return 0.0
    if setup.full_finetune or layer > first_grad_layer:
        return 2 * qk + 2 * av
    needs = {role: role in setup.lora_roles for role in ("q", "k", "v")}
    scores_need = needs["q"] or needs["k"]
    return qk * (needs["q"] + needs["k"]) + av * (scores_need + needs["v"])


def _head_flops(shape: ModelShape, setup: FlopsSetup) -> LayerFlops:
    head = LayerFlops()
    d = shape.hidden
    if setup.head == "sequence_classification":
        pooler = 2 * d * d / setup.seq_len  # on the first token of each sequence only
        classifier = 2 * d * setup.num_labels / setup.seq_len
        head.add("head", pooler + classifier, pooler * (1 + setup.full_finetune) + 2 * classifier)
    else:
        transform = 2 * d * d if setup.head == "masked_lm" else 0  # BERT's MLM transform before the decoder
        logits = 2 * d * shape.vocab
        # input gradients, plus weight gradients when everything trains
        head.add("head", transform + logits, (transform + logits) * (1 + setup.full_finetune))
    return head


def dense_counterpart(setup: FlopsSetup) -> FlopsSetup:
    """The same training with nothing sparse: what SparseLoRA's savings are measured against."""
    return replace(setup, ffn_sparsity=None, attn_sparsity=None)


def config_flops(config: dict[str, Any], seq_len: int, batch_size: int) -> tuple[FlopsReport, FlopsReport]:
    """(sparse-as-configured, dense) FLOPs reports of a run config at a given sequence length and batch."""
    shape, arch = _model_shape(config["model"])
    setup = setup_from_run_config({**config, "max_length": seq_len, "batch_size": batch_size}, shape, arch, {})
    return count_flops(shape, setup), count_flops(shape, dense_counterpart(setup))


def run_flops_per_token(config: dict[str, Any], metrics: dict[str, Any]) -> float:
    """Training-step FLOPs per token of a finished run (its config.yaml and metrics.json).

    The sequence length is the run's mean padded length: tokens seen / sequences seen.
    """
    shape, arch = _model_shape(config["model"])
    train = metrics["train"]
    sequences = train["steps"] * config["batch_size"] * config.get("gradient_accumulation_steps", 1)
    sequences *= train.get("world_size", 1)
    seq_len = max(1, round(train["tokens_seen"] / sequences)) if train.get("tokens_seen") else config["max_length"]
    setup = setup_from_run_config({**config, "max_length": seq_len}, shape, arch, metrics.get("method", {}))
    return count_flops(shape, setup).total("train")


@functools.cache
def _model_shape(model: str) -> tuple[ModelShape, ArchSpec]:
    from sparselora.models import get_arch, load_model_config, resolve_model

    model_config = load_model_config(resolve_model(model))
    arch = get_arch(model_config.model_type)
    return ModelShape.from_config(model_config, arch), arch


def flops_payload(
    model: str, method: str, seq_len: int, batch_size: int, sparse: FlopsReport, dense: FlopsReport
) -> dict[str, Any]:
    """`sparselora flops --json`: per-layer numbers of both reports and their totals."""
    return {
        "convention": "matmul FLOPs only, 1 multiply-add = 2 FLOPs, per token",
        "model": model,
        "method": method,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "dense": {"layers": [vars(layer) for layer in dense.layers], "head": vars(dense.head)},
        "sparse": {"layers": [vars(layer) for layer in sparse.layers], "head": vars(sparse.head)},
        "totals": {k: {"dense": dense.total(k), "sparse": sparse.total(k)} for k in ("forward", "train")},
    }


def uniform_lora(rank_key: str = "lora_r") -> Callable[[dict[str, Any], int, dict[str, Any]], dict[str, Any]]:
    """A method's ``flops_setup``: one adapter rank, read from ``rank_key``, in every layer."""

    def setup(config: dict[str, Any], layers: int, _method_report: dict[str, Any]) -> dict[str, Any]:
        return {"lora_ranks": dict.fromkeys(range(layers), int(config[rank_key]))}

    return setup


def setup_from_run_config(
    config: dict[str, Any], shape: ModelShape, arch: ArchSpec, method_report: dict[str, Any]
) -> FlopsSetup:
    """The FLOPs view of a run config: which layers have which rank, what is sparse (the method says)."""
    from sparselora.methods import get_method

    method_setup = get_method(config["method"]).flops_setup or uniform_lora()
    setup: dict[str, Any] = {
        "head": _head_kind(config, arch),
        "seq_len": config.get("max_length", 128),
        "batch_size": config.get("batch_size", 1),
        "lora_roles": _roles(config.get("target_modules"), arch),
        **method_setup(config, shape.layers, method_report),
    }
    return FlopsSetup(**setup)


def _head_kind(config: dict[str, Any], arch: ArchSpec) -> Head:
    from sparselora.data import get_task

    data_format = config.get("data_format", "auto")  # your own files: the format, where the config names it
    kind = {"messages": "sft", "prompt_completion": "sft", "text": "language_modeling"}.get(data_format)
    return head_for(kind or get_task(config.get("task", "sst2")).kind, arch.kind == "decoder", config.get("model", ""))


def _roles(target_modules: Any, arch: ArchSpec) -> tuple[str, ...]:
    if target_modules is None:
        return arch.default_lora_roles
    if target_modules == "all-linear":
        return tuple(arch.projections)
    names = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    return tuple(role for role, path in arch.projections.items() if any(path.endswith(n) for n in names))
