"""sparselora compare: cells as run folders, resume after a kill, failed cells recorded, reports rebuilt."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from sparselora.cli import app
from sparselora.compare import plan as plan_module
from sparselora.compare import runner
from sparselora.compare.plan import CompareConfig, parse_only, plan_cells, with_flags
from sparselora.config import ConfigError
from sparselora.report.comparison import NotAResultsFolderError, build_report
from tests.helpers import tiny_comparison


def test_cells_and_only_filter(tmp_path):
    config = tiny_comparison("m", tmp_path)
    assert len(plan_cells(config)) == 6
    only = plan_cells(config, parse_only("method=lora_l1,seed=2"))
    assert [c.run_name for c in only] == ["sst2__lora_l1__s2"]
    with pytest.raises(ConfigError, match="matches no cell"):
        plan_cells(config, {"method": "dora"})
    with pytest.raises(ConfigError, match="--only"):
        parse_only("lr=3")


def test_command_line_flags_beat_the_config_and_reach_every_cell(tmp_path):
    config = tiny_comparison("m", tmp_path)
    config.shared["data_dir"] = "/from/config"
    config = with_flags(config, ["lora_r=16"], tmp_path / "elsewhere", "3,4", tmp_path / "flag-data")
    cells = plan_cells(config)
    assert {c.seed for c in cells} == {3, 4} and config.output_dir == tmp_path / "elsewhere"
    assert all(c.run_config(config).data_dir == tmp_path / "flag-data" for c in cells)
    assert all(c.run_config(config).option("lora_r") == 16 for c in cells)


def test_reference_must_be_a_method(tmp_path):
    with pytest.raises(ValueError, match="reference"):
        CompareConfig(output_dir=tmp_path, reference="full", methods={"lora": {}})


def test_interrupted_comparison_finishes_only_the_missing_cells(tiny_bert_dir, data_env, tmp_path, monkeypatch):
    config = tiny_comparison(tiny_bert_dir, tmp_path, seeds=(0, 1))
    real_run_cell = runner.run_cell
    trained = []

    def killed_at_third(config, cell):
        if len(trained) == 2:
            # a kill mid-cell: a partial folder is left behind and the process dies
            (plan_module.runs_dir(config) / f".{cell.run_name}.partial").mkdir(parents=True)
            raise KeyboardInterrupt
        trained.append(cell.run_name)
        real_run_cell(config, cell)

    monkeypatch.setattr(runner, "run_cell", killed_at_third)
    with pytest.raises(KeyboardInterrupt):
        runner.run_comparison(config, progress=False)
    first = list(trained)
    assert len(first) == 2

    monkeypatch.setattr(runner, "run_cell", lambda c, cell: (trained.append(cell.run_name), real_run_cell(c, cell)))
    status = runner.run_comparison(config, progress=False)
    assert [c.run_name for c in status.skipped] == first
    assert len(status.finished) == 2 and set(trained[2:]).isdisjoint(first)
    assert all((tmp_path / "runs" / c.run_name / "metrics.json").is_file() for c in plan_cells(config))


def test_failed_cells_are_recorded_and_the_rest_run(tiny_bert_dir, data_env, tmp_path):
    methods = {
        "lora": {},
        "typo": {"method": "lora", "lora_rank": 4},  # bad key
        "diverges": {"method": "full", "learning_rate": 1.0e30, "logging_steps": 1},  # NaN loss
    }
    config = tiny_comparison(tiny_bert_dir, tmp_path, methods=methods, seeds=(0,))
    status = runner.run_comparison(config, progress=False)
    assert [c.label for c in status.finished] == ["lora"]
    assert sorted(c.label for c in status.failed) == ["diverges", "typo"]
    assert "lora_rank" in json.loads((tmp_path / "failed" / "sst2__typo__s0.json").read_text())["error"]
    diverged = json.loads((tmp_path / "failed" / "sst2__diverges__s0.json").read_text())["error"]
    assert diverged.startswith("TrainingDivergedError: training loss became nan")
    assert (tmp_path / "logs" / "sst2__diverges__s0.log").is_file()  # the whole output is kept
    assert not (tmp_path / "runs" / "sst2__diverges__s0").exists()
    build_report(tmp_path)
    table = (tmp_path / "sst2" / "results.md").read_text()
    assert "| typo | 0 (1 failed) | failed: ConfigError" in table


def test_report_tables_statistics_plots_and_validation(tiny_bert_dir, data_env, tmp_path):
    targets = [{"metric": "accuracy", "min_ratio": 0.5}, {"metric": "trainable_params", "max_ratio": 0.5}]
    config = tiny_comparison(tiny_bert_dir, tmp_path, targets=targets)
    runner.run_comparison(config, progress=False)
    written = build_report(tmp_path)
    results = tmp_path / "sst2"
    for name in ("results.md", "results.csv", "results.json", "plots/quality_vs_time.png", "plots/loss_curves.svg"):
        assert (results / name).is_file(), name
    assert all(path.is_file() for path in written)
    summary = json.loads((results / "results.json").read_text())
    lora = next(row for row in summary if row["label"] == "lora")
    per_seed = [json.loads((tmp_path / "runs" / f"sst2__lora__s{s}" / "metrics.json").read_text()) for s in range(3)]
    accuracies = [m["task_metrics"]["accuracy"] for m in per_seed]
    assert lora["accuracy_mean"] == pytest.approx(sum(accuracies) / 3)  # computed from the runs
    assert lora["flops_per_token_mean"] > 0
    markdown = (results / "results.md").read_text()
    assert "paired t-test over 3 seeds" in markdown and " ± " in markdown and "**" in markdown
    validation = (tmp_path / "validation.md").read_text()
    # lora_l1 trains the same parameters as lora: ratio 1.0 > 0.5 → FAIL, computed not assumed
    assert "| lora_l1 | trainable_params / lora | 1.000 | ≤ 0.5 | FAIL |" in validation


def test_cli_compare_then_report(tiny_bert_dir, data_env, tmp_path):
    config = tiny_comparison(tiny_bert_dir, tmp_path / "out", methods={"lora": {}}, seeds=(0,))
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    result = CliRunner().invoke(app, ["compare", str(path)])
    assert result.exit_code == 0, result.output
    assert "1 cell(s) trained" in result.output
    again = CliRunner().invoke(app, ["compare", str(path)])
    assert "0 cell(s) trained, 1 already finished" in again.output
    report = CliRunner().invoke(app, ["report", str(tmp_path / "out")])
    assert report.exit_code == 0 and "validation.md" in report.output


def test_changed_settings_are_not_mixed_into_a_resumedtiny_comparison(tiny_bert_dir, data_env, tmp_path):
    config = tiny_comparison(tiny_bert_dir, tmp_path, methods={"lora": {}}, seeds=(0,))
    runner.run_comparison(config, progress=False)
    changed = config.model_copy(update={"methods": {"lora": {"learning_rate": 0.01}}})
    with pytest.raises(runner.StaleCellError, match=r"learning_rate 0\.001 → 0\.01"):
        runner.run_comparison(changed, progress=False)
    assert runner.run_comparison(config, progress=False).skipped  # unchanged config: resumes as before


def test_a_key_made_invalid_after_a_cell_finished_is_refused(tiny_bert_dir, data_env, tmp_path):
    config = tiny_comparison(tiny_bert_dir, tmp_path, methods={"lora": {}}, seeds=(0,))
    runner.run_comparison(config, progress=False)
    compare_yaml = (tmp_path / "compare.yaml").read_text()
    typo = config.model_copy(update={"methods": {"lora": {"lora_rank": 4}}})
    with pytest.raises(ConfigError, match=r"sst2__lora__s0.*lora_rank"):
        runner.run_comparison(typo, progress=False)
    assert (tmp_path / "compare.yaml").read_text() == compare_yaml  # a refused run changes nothing


def test_report_on_a_folder_without_atiny_comparison(tmp_path):
    with pytest.raises(NotAResultsFolderError, match=r"compare\.yaml"):
        build_report(tmp_path)
