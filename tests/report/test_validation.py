import pandas as pd

from sparselora.compare.plan import CompareConfig
from sparselora.report.validation import validation_markdown


def test_targets_pass_fail_and_missing():
    config = CompareConfig(
        methods={"lora": {}, "full": {}, "fast": {}},
        reference="lora",
        targets=[
            {"metric": "accuracy", "min_ratio": 0.95},
            {"metric": "ms_per_step", "max_ratio": 0.5, "methods": ["fast"]},
        ],
    )
    summary = pd.DataFrame(
        [
            {"label": "lora", "accuracy_mean": 0.80, "ms_per_step_mean": 100.0},
            {"label": "full", "accuracy_mean": 0.82, "ms_per_step_mean": 150.0},
            {"label": "fast", "accuracy_mean": 0.70, "ms_per_step_mean": None},
        ]
    )
    text = validation_markdown("sst2", summary, config)
    assert "| full | accuracy / lora | 1.025 | ≥ 0.95 | PASS |" in text
    assert "| fast | accuracy / lora | 0.875 | ≥ 0.95 | FAIL |" in text
    assert "| fast | ms_per_step / lora | – | ≤ 0.5 | MISSING |" in text
    assert "1 of 3 checks pass." in text


def test_a_speed_column_from_a_busy_machine_gives_no_verdict():
    config = CompareConfig(
        methods={"lora": {}, "fast": {}},
        reference="lora",
        targets=[{"metric": "ms_per_step", "max_ratio": 0.8}, {"metric": "ms_per_step_interleaved", "max_ratio": 0.8}],
    )
    summary = pd.DataFrame(
        [
            {
                "label": "lora",
                "ms_per_step_mean": 2295.0,
                "ms_per_step_std": 2946.0,
                "ms_per_step_interleaved_mean": 100.0,
            },
            {"label": "fast", "ms_per_step_mean": 900.0, "ms_per_step_std": 50.0, "ms_per_step_interleaved_mean": 70.0},
        ]
    )
    text = validation_markdown("sst2", summary, config)
    assert "| fast | ms_per_step / lora | 0.392 | ≤ 0.8 | NOT MEASURED (spread) |" in text
    assert "| fast | ms_per_step_interleaved / lora | 0.700 | ≤ 0.8 | PASS |" in text
    assert "the cells shared the machine" in text
