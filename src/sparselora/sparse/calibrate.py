"""`sparselora calibrate`: per-layer sensitivity → the `layer_sparsity` map that meets a FLOPs target.

The paper tuned layer-wise sparsity by hand. Here each block (FFN or attention of one layer) is
sparsified alone at each candidate level on calibration batches, and the damage is measured as the
relative error of the model's final hidden states against the dense model (head-independent,
so a freshly initialised classifier does not matter). A greedy allocation then raises, one step at
a time, the block/level with the least added damage per FLOP saved until the target reduction of
the sparsifiable projections' FLOPs is met.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from sparselora.sparse.engine import SparseLoRAEngine
from sparselora.sparse.ffn import linear_parts
from sparselora.sparse.output_error import final_hidden, relative_error, sparse_evaluation

LEVELS = (0.25, 0.5, 0.75, 0.9)


@dataclass(frozen=True)
class Block:
    layer: int
    part: str  # "mlp" or "attn"
    macs_per_token: int  # multiply-adds of its sparsifiable projections (dense)


@dataclass
class Calibration:
    damage: dict[tuple[int, str, float], float]  # (layer, part, level) → relative output error
    blocks: list[Block]
    layer_sparsity: dict[str, float]
    flops_reduction: float  # achieved share of sparsifiable-projection FLOPs removed


def _macs(modules: list[nn.Module]) -> int:
    return sum(linear_parts(m)[0].weight.numel() for m in modules if m is not None)


def _set_all(engine: SparseLoRAEngine, sparsity: float) -> None:
    for block in [*engine.ffn, *engine.attention]:
        block.sparsity = sparsity


@torch.no_grad()
def calibrate(
    model: nn.Module,
    engine: SparseLoRAEngine,
    batches: list[dict],
    target_reduction: float,
    levels: tuple[float, ...] = LEVELS,
    progress: bool = True,
) -> Calibration:
    """``engine`` must have been built with nonzero ffn (and, to include attention, attn) sparsity."""
    if not 0 < target_reduction <= max(levels):
        raise ValueError(f"target FLOPs reduction must be in (0, {max(levels)}], got {target_reduction}")
    with sparse_evaluation(model, engine):
        damage, blocks = _damage(model, engine, batches, levels, progress)
    chosen, achieved = _allocate(blocks, damage, levels, target_reduction)
    return Calibration(
        damage=damage, blocks=blocks, layer_sparsity=_complete_map(chosen, len(engine.ffn)), flops_reduction=achieved
    )


def _damage(
    model: nn.Module, engine: SparseLoRAEngine, batches: list[dict], levels: tuple[float, ...], progress: bool
) -> tuple[dict[tuple[int, str, float], float], list[Block]]:
    """Final-hidden-state error with one block at a time sparsified at each level, the others dense."""
    _set_all(engine, 0.0)
    reference = final_hidden(model, batches)
    blocks = [Block(b.layer, "mlp", _macs([b.up, b.gate, b.down])) for b in engine.ffn]
    blocks += [Block(b.layer, "attn", _macs([b.q, b.k, b.v, b.o])) for b in engine.attention]
    by_key = {(b.layer, "mlp"): b for b in engine.ffn} | {(b.layer, "attn"): b for b in engine.attention}
    damage = {}
    with tqdm(total=len(blocks) * len(levels), desc="sensitivity", disable=not progress) as bar:
        for block in blocks:
            for level in levels:
                by_key[(block.layer, block.part)].sparsity = level
                damage[(block.layer, block.part, level)] = relative_error(final_hidden(model, batches), reference)
                by_key[(block.layer, block.part)].sparsity = 0.0
                bar.update()
    return damage, blocks


def _complete_map(chosen: dict[tuple[int, str], float], num_layers: int) -> dict[str, float]:
    """Every layer's mlp and attn entry, so the map can replace a config's ``layer_sparsity`` as it is.

    Attention blocks the config kept dense were not calibrated; written as 0 they stay dense
    instead of falling back to the config's ``attn_sparsity``.
    """
    return {
        f"layers.{layer}.{part}": chosen.get((layer, part), 0.0)
        for part in ("mlp", "attn")
        for layer in range(num_layers)
    }


def _allocate(blocks: list[Block], damage: dict, levels: tuple[float, ...], target: float) -> tuple[dict, float]:
    """Greedy: repeatedly take the cheapest (damage per FLOP saved) next level until the target is met."""
    total = sum(b.macs_per_token for b in blocks)
    chosen = {(b.layer, b.part): 0.0 for b in blocks}
    saved = 0.0

    def next_step(block: Block) -> tuple[float, float, float] | None:
        current = chosen[(block.layer, block.part)]
        higher = [lvl for lvl in levels if lvl > current]
        if not higher:
            return None
        level = higher[0]
        before = damage.get((block.layer, block.part, current), 0.0)
        gain = (level - current) * block.macs_per_token
        return (damage[(block.layer, block.part, level)] - before) / gain, level, gain

    while saved / total < target:
        options = [(step, block) for block in blocks if (step := next_step(block)) is not None]
        if not options:
            break
        (_, level, gain), block = min(options, key=lambda option: option[0][0])
        chosen[(block.layer, block.part)] = level
        saved += gain
    return chosen, saved / total
