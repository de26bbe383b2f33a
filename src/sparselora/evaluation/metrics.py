"""Task metrics: accuracy/F1 for classification, perplexity for LM, exact match for GSM8K."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from sparselora.data.gsm8k import final_answer


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
    """Accuracy and F1 (binary F1 of class 1 for two classes, macro F1 otherwise, as GLUE reports)."""
    average = "binary" if num_labels == 2 else "macro"
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "f1": float(f1_score(labels, predictions, average=average, zero_division=0)),
    }


def perplexity(mean_token_loss: float) -> float:
    return float(math.exp(min(mean_token_loss, 50.0)))


def exact_match(generations: list[str], answers: list[str | None]) -> float:
    """Share of generations whose final number equals the reference final number."""
    hits = [final_answer(text) == answer for text, answer in zip(generations, answers, strict=True)]
    return float(np.mean(hits)) if hits else 0.0
