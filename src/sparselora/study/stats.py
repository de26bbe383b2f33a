"""The statistics every phase reports: mean ± std, 95% CI, paired tests with effect size."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Comparison:
    """``a`` vs ``b`` over paired observations (difference = a − b; negative = a has lower error)."""

    n: int
    mean_a: float
    mean_b: float
    mean_difference: float
    ci95_low: float
    ci95_high: float
    t_p: float  # paired t-test, two-sided
    wilcoxon_p: float  # Wilcoxon signed-rank, two-sided
    effect_size: float  # Cohen's d_z: mean difference / std of differences

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _ci95(values: np.ndarray) -> tuple[float, float]:
    """The t-interval of the mean (scipy's); a single value is its own interval."""
    mean = float(values.mean())
    if len(values) < 2 or float(values.std(ddof=1)) == 0:
        return mean, mean
    interval = stats.ttest_1samp(values, 0.0).confidence_interval(confidence_level=0.95)
    return float(interval.low), float(interval.high)


def paired(a, b) -> Comparison:
    """Paired comparison. Identical samples give p = 1 and effect size 0 (no difference to find)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    differences = a - b
    spread = float(differences.std(ddof=1)) if len(differences) > 1 else 0.0
    scale = max(abs(float(np.abs(a).mean())), abs(float(np.abs(b).mean())), 1e-300)
    if spread <= 1e-12 * scale:  # no variation: a test statistic is undefined
        constant = float(differences.mean())
        p = 1.0 if abs(constant) <= 1e-12 * scale else 0.0
        effect = 0.0 if p == 1.0 else math.copysign(math.inf, constant)
        return Comparison(len(a), float(a.mean()), float(b.mean()), constant, constant, constant, p, p, effect)
    test = stats.ttest_rel(a, b)
    interval = test.confidence_interval(confidence_level=0.95)
    low, high = float(interval.low), float(interval.high)
    t_p = float(test.pvalue)
    wilcoxon_p = float(stats.wilcoxon(a, b).pvalue) if np.any(differences != 0) else 1.0
    return Comparison(
        n=len(a),
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
        mean_difference=float(differences.mean()),
        ci95_low=low,
        ci95_high=high,
        t_p=t_p,
        wilcoxon_p=wilcoxon_p,
        effect_size=float(differences.mean() / spread),
    )


def against_distribution(value: float, samples) -> dict[str, float]:
    """One deterministic result (SVD, magnitude) vs repeated random draws.

    ``percentile``: share of random draws at or below ``value``; ``t_p``: one-sample t-test of the
    draws against ``value``; ``effect_size``: (value − mean) / std of the draws.
    """
    samples = np.asarray(samples, dtype=float)
    mean = float(samples.mean())
    std = float(samples.std(ddof=1)) if len(samples) > 1 else 0.0
    low, high = _ci95(samples)
    if std == 0:
        t_p = 1.0 if value == mean else 0.0
        effect = 0.0 if value == mean else math.copysign(math.inf, value - mean)
    else:
        t_p = float(stats.ttest_1samp(samples, value).pvalue)
        effect = (value - mean) / std
    return {
        "value": float(value),
        "random_mean": mean,
        "random_std": std,
        "random_ci95_low": low,
        "random_ci95_high": high,
        "random_n": len(samples),
        "percentile": float((samples <= value).mean()),
        "t_p": t_p,
        "effect_size": effect,
    }
