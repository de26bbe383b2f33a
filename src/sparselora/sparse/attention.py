"""Contextual attention sparsity: per batch, compute only some channels of each head.

Per layer and batch, the SVD estimator predicts Q, K and V for a sample of tokens. Q/K channels
are scored by ‖Q_c‖·‖K_c‖ (summed over the query heads that share a key/value head under GQA),
V/O channels by ‖V_c‖; each key/value head keeps its top-k of each. Then q/k/v multiply only the
kept rows of their weights, attention runs on the reduced heads with the *original* softmax
scale, and the output projection multiplies only the kept columns. With rotary embeddings,
channels i and i + d/2 rotate together, so they are selected as pairs and the cos/sin tables are
gathered for the kept pairs. Where the architecture normalises each query/key head (Qwen3's
``q_norm``/``k_norm``, an RMSNorm over the whole head), Q and K run dense — the norm needs every
channel of a head — and only V/O are sparsified.

With ``dense_output_tokens`` (the paper's token rule), the tokens whose loss is trained (a decoder's
output tokens, an encoder's first token) take their Q, K and V from the full projections and their
output projection reads every channel; only the context tokens' projections are reduced. Their
reduced Q/K/V are scattered into full-width heads (zeros in the skipped channels), so one attention
call serves both: a dense query meets a context key only in the kept channels, and a context token's
output projection reads only the kept V/O channels.

GQA: a query head's kept Q channels are those its key/value head kept for K, and its O columns those
its key/value head kept for V, so the reduced heads line up with the key and value heads they read.

The attention module's ``forward`` is replaced on the instance (restored by ``detach``); the
attention kernel itself is the library's (``ALL_ATTENTION_FUNCTIONS``: sdpa or eager).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from sparselora.sparse.ffn import columns_forward, linear_parts, predicted_projection, rows_forward, transposed
from sparselora.sparse.settings import Predictor, kept_channels
from sparselora.sparse.svd import LowRank
from sparselora.sparse.tokens import TokenSplit


def _kernel_arguments(module: nn.Module) -> dict:
    """The family's own attention-kernel arguments, as its dense forward passes them: Gemma 2's logit
    soft-capping and per-layer sliding window (the module's), Mistral's and Mixtral's window (the config's)."""
    window = (
        module.sliding_window if hasattr(module, "sliding_window") else getattr(module.config, "sliding_window", None)
    )
    arguments = {"sliding_window": window, "softcap": getattr(module, "attn_logit_softcapping", None)}
    return {key: value for key, value in arguments.items() if value is not None}


@dataclass
class HeadSelection:
    """Kept channels of one batch: per key/value head for Q/K and for V, and the weight rows/columns."""

    qk: torch.Tensor  # (kv_heads, kept) channel indices within a head
    v: torch.Tensor  # (kv_heads, kept)
    q_rows: torch.Tensor
    k_rows: torch.Tensor
    v_rows: torch.Tensor
    o_columns: torch.Tensor


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@dataclass
class SparseAttention:
    layer: int
    module: nn.Module  # BertSelfAttention, LlamaAttention, ...
    q: nn.Module
    k: nn.Module
    v: nn.Module
    o: nn.Module
    heads: int
    kv_heads: int
    head_dim: int
    rotary: bool
    estimators: dict[str, LowRank]
    sparsity: float
    estimator_tokens: int = 256
    predictor: Predictor = "svd"
    selection: HeadSelection | None = None
    output_inside: bool = False
    qk_norm: bool = False  # per-head q/k RMSNorm (Qwen3): Q and K stay dense
    dense_tokens: Literal["labels", "first"] | None = None  # tokens whose projections run dense
    split: TokenSplit | None = None  # this forward's dense/sparse tokens (None: every token reduced)
    _handles: list = field(default_factory=list)
    _o_weight_t: torch.Tensor | None = None
    _attention_fn: Callable | None = None  # the library kernel (sdpa/eager), resolved once at attach
    _dropout_p: float = 0.0

    @property
    def num_kept(self) -> int:
        kept = kept_channels(self.head_dim, self.sparsity)
        return kept + kept % 2 if self.rotary else kept  # rotary keeps (i, i + d/2) pairs

    # selection ------------------------------------------------------------------------------
    def _estimate(self, flat: torch.Tensor, role: str, heads: int) -> torch.Tensor:
        factor = self.estimators[role] = self.estimators[role].to(flat)
        out = predicted_projection(flat, getattr(self, role), factor, self.predictor)
        return out.view(flat.shape[0], heads, self.head_dim)

    def _select_qk(self, flat: torch.Tensor, kept: int, group: int) -> torch.Tensor:
        """Kept Q/K channels per key/value head: every channel under a per-head q/k norm."""
        if self.qk_norm:
            return torch.arange(self.head_dim, device=flat.device).expand(self.kv_heads, -1)
        q_norm = self._estimate(flat, "q", self.heads).norm(dim=0).view(self.kv_heads, group, self.head_dim)
        k_norm = self._estimate(flat, "k", self.kv_heads).norm(dim=0)
        qk_score = (q_norm * k_norm.unsqueeze(1)).sum(1)  # (kv_heads, head_dim)
        if self.rotary:
            half = self.head_dim // 2
            pairs = torch.topk(qk_score[:, :half] + qk_score[:, half:], kept // 2, dim=1).indices.sort(dim=1).values
            return torch.cat((pairs, pairs + half), dim=1)  # keeps rotate_half's [first half | second half] layout
        return torch.topk(qk_score, kept, dim=1).indices.sort(dim=1).values

    @torch.no_grad()
    def select(self, x: torch.Tensor) -> HeadSelection:
        flat = x.reshape(-1, x.shape[-1])
        flat = flat[:: max(1, flat.shape[0] // self.estimator_tokens)]
        group = self.heads // self.kv_heads
        v_norm = self._estimate(flat, "v", self.kv_heads).norm(dim=0)
        kept = self.num_kept
        qk = self._select_qk(flat, kept, group)
        v = torch.topk(v_norm, kept, dim=1).indices.sort(dim=1).values
        kv_offsets = (torch.arange(self.kv_heads, device=x.device) * self.head_dim).unsqueeze(1)
        q_offsets = (torch.arange(self.heads, device=x.device) * self.head_dim).unsqueeze(1)
        q_to_kv = torch.arange(self.heads, device=x.device) // group
        return HeadSelection(
            qk=qk,
            v=v,
            q_rows=(q_offsets + qk[q_to_kv]).flatten(),
            k_rows=(kv_offsets + qk).flatten(),
            v_rows=(kv_offsets + v).flatten(),
            o_columns=(q_offsets + v[q_to_kv]).flatten(),
        )

    # execution --------------------------------------------------------------------------------
    def _rope(self, states: torch.Tensor, channels: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotary embedding of reduced heads: cos/sin gathered per head at the kept channels."""
        cos_kept = cos[:, :, channels].permute(0, 2, 1, 3)  # (batch, heads, seq, kept)
        sin_kept = sin[:, :, channels].permute(0, 2, 1, 3)
        return states * cos_kept + _rotate_half(states) * sin_kept

    def _split_for(self, hidden_states: torch.Tensor, engine) -> TokenSplit | None:
        batch, seq = hidden_states.shape[:2]
        if self.dense_tokens == "first":
            return engine.first_token_split(batch, seq, hidden_states.device)
        split = engine.output_tokens if self.dense_tokens == "labels" else None
        return split if split is not None and split.mask.shape == (batch, seq) else None

    def _project_split(self, role: str, flat: torch.Tensor, rows: torch.Tensor, split: TokenSplit) -> torch.Tensor:
        """(tokens, full width): output tokens through the full projection, context tokens through the
        kept rows only, scattered into zeros at the skipped channels."""
        module = getattr(self, role)
        dense_part = module(flat.index_select(0, split.dense))
        reduced = rows_forward(module, flat.index_select(0, split.sparse), rows)
        sparse_part = reduced.new_zeros(reduced.shape[0], dense_part.shape[-1]).index_copy_(1, rows, reduced)
        return split.join(dense_part, sparse_part)

    def split_qkv(
        self, hidden_states: torch.Tensor, split: TokenSplit
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, K, V as (batch, heads, seq, head_dim), before the rotary embedding: dense for output tokens,
        reduced (zeros in the skipped channels) for context tokens."""
        sel = self.selection
        assert sel is not None
        batch, seq = hidden_states.shape[:2]
        flat = hidden_states.reshape(batch * seq, -1)
        if self.qk_norm:  # the per-head norm needs every channel: Q and K dense for every token
            q, k = self.q(hidden_states), self.k(hidden_states)
        else:
            q = self._project_split("q", flat, sel.q_rows, split)
            k = self._project_split("k", flat, sel.k_rows, split)
        v = self._project_split("v", flat, sel.v_rows, split)
        q = q.reshape(batch, seq, self.heads, self.head_dim)
        k = k.reshape(batch, seq, self.kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.module.q_norm(q), self.module.k_norm(k)
        v = v.reshape(batch, seq, self.kv_heads, self.head_dim)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def _reduced_qkv(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, K, V of reduced heads, (batch, heads, seq, kept), rotary embedding applied."""
        sel = self.selection
        assert sel is not None
        batch, seq = hidden_states.shape[:2]
        kept = self.num_kept
        module = self.module
        if self.qk_norm:
            q = module.q_norm(self.q(hidden_states).view(batch, seq, self.heads, self.head_dim)).transpose(1, 2)
            k = module.k_norm(self.k(hidden_states).view(batch, seq, self.kv_heads, self.head_dim)).transpose(1, 2)
        else:
            q = rows_forward(self.q, hidden_states, sel.q_rows).view(batch, seq, self.heads, kept).transpose(1, 2)
            k = rows_forward(self.k, hidden_states, sel.k_rows).view(batch, seq, self.kv_heads, kept).transpose(1, 2)
        v = rows_forward(self.v, hidden_states, sel.v_rows).view(batch, seq, self.kv_heads, kept).transpose(1, 2)
        return q, k, v

    def sparse_forward(self, hidden_states: torch.Tensor, attention_mask=None, position_embeddings=None, **kwargs):
        sel = self.selection
        assert sel is not None
        # Training forwards may carry an (unused) KV cache; a cache that generation will read must not
        # receive reduced heads, and the kept channels change every batch anyway.
        if kwargs.pop("past_key_values", None) is not None and not self.module.training:
            raise NotImplementedError(
                "sparse attention cannot fill a KV cache: run generation dense (sparse_eval: false)"
            )
        batch, seq = hidden_states.shape[:2]
        module = self.module
        if self.split is not None:
            q, k, v = self.split_qkv(hidden_states, self.split)
            if self.rotary:
                cos, sin = (t.unsqueeze(1) for t in position_embeddings)
                q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        else:
            q, k, v = self._reduced_qkv(hidden_states)
            if self.rotary:
                cos, sin = position_embeddings
                group = self.heads // self.kv_heads
                q = self._rope(q, sel.qk.repeat_interleave(group, dim=0), cos, sin)
                k = self._rope(k, sel.qk, cos, sin)
        out, weights = self._attention_fn(
            module,
            q,
            k,
            v,
            attention_mask,
            dropout=self._dropout_p if module.training else 0.0,
            scaling=module.scaling,
            **self._family_kwargs,
            **kwargs,
        )
        out = out.reshape(batch, seq, -1)
        if self.output_inside:  # LLaMA applies o_proj inside attention; BERT's parent module does
            out = self.o(out)
        return out, weights

    # wiring -----------------------------------------------------------------------------------
    def attach(self, engine) -> None:
        self.output_inside = any(sub is self.o for sub in self.module.modules())
        self.qk_norm = hasattr(self.module, "q_norm") and hasattr(self.module, "k_norm")
        eager = sys.modules[type(self.module).__module__].eager_attention_forward
        self._attention_fn = ALL_ATTENTION_FUNCTIONS.get_interface(self.module.config._attn_implementation, eager)
        self._family_kwargs = _kernel_arguments(self.module)
        dropout = getattr(self.module, "attention_dropout", None)  # LLaMA: a float; BERT: an nn.Dropout
        self._dropout_p = dropout if dropout is not None else self.module.dropout.p
        dense_attention = type(self.module).forward.__get__(self.module)
        dense_o = type(self.o).forward.__get__(self.o)

        def choose(_module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            self.selection = None
            if engine.sparse_now(self.sparsity, self.module.training):
                with engine.timing_selection():
                    self.selection = self.select(x)
            self.split = self._split_for(x, engine) if self.selection is not None else None

        def attention_forward(*args, **kwargs):
            if self.selection is None:
                return dense_attention(*args, **kwargs)
            hidden_states = args[0] if args else kwargs.pop("hidden_states")
            return self.sparse_forward(hidden_states, *args[1:], **kwargs)

        def o_forward(h, *args, **kwargs):
            if self.selection is None:
                return dense_o(h, *args, **kwargs)
            self._o_weight_t = transposed(linear_parts(self.o)[0].weight, self._o_weight_t)
            columns = self.selection.o_columns
            if self.split is None:  # h holds the reduced heads' channels only
                return columns_forward(self.o, h, columns, self._o_weight_t)
            flat = h.reshape(-1, h.shape[-1])
            dense_part = dense_o(flat.index_select(0, self.split.dense))
            context = flat.index_select(0, self.split.sparse).index_select(1, columns)
            sparse_part = columns_forward(self.o, context, columns, self._o_weight_t)
            return self.split.join(dense_part, sparse_part).view(*h.shape[:-1], -1)

        self._handles = [self.module.register_forward_pre_hook(choose, with_kwargs=True)]
        self.module.forward = attention_forward
        self.o.forward = o_forward

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        for module in (self.module, self.o):
            if "forward" in module.__dict__:
                del module.forward
        self._handles, self.selection, self.split, self._o_weight_t = [], None, None, None
