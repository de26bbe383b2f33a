"""The interleaved step-time pass: every method on the same batches in one process, its schedule followed."""

import json

import pytest
import torch
from pydantic import ValidationError

from sparselora.compare import runner, timing
from sparselora.compare.plan import CompareConfig, TimingConfig
from sparselora.config import ConfigError, build_config
from sparselora.report.comparison import build_report
from tests.helpers import tiny_comparison

METHODS = {
    "lora": {},
    "lora_l1": {"l1_lambda": 50.0},
    "sparselora": {"ffn_sparsity": 0.5, "svd_rank": 4, "sparse_warmup_ratio": 0.5},
}


def _comparison(model_dir, out, methods=METHODS, **timing_keys) -> CompareConfig:
    timing_config = TimingConfig(rounds=4, warmup=2, **timing_keys)
    return tiny_comparison(model_dir, out, methods=methods, seeds=(0,), max_steps=4, timing=timing_config)


def test_rounds_follow_each_run_schedule_in_rotating_order(tiny_bert_dir, data_env, tmp_path, monkeypatch):
    config = _comparison(tiny_bert_dir, tmp_path)
    configs = {label: build_config(runner.Cell(label, "sst2", 0).run_keys(config)) for label in METHODS}
    calls, contenders = [], {}
    real_step = timing.timed_step

    def recorded(contender, step):
        calls.append((contender.label, step))
        contenders[contender.label] = contender
        return real_step(contender, step)

    monkeypatch.setattr(timing, "timed_step", recorded)
    times = timing.interleaved_step_times(configs, rounds=4, warmup=2, progress=False)

    assert {label: len(values) for label, values in times.items()} == {"lora": 4, "lora_l1": 4, "sparselora": 4}
    assert all(value > 0 for values in times.values() for value in values)
    # warm-up rounds are the run's first steps; round r of 4 stands for step (r + 1/2) * 4/4 of the 4-step run
    assert [step for label, step in calls if label == "lora"] == [0, 1, 0, 1, 2, 3]
    firsts = [calls[3 * r][0] for r in range(6)]
    assert firsts == ["lora", "lora_l1", "sparselora", "lora", "lora_l1", "sparselora"]
    # the methods' callbacks ran: L1's proximal step made zeros, SparseLoRA's schedule reached its sparse half
    l1_weights = [p for n, p in contenders["lora_l1"].model.named_parameters() if "lora_" in n]
    assert any(bool((w == 0).any()) for w in l1_weights)
    engine = next(cb.engine for cb in contenders["sparselora"].callbacks if hasattr(cb, "engine"))
    assert engine.step == 3 and engine.sparse_from_step == 2 and not engine.calibrating


def test_same_batches_for_every_method(tiny_bert_dir, data_env, tmp_path):
    config = _comparison(tiny_bert_dir, tmp_path)
    with torch.no_grad():
        built = [
            timing.build_contender(label, build_config(runner.Cell(label, "sst2", 0).run_keys(config)), tmp_path)
            for label in ("lora", "sparselora")
        ]
        first = [next(c.batches)["input_ids"] for c in built]
    assert torch.equal(first[0], first[1])


def test_pass_runs_once_after_every_cell_and_fills_the_table(tiny_bert_dir, data_env, tmp_path):
    config = _comparison(tiny_bert_dir, tmp_path, methods={"lora": {}, "lora_l1": {"l1_lambda": 1.0}})
    assert timing.time_comparison(config, progress=False) == []  # no cell has run: nothing measured yet
    with pytest.raises(ConfigError, match="nothing to time"):
        timing.time_comparison(config, retime=True, progress=False)
    runner.run_comparison(config, progress=False)
    [path] = timing.time_comparison(config, progress=False)
    written = json.loads(path.read_text())
    assert set(written["methods"]) == {"lora", "lora_l1"} and written["methods"]["lora"]["median_ratio"] == 1.0
    assert len(written["methods"]["lora_l1"]["times_ms"]) == 4
    assert timing.time_comparison(config, progress=False) == []  # measured: kept
    assert timing.time_comparison(config, retime=True, progress=False) == [path]
    written = json.loads(path.read_text())

    build_report(tmp_path)
    table = (tmp_path / "sst2" / "results.md").read_text()
    assert "ms/step (interleaved)" in table and "Train time (s)" in table
    assert "time/step (interleaved) ×" in table
    summary = json.loads((tmp_path / "sst2" / "results.json").read_text())
    assert summary[1]["ms_per_step_interleaved_mean"] == pytest.approx(written["methods"]["lora_l1"]["median_ms"])


def test_timing_keys_are_checked():
    with pytest.raises(ValidationError, match="rounds"):
        CompareConfig(methods={"lora": {}}, timing={"rounds": 1})
    with pytest.raises(ValidationError, match="extra"):
        CompareConfig(methods={"lora": {}}, timing={"round": 10})
