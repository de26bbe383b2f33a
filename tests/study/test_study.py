"""The SVD-vs-random study: every phase runs reduced, and its statistics come from its data."""

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from sparselora.cli import app
from sparselora.study.finetune import FinetunePlan, run_phase_c
from sparselora.study.report import write_report
from sparselora.study.stats import against_distribution, paired
from sparselora.study.synthetic import SyntheticPlan, column_budget, run_phase_a
from sparselora.study.weights import WeightsPlan, run_phase_b


def test_paired_statistics():
    rng = np.random.default_rng(0)
    a = rng.normal(size=40)
    better = paired(a - 1.0 + rng.normal(scale=0.1, size=40), a)
    assert better.mean_difference == pytest.approx(-1.0, abs=0.1) and better.wilcoxon_p < 1e-6
    assert better.ci95_low < better.mean_difference < better.ci95_high and better.effect_size < -5
    same = paired(a, a)
    assert same.t_p == 1.0 and same.effect_size == 0.0
    spread = against_distribution(3.0, rng.normal(size=30))
    assert spread["percentile"] == 1.0 and spread["t_p"] < 1e-6


def test_column_budget_matches_the_rank_k_storage():
    # rank 8 of 96x64 stores 8*(96+64)+8 = 1288 scalars; a kept column costs 96 values + 1 index
    assert column_budget(96, 64, 8) == 1288 // 97 == 13


@pytest.fixture(scope="module")
def phase_a(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    return out, run_phase_a(out, SyntheticPlan.quick(), progress=False)


def test_phase_a_planted_low_rank_svd_wins_and_flat_it_does_not(phase_a):
    out, stats = phase_a
    for name in ("results.csv", "stats.csv", "rank_k_comparison.png", "column_prune_comparison.png"):
        assert (out / "phase_a" / name).is_file()
    frob = stats[(stats["norm"] == "frobenius") & (stats["baseline"] == "random")]
    planted = frob[(frob["spectrum"] == "planted") & (frob["comparison"] == "rank_k")].iloc[0]
    assert planted["wilcoxon_p"] < 0.01 and planted["mean_difference"] < 0
    for comparison in ("rank_k", "columns"):
        flat = frob[(frob["spectrum"] == "flat") & (frob["comparison"] == comparison)].iloc[0]
        assert flat["wilcoxon_p"] > 0.01  # no direction matters more: SVD cannot beat chance
    # the statistics are computed from the rows written next to them
    results = pd.read_csv(out / "phase_a" / "results.csv")
    rows = results[(results["spectrum"] == "planted") & (results["comparison"] == "rank_k")]
    assert planted["mean_a"] == pytest.approx(rows[rows["method"] == "svd"]["frobenius"].mean())
    assert planted["n"] == 30


def test_phase_b_on_tiny_models(tiny_bert_dir, tiny_llama_dir, data_env, tmp_path):
    plan = WeightsPlan(models=(str(tiny_bert_dir), str(tiny_llama_dir)), analysis_batches=1, random_draws=5)
    stats = run_phase_b(tmp_path, plan, progress=False)
    folder = tmp_path / "phase_b"
    for name in ("reconstruction.csv", "predictor.csv", "stats.csv", "singular_values.png", "recall_per_layer.png"):
        assert (folder / name).is_file()
    predictor = pd.read_csv(folder / "predictor.csv")
    assert set(predictor["selector"]) == {"svd", "random", "input_magnitude", "oracle"}
    assert (predictor[predictor["selector"] == "oracle"]["recall"] == 1.0).all()
    assert predictor["output_error"].between(0, 2).all()
    reconstruction = pd.read_csv(folder / "reconstruction.csv")
    errors = reconstruction.groupby("k")["relative_frobenius_error"].mean()
    assert errors.is_monotonic_decreasing  # more rank, less error
    assert len(stats) == 2 * 2 * 2 * 2  # models × outlier settings × baselines × measures


def test_phase_c_and_report_on_a_tiny_model(tiny_bert_dir, data_env, tmp_path):
    stats = run_phase_c(tmp_path, FinetunePlan.quick(str(tiny_bert_dir)), progress=False)
    folder = tmp_path / "phase_c"
    results = pd.read_csv(folder / "results.csv")
    assert {"svd", "magnitude", "random", "none"} == set(results["importance"])
    assert results[results["recovered"]]["recovery_ms_per_step"].gt(0).all()
    random = results[(results["importance"] == "random") & ~results["recovered"] & (results["structure"] == "rank")]
    svd_row = stats[(stats["importance"] == "svd") & (stats["measure"] == "accuracy") & (stats["structure"] == "rank")]
    assert svd_row[~svd_row["recovered"]]["random_mean"].iloc[0] == pytest.approx(random["accuracy"].mean())
    report = write_report(tmp_path).read_text()
    assert "### Phase C" in report and "## Limitations" in report


def test_cli_quick_phase_a_writes_the_report(tmp_path):
    result = CliRunner().invoke(app, ["study", "svd-vs-random", "--phase", "a", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "report.md").read_text()
    assert "### Phase A" in report and "rank_k_comparison.png" in report and "Phase A, rank-k vs random" in report
    assert CliRunner().invoke(app, ["study", "svd-vs-random", "--phase", "d", "--out", str(tmp_path)]).exit_code == 2
