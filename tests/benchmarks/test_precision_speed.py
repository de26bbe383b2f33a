"""The precision benchmark runs end to end (on a tiny model: the numbers themselves are not checked)."""

import json
import subprocess
import sys

import yaml

from tests.helpers import REPO, tiny_run


def test_precision_benchmark_writes_both_step_times(tiny_bert_dir, data_env, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_run(tiny_bert_dir, tmp_path)))
    out = tmp_path / "precision.json"
    script = str(REPO / "benchmarks" / "precision_speed.py")
    command = [sys.executable, script, "--config", str(path), "--warmup", "1", "--steps", "4", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["median_step_ms"]) == {"fp32", "bf16"} and result["bf16_over_fp32"] > 0
    assert result["timed_steps"] == 4 and result["device"] == "cpu"
