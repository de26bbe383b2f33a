"""How often does the SVD estimator pick the channels an oracle would? Per layer, on real batches.

For each FFN (and attention block), the oracle keeps the top-k channels by the *true* score —
‖h_c‖ of the real post-activation that feeds the down projection; ‖Q_c‖·‖K_c‖ and ‖V_c‖ per head
for attention — and the predictor keeps its top-k by the estimated score. Recall is
|predicted ∩ oracle| / k; random selection has expected recall k / n.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparselora.sparse.attention import SparseAttention
from sparselora.sparse.engine import SparseLoRAEngine
from sparselora.sparse.ffn import SparseFFN


@dataclass
class LayerRecall:
    layer: int
    part: str  # "ffn", "attn.qk" or "attn.v"
    kept: int
    width: int
    recall: float
    outliers: int

    @property
    def random(self) -> float:
        return self.kept / self.width


def _topk_sets(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the top-k per row."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    return mask.scatter_(-1, torch.topk(scores, k, dim=-1).indices, True)


def _overlap(predicted: torch.Tensor, oracle: torch.Tensor) -> float:
    return float((predicted & oracle).sum() / oracle.sum())


@torch.no_grad()
def _ffn_recall(block: SparseFFN, x: torch.Tensor, h: torch.Tensor) -> float:
    width = block.width
    predicted = torch.zeros(width, dtype=torch.bool)
    predicted[block.select(x)] = True
    oracle_scores = h.reshape(-1, width).float().norm(dim=0)
    if block.outliers.numel():
        oracle_scores[block.outliers] = float("inf")  # both sides keep the calibrated outliers
    return _overlap(predicted, _topk_sets(oracle_scores, block.num_kept))


@torch.no_grad()
def _attention_recall(block: SparseAttention, x: torch.Tensor) -> tuple[float, float]:
    selection = block.select(x)
    flat = x.reshape(-1, x.shape[-1])
    group = block.heads // block.kv_heads

    def true(role: str, heads: int) -> torch.Tensor:
        return getattr(block, role)(flat).view(-1, heads, block.head_dim).float().norm(dim=0)

    q_norm = true("q", block.heads).view(block.kv_heads, group, block.head_dim)
    qk_true = (q_norm * true("k", block.kv_heads).unsqueeze(1)).sum(1)
    v_true = true("v", block.kv_heads)
    kept = block.num_kept
    if block.rotary:
        half = block.head_dim // 2
        pair_oracle = _topk_sets(qk_true[:, :half] + qk_true[:, half:], kept // 2)
        qk_oracle = torch.cat((pair_oracle, pair_oracle), dim=1)
    else:
        qk_oracle = _topk_sets(qk_true, kept)

    def mask(indices: torch.Tensor) -> torch.Tensor:
        return torch.zeros(block.kv_heads, block.head_dim, dtype=torch.bool).scatter_(1, indices, True)

    return _overlap(mask(selection.qk), qk_oracle), _overlap(mask(selection.v), _topk_sets(v_true, kept))


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values())))


def measure_recall(model: nn.Module, engine: SparseLoRAEngine, batches: list[dict]) -> list[LayerRecall]:
    """Mean recall per layer over ``batches`` (model in eval mode, dense forwards, hooks capture inputs)."""
    captured: dict[tuple[str, int], list[torch.Tensor]] = {}

    def capture(key: tuple[str, int]):
        def hook(_module, args, kwargs):
            captured.setdefault(key, []).append(_first_input(args, kwargs))

        return hook

    handles = []
    for block in engine.ffn:
        handles.append(block.block.register_forward_pre_hook(capture(("x", block.layer)), with_kwargs=True))
        handles.append(block.down.register_forward_pre_hook(capture(("h", block.layer)), with_kwargs=True))
    for block in engine.attention:
        handles.append(block.module.register_forward_pre_hook(capture(("a", block.layer)), with_kwargs=True))
    engine.enabled = False
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        engine.enabled = True
        for handle in handles:
            handle.remove()
    results = []
    for block in engine.ffn:
        if block.sparsity == 0:
            continue
        values = [
            _ffn_recall(block, x, h)
            for x, h in zip(captured[("x", block.layer)], captured[("h", block.layer)], strict=True)
        ]
        results.append(
            LayerRecall(
                block.layer, "ffn", block.num_kept, block.width, sum(values) / len(values), int(block.outliers.numel())
            )
        )
    for block in engine.attention:
        pairs = [_attention_recall(block, x) for x in captured[("a", block.layer)]]
        for part, index in (("attn.qk", 0), ("attn.v", 1)):
            mean = sum(p[index] for p in pairs) / len(pairs)
            results.append(LayerRecall(block.layer, part, block.num_kept, block.head_dim, mean, 0))
    return results
