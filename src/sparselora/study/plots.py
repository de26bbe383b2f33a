"""The study's figures (PNG and SVG via sparselora.report.plots)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sparselora.files.figures import plt, save_figure

_COLOURS = {"svd": "tab:blue", "random": "tab:orange", "magnitude": "tab:green", "input_magnitude": "tab:green"}


def _errors_by_k(results: pd.DataFrame, comparison: str, title: str, path_stem: Path) -> list[Path]:
    subset = results[results["comparison"] == comparison]
    spectra = list(dict.fromkeys(subset["spectrum"]))
    figure, axes = plt.subplots(1, len(spectra), figsize=(3.6 * len(spectra), 3.4), squeeze=False)
    for axis, spectrum in zip(axes[0], spectra, strict=True):
        data = subset[subset["spectrum"] == spectrum]
        for method, group in data.groupby("method"):
            stats = group.groupby("k")["frobenius"].agg(["mean", "std"])
            axis.errorbar(
                stats.index,
                stats["mean"],
                yerr=stats["std"],
                marker="o",
                capsize=3,
                label=method,
                color=_COLOURS.get(method),
            )
        axis.set_title(spectrum)
        axis.set_xlabel("k (budget of a rank-k factorisation)")
        axis.set_xscale("log", base=2)
    axes[0][0].set_ylabel("relative Frobenius error")
    axes[0][-1].legend(fontsize=8)
    figure.suptitle(title)
    return save_figure(figure, path_stem)


def plot_phase_a(results: pd.DataFrame, folder: Path) -> list[Path]:
    return _errors_by_k(
        results,
        "rank_k",
        "Rank-k approximation: SVD vs random projection (mean ± std over matrices of all shapes)",
        folder / "rank_k_comparison",
    ) + _errors_by_k(
        results,
        "columns",
        "Column pruning at equal storage: SVD leverage vs magnitude vs random (mean ± std, all shapes)",
        folder / "column_prune_comparison",
    )


def plot_spectra(spectra: dict[str, dict[str, list[list[float]]]], folder: Path) -> list[Path]:
    """Normalised singular values σᵢ/σ₁ per projection role: median over layers, 10–90% band."""
    import numpy as np

    figure, axes = plt.subplots(1, len(spectra), figsize=(5 * len(spectra), 3.6), squeeze=False)
    for axis, (model, roles) in zip(axes[0], spectra.items(), strict=True):
        for role, per_layer in roles.items():
            values = np.array([np.asarray(s) / s[0] for s in per_layer])
            x = np.arange(1, values.shape[1] + 1)
            axis.plot(x, np.median(values, axis=0), label=role)
            axis.fill_between(x, np.quantile(values, 0.1, axis=0), np.quantile(values, 0.9, axis=0), alpha=0.15)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("index i")
        axis.set_ylabel("σᵢ / σ₁")
        axis.set_title(f"{model}: singular values of the frozen projections")
        axis.legend(fontsize=7, ncol=2)
    return save_figure(figure, folder / "singular_values")


def plot_selector_metric(frame: pd.DataFrame, metric: str, ylabel: str, title: str, path_stem: Path) -> list[Path]:
    """Per-layer metric of each selector (and outlier setting), one panel per model."""
    models = list(dict.fromkeys(frame["model"]))
    figure, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.6), squeeze=False)
    for axis, model in zip(axes[0], models, strict=True):
        data = frame[frame["model"] == model]
        for (selector, outliers), group in data.groupby(["selector", "outliers"]):
            means = group.groupby("layer")[metric].mean()
            style = "-" if outliers else ":"
            axis.plot(
                means.index,
                means.values,
                style,
                marker=".",
                color=_COLOURS.get(selector),
                label=f"{selector}{' + outliers' if outliers else ''}",
            )
        axis.set_xlabel("layer")
        axis.set_ylabel(ylabel)
        axis.set_title(model)
        axis.legend(fontsize=7)
    figure.suptitle(title)
    return save_figure(figure, path_stem)


def plot_phase_c(frame: pd.DataFrame, metric: str, folder: Path) -> list[Path]:
    """Accuracy after pruning vs keep fraction, one panel per (rank, structure, targets)."""
    panels = list(frame.groupby(["targets", "lora_r", "structure"]).groups)
    figure, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    for axis, (targets, rank, structure) in zip(axes[0], panels, strict=True):
        data = frame[(frame["targets"] == targets) & (frame["lora_r"] == rank) & (frame["structure"] == structure)]
        for importance, group in data.groupby("importance"):
            stats = group.groupby("keep")[metric].agg(["mean", "std"])
            axis.errorbar(
                stats.index,
                stats["mean"],
                yerr=stats["std"].fillna(0),
                marker="o",
                capsize=3,
                label=importance,
                color=_COLOURS.get(importance),
            )
        axis.set_title(f"{targets} r={rank} {structure}", fontsize=9)
        axis.set_xlabel("keep fraction")
    axes[0][0].set_ylabel(metric)
    axes[0][-1].legend(fontsize=7)
    return save_figure(figure, folder / f"prune_{metric}")
