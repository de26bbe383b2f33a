"""LayerLens: layer scores from calibration batches, ranks under a parameter budget."""

import json

import pytest

from sparselora.config import build_config
from sparselora.evaluation.rerun import evaluate_run
from sparselora.methods.layerlens import BudgetTooSmallError, LayerScores, allocate_ranks
from sparselora.training.loop import train
from tests.helpers import tiny_run


def test_allocation_takes_the_best_layers_first_and_respects_the_budget():
    scores = LayerScores(scores=[0.1, 5.0, 2.0, 0.5], cost_per_rank=[100, 100, 100, 100])
    ranks = allocate_ranks(scores, budget=1_400, max_rank=8, min_rank=2)
    assert ranks == {1: 8, 2: 6}
    assert sum(rank * 100 for rank in ranks.values()) <= 1_400


def test_allocation_stops_below_the_minimum_rank():
    scores = LayerScores(scores=[3.0, 2.0, 1.0], cost_per_rank=[100, 100, 100])
    assert allocate_ranks(scores, budget=900, max_rank=8, min_rank=2) == {0: 8}


def test_budget_too_small_for_one_layer_is_refused():
    scores = LayerScores(scores=[1.0, 2.0], cost_per_rank=[1_000, 1_000])
    with pytest.raises(BudgetTooSmallError, match="trainable_budget"):
        allocate_ranks(scores, budget=1_500, max_rank=8, min_rank=2)


def test_layerlens_run_adapts_only_the_chosen_layers(tiny_bert_dir, data_env, tmp_path):
    # tiny BERT: ~1M params, q+v of a layer cost 4*32 = 128 params per rank; budget 0.05% ≈ 520 → 1 layer r=4
    config = tiny_run(tiny_bert_dir, tmp_path, method="layerlens", trainable_budget=0.0005, lora_r=4, max_steps=2)
    run = train(build_config(config))
    report = json.loads((run / "metrics.json").read_text())["method"]
    assert len(report["scores"]) == 2 and all(score > 0 for score in report["scores"])
    assert report["adapter_params"] <= report["budget_params"]
    chosen = {int(layer) for layer in report["ranks"]}
    adapter = json.loads((run / "adapter_config.json").read_text())
    assert {int(name.split("layer.")[1].split(".")[0]) for name in adapter["target_modules"]} == chosen
    assert (run / "layer_scores.png").is_file() and (run / "layer_scores.json").is_file()
    recorded, measured = evaluate_run(run)
    assert measured["eval_loss"] == pytest.approx(recorded["eval_loss"], abs=1e-6)


def test_layerlens_budget_too_small_in_a_run(tiny_bert_dir, data_env, tmp_path):
    config = tiny_run(tiny_bert_dir, tmp_path, method="layerlens", trainable_budget=1e-6, max_steps=1)
    with pytest.raises(BudgetTooSmallError, match="trainable_budget"):
        train(build_config(config))


def test_lens_command_prints_and_plots(tiny_bert_dir, data_env, tmp_path):
    from typer.testing import CliRunner

    from sparselora.cli import app

    args = ["lens", str(tiny_bert_dir), "sst2", "--set", "lens_batches=2", "--set", "trainable_budget=0.0005"]
    result = CliRunner().invoke(app, [*args, "--set", "lora_r=4", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "LayerLens" in result.output and (tmp_path / "layer_scores.png").is_file()
    small = CliRunner().invoke(app, [*args[:4], "--set", "trainable_budget=1e-7", "--out", str(tmp_path)])
    assert small.exit_code == 2 and "trainable_budget" in small.output
