"""The gradient-fidelity benchmark: keeping every channel is exact; skipping channels is not."""

import json
import subprocess
import sys

import pytest
import yaml

from tests.helpers import REPO, tiny_run


def test_gradient_fidelity_is_one_with_every_channel_and_below_with_fewer(tiny_bert_dir, data_env, tmp_path):
    config = tiny_run(tiny_bert_dir, tmp_path, method="sparselora", target_modules=["query", "value", "dense"])
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "gradients.json"
    command = [sys.executable, str(REPO / "benchmarks" / "sparselora_gradients.py"), "--config", str(path)]
    command += ["--point", "contribution:1e-9:0", "--point", "contribution:0.75:0", "--point", "random:0.75:0.5"]
    command += ["--batches", "2", "--warm-steps", "2", "--out", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    points = json.loads(out.read_text())["points"]
    assert points[0]["cosine"] == pytest.approx(1.0, abs=1e-5) and points[0]["relative_error"] < 1e-4
    assert points[1]["cosine"] < 1.0 and points[2]["relative_error"] > 0
    assert "| contribution | 0.75 | zero | kept |" in completed.stdout
