"""LayerLens: measure which layers matter for the task, then spend the adapter budget only there.

Importance of a layer = how much one gradient step on a probe LoRA adapter of that layer would
lower the loss, i.e. the squared gradient norm (empirical Fisher) of its adapter weights,
summed over a few calibration batches. Probe adapters start with B = 0, so the base model's
output is untouched and only ∂L/∂B is nonzero. Layers are then taken in order of importance:
each gets rank ``lora_r`` while the budget lasts; the next gets the largest rank that still fits
(if ≥ ``lens_min_rank``). The adapters are ordinary PEFT LoRA with ``rank_pattern``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft import LoraConfig, get_peft_model
from pydantic import Field
from transformers import PreTrainedModel

from sparselora.files.atomic import atomic_write_json
from sparselora.flops import uniform_lora
from sparselora.methods.lora import LORA_CITATION, LoraOptions, adapter_report, lora_config
from sparselora.methods.registry import BuildContext, MethodSetup, MethodSpec, register
from sparselora.models import ArchSpec, iter_projections

METHOD = "layerlens"
SCORES_FILE = "layer_scores.json"


class BudgetTooSmallError(ValueError):
    """The trainable budget cannot pay for even one adapter of the minimum rank."""


class LayerLensOptions(LoraOptions):
    trainable_budget: float = Field(
        0.001, gt=0, le=1, description="Adapter parameters allowed, as a fraction of the base model's parameters."
    )
    lens_batches: int = Field(4, gt=0, description="Calibration batches used to score the layers.")
    lens_min_rank: int = Field(2, gt=0, description="Smallest rank worth giving a layer.")


@dataclass(frozen=True)
class LayerScores:
    scores: list[float]  # per layer
    cost_per_rank: list[int]  # adapter parameters one rank unit costs in each layer

    def to_dict(self) -> dict[str, Any]:
        return {"scores": self.scores, "cost_per_rank": self.cost_per_rank}


def score_layers(
    model: PreTrainedModel, batches: list[dict], arch: ArchSpec, options: LoraOptions, ctx: BuildContext
) -> LayerScores:
    """Probe-adapter Fisher per layer. The model is returned unchanged (probes are unloaded)."""
    probe = get_peft_model(model, lora_config(model, options, ctx))
    probe.train()
    adapted = [p for p in iter_projections(probe, arch) if hasattr(p.module, "lora_B")]
    layers = 1 + max(p.layer for p in adapted)
    scores = [0.0] * layers
    cost = [0] * layers
    for projection in adapted:
        cost[projection.layer] += projection.module.in_features + projection.module.out_features
    for batch in batches:
        probe.zero_grad()
        probe(**batch).loss.backward()
        for projection in adapted:
            grad = projection.module.lora_B["default"].weight.grad
            scores[projection.layer] += float(grad.pow(2).sum())
    probe.zero_grad()
    probe.unload()  # removes the probe layers in place; the base weights were never touched
    return LayerScores(scores=scores, cost_per_rank=cost)


def allocate_ranks(scores: LayerScores, budget: int, max_rank: int, min_rank: int) -> dict[int, int]:
    """Most important layers first, each at ``max_rank`` while the budget lasts."""
    cheapest = min_rank * min(scores.cost_per_rank)
    if budget < cheapest:
        raise BudgetTooSmallError(
            f"config key 'trainable_budget' allows {budget:,} adapter parameters, but one rank-{min_rank} adapter "
            f"costs {cheapest:,}: raise trainable_budget or lower lens_min_rank."
        )
    ranks: dict[int, int] = {}
    left = budget
    for layer in sorted(range(len(scores.scores)), key=lambda i: -scores.scores[i]):
        rank = min(max_rank, left // scores.cost_per_rank[layer])
        if rank < min_rank:
            break
        ranks[layer] = rank
        left -= rank * scores.cost_per_rank[layer]
    return dict(sorted(ranks.items()))


def lens_model_scores(model: PreTrainedModel, ctx: BuildContext, options: LayerLensOptions) -> LayerScores:
    if ctx.arch is None or ctx.calibration_batches is None:
        raise ValueError("layerlens needs a model in the architecture map and calibration batches")
    return score_layers(model, ctx.calibration_batches(options.lens_batches), ctx.arch, options, ctx)


def adapter_budget(model: PreTrainedModel, options: LayerLensOptions) -> int:
    """Adapter parameters allowed: ``trainable_budget`` of the base model's parameters."""
    return int(options.trainable_budget * sum(p.numel() for p in model.parameters()))


