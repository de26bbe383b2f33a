"""Comparison tables: aggregation, the best value in bold, and the paired test against scipy."""

import math

import pandas as pd
import pytest
from scipy import stats

from sparselora.report.results import aggregate, markdown_table, paired_test, summary_sentences

LORA = [0.85, 0.86, 0.84, 0.87]
SPARSE = [0.84, 0.84, 0.83, 0.86]


def _frame(extra_rows=()) -> pd.DataFrame:
    rows = [
        {"task": "sst2", "label": label, "method": label, "seed": seed, "status": "finished", "accuracy": value}
        | {"ms_per_step": 100.0 if label == "lora" else 80.0, "peak_mb": 1000.0, "trainable_params": 10.0}
        for label, values in (("lora", LORA), ("sparselora", SPARSE))
        for seed, value in enumerate(values)
    ]
    return pd.DataFrame([*rows, *extra_rows])


def test_paired_test_is_scipys_paired_t_test():
    test = paired_test(_frame(), "sparselora", "lora", "accuracy")
    expected = stats.ttest_rel(SPARSE, LORA)
    interval = expected.confidence_interval(confidence_level=0.95)
    assert test.n == 4 and test.mean_difference == pytest.approx(-0.0125)
    assert test.p_value == pytest.approx(expected.pvalue)
    assert test.ci95 == pytest.approx((interval.low, interval.high))


def test_fewer_than_three_paired_seeds_get_no_p_value():
    frame = _frame()
    frame = frame[frame["seed"] < 2]
    test = paired_test(frame, "sparselora", "lora", "accuracy")
    assert test.n == 2 and test.p_value is None and math.isnan(test.ci95[0])


def test_aggregate_and_table_mark_the_best_and_the_failures():
    failed = {"task": "sst2", "label": "broken", "seed": 0, "status": "failed", "error": "boom | bad"}
    frame = _frame([failed])
    summary = aggregate(frame, ["lora", "sparselora", "broken"])
    assert list(summary["label"]) == ["lora", "sparselora", "broken"]
    assert summary.loc[0, "accuracy_mean"] == pytest.approx(sum(LORA) / 4)
    text = markdown_table(summary)
    assert "**0.8550 ± 0.0129**" in text  # LoRA's accuracy is the best
    assert "**80 ± 0**" in text  # SparseLoRA's step time is the best
    assert "failed: boom / bad" in text
    sentences = " ".join(summary_sentences(frame, summary, "lora"))
    assert "accuracy -1.25 pt vs lora" in sentences and "time/step ×0.80" in sentences


def test_a_speed_column_with_a_huge_spread_is_marked_not_bolded():
    rows = [
        {"task": "sst2", "label": label, "method": label, "seed": seed, "status": "finished", "accuracy": 0.8}
        | {"ms_per_step": ms, "train_s": 10.0}
        for label, times in (("lora", [100.0, 110.0, 105.0]), ("busy", [300.0, 6000.0, 600.0]))
        for seed, ms in enumerate(times)
    ]
    text = markdown_table(aggregate(pd.DataFrame(rows), ["lora", "busy"]))
    assert "2,300 ± 3,208 ⚠" in text and "**105 ± 5**" in text
    assert "not a speed measurement" in text
    assert "Adapter zeros" not in text  # no column without values
