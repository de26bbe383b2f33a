"""Figures, written as PNG and SVG side by side (PNG to look at, SVG for papers)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers or in CI
import matplotlib.pyplot as plt
from matplotlib.figure import Figure


def save_figure(figure: Figure, path_stem: Path) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.svg`` and close the figure."""
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [path_stem.with_suffix(".png"), path_stem.with_suffix(".svg")]
    figure.tight_layout()
    for path in paths:
        figure.savefig(path, dpi=150)
    plt.close(figure)
    return paths


def plot_layer_scores(scores: list[float], ranks: dict[int, int], title: str, path_stem: Path) -> list[Path]:
    """Bar per layer; layers that got an adapter are coloured and labelled with their rank."""
    figure, axis = plt.subplots(figsize=(max(5, 0.35 * len(scores) + 2), 3.5))
    colours = ["tab:blue" if layer in ranks else "lightgrey" for layer in range(len(scores))]
    bars = axis.bar(range(len(scores)), scores, color=colours)
    for layer, rank in ranks.items():
        axis.annotate(f"r={rank}", (layer, bars[layer].get_height()), ha="center", va="bottom", fontsize=8)
    axis.set_xlabel("layer")
    axis.set_ylabel("importance (probe-adapter Fisher)")
    axis.set_title(title)
    return save_figure(figure, path_stem)