@dataclass
class LensResult:
    scores: LayerScores
    ranks: dict[int, int]
    budget: int


def lens(model: PreTrainedModel, ctx: BuildContext) -> LensResult:
    """Score every layer on the run's calibration batches and allocate the budget: what the method trains."""
    options: LayerLensOptions = ctx.config.method_options  # type: ignore[assignment]
    budget = adapter_budget(model, options)
    scores = lens_model_scores(model, ctx, options)
    return LensResult(scores, allocate_ranks(scores, budget, options.lora_r, options.lens_min_rank), budget)


def build_layerlens(model: PreTrainedModel, ctx: BuildContext) -> MethodSetup:
    options: LayerLensOptions = ctx.config.method_options  # type: ignore[assignment]
    result = lens(model, ctx)
    scores, ranks, budget = result.scores, result.ranks, result.budget
    config = lora_config(model, options, ctx)
    chosen = [p for p in iter_projections(model, ctx.arch) if p.layer in ranks and _is_target(p.name, config)]
    config.target_modules = [p.name for p in chosen]
    config.rank_pattern = {p.name: ranks[p.layer] for p in chosen}
    peft_model = get_peft_model(model, config)

    def report() -> dict[str, Any]:
        return {**adapter_report(peft_model), "budget_params": budget, "ranks": ranks, **scores.to_dict()}

    def write_artifacts(run_dir: Path) -> None:
        write_lens_outputs(scores, ranks, budget, run_dir, title=f"LayerLens: {ctx.config.model} / {ctx.config.task}")

    return MethodSetup(model=peft_model, measurements=report, write_artifacts=write_artifacts)


def _is_target(name: str, config: LoraConfig) -> bool:
    """Would PEFT adapt this module? (list entries match the end of the name; 'all-linear' all.)"""
    targets = config.target_modules
    if isinstance(targets, str):
        return targets == "all-linear" or name.endswith(targets)
    return any(name == t or name.endswith("." + t) for t in targets)


def layerlens_flops(config: dict[str, Any], layers: int, method_report: dict[str, Any]) -> dict[str, Any]:
    """The ranks a finished run chose (its report); before training, `lora_r` everywhere."""
    if "ranks" in method_report:
        return {"lora_ranks": {int(layer): int(rank) for layer, rank in method_report["ranks"].items()}}
    return uniform_lora()(config, layers, method_report)


def plot_layer_scores(scores: list[float], ranks: dict[int, int], title: str, path_stem: Path) -> list[Path]:
    """Bar per layer; layers that got an adapter are coloured and labelled with their rank."""
    from sparselora.files.figures import plt, save_figure  # matplotlib: the plots extra

    figure, axis = plt.subplots(figsize=(max(5, 0.35 * len(scores) + 2), 3.5))
    colours = ["tab:blue" if layer in ranks else "lightgrey" for layer in range(len(scores))]
    bars = axis.bar(range(len(scores)), scores, color=colours)
    for layer, rank in ranks.items():
        axis.annotate(f"r={rank}", (layer, bars[layer].get_height()), ha="center", va="bottom", fontsize=8)
    axis.set_xlabel("layer")
    axis.set_ylabel("importance (probe-adapter Fisher)")
    axis.set_title(title)
    return save_figure(figure, path_stem)


def write_lens_outputs(scores: LayerScores, ranks: dict[int, int], budget: int, folder: Path, title: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    payload = {**scores.to_dict(), "ranks": ranks, "budget_params": budget}
    atomic_write_json(folder / SCORES_FILE, payload)
    plot_layer_scores(scores.scores, ranks, title, folder / "layer_scores")


register(
    MethodSpec(
        name=METHOD,
        summary="LayerLens: score layers on calibration batches, LoRA only on the best layers under a budget",
        options=LayerLensOptions,
        build=build_layerlens,
        flops_setup=layerlens_flops,
        citations=(LORA_CITATION,),
    )
)
