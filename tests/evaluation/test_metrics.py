"""Metrics by name: the `metrics` key, checked against the task kind, reported in metrics.json and the card."""

import json

import numpy as np
import pytest
from sklearn.metrics import matthews_corrcoef

from sparselora.config import build_config
from sparselora.evaluation.metrics import classification_metrics, metric_names
from sparselora.training.loop import train
from tests.helpers import tiny_run


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


def test_a_regression_file_task_trains_one_output_and_reports_correlations(tiny_bert_dir, tmp_path):
    from sparselora.evaluation.rerun import evaluate_run

    words = ["awful", "poor", "fine", "good", "great", "superb"]
    rows = [f"a {words[i % 6]} and {words[(i * 5) % 6]} film\t{(i % 6 + (i * 5) % 6) / 2:.1f}" for i in range(60)]
    (tmp_path / "scores.tsv").write_text("text\tlabel\n" + "\n".join(rows) + "\n")
    keys = tiny_run(tiny_bert_dir, tmp_path, task="tsv", train_file=str(tmp_path / "scores.tsv"), max_steps=3)
    keys |= {"eval_file": str(tmp_path / "scores.tsv"), "problem_type": "regression"}
    run = train(build_config(keys))
    metrics = json.loads((run / "metrics.json").read_text())["task_metrics"]
    assert set(metrics) == {"eval_loss", "pearson", "spearman"}
    assert all(-1.0 <= metrics[name] <= 1.0 for name in ("pearson", "spearman"))
    config = json.loads((run / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS"
    recorded, measured = evaluate_run(run)
    assert measured["pearson"] == pytest.approx(recorded["pearson"], abs=1e-6)
    with pytest.raises(ValueError, match="regression needs numeric labels"):
        train(build_config(tiny_run(tiny_bert_dir, tmp_path, problem_type="regression")))  # SST-2 has classes
    (tmp_path / "words.tsv").write_text("text\tlabel\na film\tgood\n")
    bad = keys | {"train_file": str(tmp_path / "words.tsv"), "eval_file": str(tmp_path / "words.tsv")}
    with pytest.raises(ValueError, match="label 'good' is not a number"):
        train(build_config(bad | {"name": "bad"}))
