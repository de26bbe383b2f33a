"""Task metrics by name: accuracy, F1, Matthews correlation; Pearson/Spearman (regression); perplexity; exact match.

``eval_loss`` is always reported. Each task kind has defaults (classification: accuracy and F1, as GLUE
reports SST-2/MRPC; language modelling: perplexity; GSM8K: perplexity and exact match); the ``metrics``
config key chooses others among those its kind allows (CoLA is scored by Matthews correlation).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from sparselora.data.gsm8k import final_answer

_CLASSIFICATION: dict[str, Callable[[np.ndarray, np.ndarray, int], float]] = {
    "accuracy": lambda predictions, labels, _n: accuracy_score(labels, predictions),
    # binary F1 of class 1 for two classes, macro F1 otherwise (GLUE's convention)
    "f1": lambda predictions, labels, n: f1_score(
        labels, predictions, average="binary" if n == 2 else "macro", zero_division=0
    ),
    "f1_macro": lambda predictions, labels, _n: f1_score(labels, predictions, average="macro", zero_division=0),
    "matthews_correlation": lambda predictions, labels, _n: matthews_corrcoef(labels, predictions),
}
_REGRESSION: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "pearson": lambda predictions, labels: stats.pearsonr(predictions, labels).statistic,
    "spearman": lambda predictions, labels: stats.spearmanr(predictions, labels).statistic,
}
ALLOWED: dict[str, tuple[str, ...]] = {
    "classification": tuple(_CLASSIFICATION),
    "regression": tuple(_REGRESSION),
    "language_modeling": ("perplexity",),
    "generation": ("perplexity", "exact_match"),
    "sft": ("perplexity", "exact_match"),
}
DEFAULTS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "f1"),
    "regression": ("pearson", "spearman"),
    "language_modeling": ("perplexity",),
    "generation": ("perplexity", "exact_match"),
    "sft": ("perplexity",),
}


def metric_names(kind: str, chosen: list[str] | None) -> tuple[str, ...]:
    """The metrics a run reports: ``chosen`` (checked against what its task kind can measure) or the defaults."""
    if chosen is None:
        return DEFAULTS[kind]
    wrong = [name for name in chosen if name not in ALLOWED[kind]]
    if wrong:
        raise ValueError(
            f"config key 'metrics': {wrong} cannot be measured on a {kind.replace('_', ' ')} task; "
            f"choose from {list(ALLOWED[kind])} (eval_loss is always reported)"
        )
    return tuple(dict.fromkeys(chosen))


def classification_metrics(
    predictions: np.ndarray, labels: np.ndarray, num_labels: int, names: tuple[str, ...] = DEFAULTS["classification"]
) -> dict[str, float]:
    return {name: float(_CLASSIFICATION[name](predictions, labels, num_labels)) for name in names}


def regression_metrics(predictions: np.ndarray, labels: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    """Correlations of predicted and reference scores (NaN when either is constant, as scipy gives)."""
    return {name: float(_REGRESSION[name](predictions, labels)) for name in names}


def perplexity(mean_token_loss: float) -> float:
    return float(math.exp(min(mean_token_loss, 50.0)))


def exact_match(generations: list[str], answers: list[str | None]) -> float:
    """Share of generations whose final number equals the reference final number."""
    hits = [final_answer(text) == answer for text, answer in zip(generations, answers, strict=True)]
    return float(np.mean(hits)) if hits else 0.0
