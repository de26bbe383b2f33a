"""The comparison's figures: quality against time with the Pareto front, peak memory, loss curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparselora.files.figures import plt, save_figure


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool = True) -> list[int]:
    """Indices of points no other point beats on both axes (lower x = faster; y: quality, or a loss)."""
    sign = 1 if higher_is_better else -1
    signed = [(x, sign * y) for x, y in points]
    front = []
    for i, (x, y) in enumerate(signed):
        dominated = any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(signed) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _above_zero(values, spread):
    """Error bars of non-negative quantities: mean ± std, the lower bar cut at zero."""
    if spread is None:
        return None
    values, spread = np.asarray(values, dtype=float), np.asarray(spread, dtype=float)
    return np.vstack([np.minimum(spread, values), spread])


def plot_quality_vs_time(
    summary, metric: str, title: str, path_stem: Path, higher_is_better: bool = True
) -> list[Path]:
    """Mean metric vs ms/step per method (interleaved when measured), std as error bars, Pareto front joined."""
    done = summary[summary["seeds"] > 0]
    interleaved = "ms_per_step_interleaved_mean" in done and done["ms_per_step_interleaved_mean"].notna().all()
    x = done["ms_per_step_interleaved_mean"] if interleaved else done["ms_per_step_mean"]
    xerr = None if interleaved else done["ms_per_step_std"].fillna(0)
    figure, axis = plt.subplots(figsize=(6, 4.2))
    points = list(zip(x, done[f"{metric}_mean"], strict=True))
    y = done[f"{metric}_mean"]
    axis.errorbar(x, y, xerr=_above_zero(x, xerr), yerr=_above_zero(y, done[f"{metric}_std"].fillna(0)), fmt="o",
                  capsize=3)  # fmt: skip
    for (px, py), label in zip(points, done["label"], strict=True):
        axis.annotate(label, (px, py), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = pareto_front(points, higher_is_better)
    axis.plot([points[i][0] for i in front], [points[i][1] for i in front], "--", color="tab:red", label="Pareto front")
    axis.set_xlabel("training ms/step (median, interleaved)" if interleaved else "training ms/step (median)")
    axis.set_ylabel(metric)
    axis.set_title(title)
    axis.legend(loc="lower right" if higher_is_better else "upper right")
    return save_figure(figure, path_stem)


def plot_peak_memory(summary, title: str, path_stem: Path) -> list[Path]:
    done = summary[summary["seeds"] > 0]
    figure, axis = plt.subplots(figsize=(max(5, 0.7 * len(done) + 2), 3.8))
    peak = done["peak_mb_mean"]
    axis.bar(done["label"], peak, yerr=_above_zero(peak, done["peak_mb_std"].fillna(0)), capsize=3, color="tab:green")
    axis.set_ylabel("peak memory (MB)")
    axis.set_title(title)
    axis.tick_params(axis="x", rotation=45)
    return save_figure(figure, path_stem)


Curves = dict[str, tuple[list[int], list[float]]]


def plot_loss_curves(curves: Curves, title: str, path_stem: Path, eval_curves: Curves | None = None) -> list[Path]:
    """Training loss per method (mean over seeds at each logged step); eval loss dashed, in the same colour."""
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for label, (steps, losses) in curves.items():
        (line,) = axis.plot(steps, losses, label=label)
        if eval_curves and label in eval_curves:
            eval_steps, eval_losses = eval_curves[label]
            axis.plot(eval_steps, eval_losses, "--", marker=".", color=line.get_color(), label=f"{label} (eval)")
    axis.set_xlabel("step")
    axis.set_ylabel("training loss (solid), eval loss (dashed)" if eval_curves else "training loss")
    axis.set_title(title)
    axis.legend(fontsize=8, ncol=2)
    return save_figure(figure, path_stem)
