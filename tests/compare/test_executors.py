"""Cells as jobs: submitit's local executor, a local Ray instance, and --plan's commands for any scheduler."""

import json
import shlex
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from sparselora.cli import app
from sparselora.compare.executors import run_submitit
from sparselora.compare.plan import plan_cells
from sparselora.compare.runner import cell_finished, prepare_comparison, run_comparison
from sparselora.report.comparison import build_report
from tests.helpers import tiny_comparison

# one cell that trains and one whose bad key fails it: both outcomes travel back from the job
METHODS = {"lora": {}, "broken": {"method": "lora", "lora_r": -1}}


def _assert_one_trained_one_failed(config):
    cells = {c.label: c for c in plan_cells(config)}
    assert cell_finished(config, cells["lora"]) and not cell_finished(config, cells["broken"])
    failure = json.loads((config.output_dir / "failed" / "sst2__broken__s0.json").read_text())
    assert "invalid config" in failure["error"]


def test_submitit_local_executor_runs_each_cell_as_a_job(tiny_bert_dir, data_env, tmp_path):
    config = tiny_comparison(tiny_bert_dir, tmp_path, methods=METHODS, seeds=(0,), executor="slurm")
    cells = prepare_comparison(config)
    outcomes = run_submitit(config, cells, progress=False, cluster="local")
    assert outcomes == ["finished", "failed"]
    _assert_one_trained_one_failed(config)
    assert any((tmp_path / "submitit").rglob("*_log.out"))  # submitit's own job logs


def test_slurm_without_a_cluster_is_a_clear_error(tiny_bert_dir, tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    config = tiny_comparison(tiny_bert_dir, tmp_path, methods={"lora": {}}, seeds=(0,), executor="slurm")
    result = CliRunner().invoke(app, ["compare", _write(config, tmp_path)])
    assert result.exit_code == 2 and "executor slurm" in result.output
    assert not (tmp_path / "runs").exists()


def test_ray_executor_on_a_local_instance(tiny_bert_dir, data_env, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        config = tiny_comparison(tiny_bert_dir, tmp_path, methods=METHODS, seeds=(0,), executor="ray")
        status = run_comparison(config, progress=False)
    finally:
        ray.shutdown()
    assert [c.label for c in status.finished] == ["lora"] and [c.label for c in status.failed] == ["broken"]
    _assert_one_trained_one_failed(config)
    assert "sst2" in build_report(tmp_path)[0].parts  # the report reads what the jobs wrote


def test_plan_prints_one_command_per_unfinished_cell(tiny_bert_dir, data_env, tmp_path):
    config = tiny_comparison(tiny_bert_dir, tmp_path / "out", methods={"lora": {}}, seeds=(0, 1))
    path = _write(config, tmp_path)
    result = CliRunner().invoke(app, ["compare", path, "--plan"])
    assert result.exit_code == 0, result.output
    commands = [line for line in result.stdout.splitlines() if line.startswith("sparselora train")]
    assert len(commands) == 2 and not (tmp_path / "out" / "runs").exists()  # nothing trained
    train = shlex.split(commands[0])[1:]
    subprocess.run([sys.executable, "-m", "sparselora.cli", *train], check=True, capture_output=True)
    again = CliRunner().invoke(app, ["compare", path, "--plan"])
    assert [line for line in again.stdout.splitlines() if line.startswith("sparselora train")] == commands[1:]


def test_unknown_executor_is_refused(tmp_path):
    config = tiny_comparison("m", tmp_path / "out", methods={"lora": {}}, seeds=(0,))
    result = CliRunner().invoke(app, ["compare", _write(config, tmp_path), "--executor", "mpi"])
    assert result.exit_code == 2 and "local, slurm, ray" in result.output


def _write(config, folder) -> str:
    path = folder / "compare.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return str(path)
