"""The gradient-fidelity benchmark: keeping every channel is exact; skipping channels is not."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, tiny_run


def _run(tmp_path, config: dict, points: list[str]) -> tuple[subprocess.CompletedProcess, Path]:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "gradients.json"
    command = [sys.executable, str(REPO / "benchmarks" / "sparselora_gradients.py"), "--config", str(path)]
    command += [arg for point in points for arg in ("--point", point)]
    command += ["--batches", "2", "--warm-steps", "2", "--out", str(out)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False), out


def test_gradient_fidelity_is_one_with_every_channel_and_below_with_fewer(tiny_bert_dir, data_env, tmp_path):
    config = tiny_run(tiny_bert_dir, tmp_path, method="sparselora", target_modules=["query", "value", "dense"])
    completed, out = _run(tmp_path, config, ["contribution:1e-9:0", "contribution:0.75:0", "random:0.75:0.5"])
    assert completed.returncode == 0, completed.stderr[-2000:]
    points = json.loads(out.read_text())["points"]
    assert points[0]["cosine"] == pytest.approx(1.0, abs=1e-5) and points[0]["relative_error"] < 1e-4
    assert points[1]["cosine"] < 1.0 and points[2]["relative_error"] > 0
    assert set(points[1]["layer_cosine"]) == {"0", "1"} and points[1]["layer_cosine"]["0"] < 1.0
    assert out.with_suffix(".png").is_file()
    assert "| contribution | 0.75 | zero | kept |" in completed.stdout


def test_the_layer_map_holds_and_a_point_sets_its_residual_rank(tiny_bert_dir, data_env, tmp_path):
    """Every FFN dense by the config's map: skipping 75% elsewhere changes nothing; rank 0 and 4 both run."""
    dense_map = {"layers.0.mlp": 0.0, "layers.1.mlp": 0.0}
    config = tiny_run(tiny_bert_dir, tmp_path, method="sparselora", target_modules=["query", "value"])
    completed, out = _run(tmp_path, config | {"layer_sparsity": dense_map}, ["gradient:0.75:0", "gradient:0.75:0:4"])
    assert completed.returncode == 0, completed.stderr[-2000:]
    points = json.loads(out.read_text())["points"]
    assert [p["residual_rank"] for p in points] == [0, 4]
    assert all(p["cosine"] == pytest.approx(1.0, abs=1e-5) and p["layer_sparsity"] == dense_map for p in points)
    assert "| gradient | 0.75 | rank 4 | kept |" in completed.stdout

    completed, _ = _run(tmp_path, config, ["gradient:0.75:0", "gradient:0.75:0:4"])
    points = json.loads(out.read_text())["points"]
    assert completed.returncode == 0 and points[1]["cosine"] != points[0]["cosine"]  # the rank took effect


def test_a_malformed_point_names_the_expected_form(tiny_bert_dir, data_env, tmp_path):
    config = tiny_run(tiny_bert_dir, tmp_path, method="sparselora", target_modules=["query", "value"])
    completed, out = _run(tmp_path, config, ["gradient:0.75"])
    assert completed.returncode == 2 and "rule:ffn_sparsity:attn_sparsity[:residual_rank]" in completed.stderr
    assert not out.exists()
