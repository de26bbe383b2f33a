"""Metrics by name: the `metrics` key, checked against the task kind, reported in metrics.json and the card."""

import json

import numpy as np
import pytest
from sklearn.metrics import matthews_corrcoef

from sparselora.config import build_config
from sparselora.evaluation.metrics import classification_metrics, metric_names
from sparselora.training.loop import train
from tests.conftest import tiny_run


def test_cola_from_the_file_task_reports_matthews_correlation(tiny_bert_dir, shared_data_dir, tmp_path):
    cola = shared_data_dir / "cola"
    keys = tiny_run(
        tiny_bert_dir,
        tmp_path,
        task="tsv",
        train_file=str(cola / "train.tsv"),
        eval_file=str(cola / "validation.tsv"),
        text_column="sentence",
        max_steps=2,
        metrics=["matthews_correlation", "accuracy"],
    )
    run = train(build_config(keys))
    metrics = json.loads((run / "metrics.json").read_text())["task_metrics"]
    assert set(metrics) == {"eval_loss", "matthews_correlation", "accuracy"}
    assert -1.0 <= metrics["matthews_correlation"] <= 1.0
    assert f"| matthews_correlation | {metrics['matthews_correlation']:.4f} |" in (run / "README.md").read_text()


def test_each_metric_is_the_sklearn_one_and_the_kind_limits_the_choice():
    predictions, labels = np.array([0, 1, 1, 2, 2, 0]), np.array([0, 1, 2, 2, 1, 0])
    scores = classification_metrics(predictions, labels, 3, ("f1_macro", "matthews_correlation", "accuracy"))
    assert scores["matthews_correlation"] == pytest.approx(matthews_corrcoef(labels, predictions))
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert metric_names("classification", None) == ("accuracy", "f1")
    with pytest.raises(ValueError, match=r"\['perplexity'\] cannot be measured on a classification task"):
        metric_names("classification", ["perplexity"])
    with pytest.raises(ValueError, match="metrics"):
        build_config({"metrics": ["bleu"]})
