"""The bound benchmark and the token-rule benchmark run end to end on a tiny LLaMA (numbers not checked)."""

import json
import subprocess
import sys

import yaml

from tests.helpers import REPO, tiny_run


def _config(tiny_llama_dir, tmp_path, **keys):
    config = tiny_run(
        tiny_llama_dir, tmp_path, task="gsm8k", method="sparselora", max_length=96, batch_size=4,
        max_train_samples=16, max_eval_samples=4, svd_rank=4, svd_cache=str(tmp_path / "svd.st"),
        target_modules=["q_proj", "v_proj"], **keys,
    )  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=REPO)


def test_the_bound_benchmark_profiles_and_bounds_each_point(tiny_llama_dir, data_env, tmp_path):
    out = tmp_path / "bound.json"
    done = _run(
        str(REPO / "benchmarks" / "sparselora_backward_bound.py"), "--config", str(_config(tiny_llama_dir, tmp_path)),
        "--point", "ffn75=0.75:0", "--point", "ffn90_qkv=0.9:0.5", "--rounds", "3", "--warmup", "1",
        "--profile-steps", "1", "--rss-steps", "1", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["median_ms"]) == {"lora", "ffn75", "ffn90_qkv"}
    assert result["dense_lora_shares"]["ffn_input_grad_mm"] > 0
    points = result["points"]
    assert 0 < points["ffn90_qkv"]["bound_time_ratio"] < points["ffn75"]["bound_time_ratio"] < 1
    assert points["ffn75"]["block_bound_time_ratio"] <= points["ffn75"]["bound_time_ratio"]
    assert result["points"]["ffn75"]["ffn_kept_fraction"] == 0.25
    assert all(memory["peak_rss_mb"] > 0 for memory in result["memory"].values())
    assert "bound" in done.stdout


def test_the_token_rule_benchmark_measures_every_setting(tiny_llama_dir, data_env, tmp_path):
    out = tmp_path / "rule.json"
    config = _config(tiny_llama_dir, tmp_path, ffn_sparsity=0.5, attn_sparsity=0.5)
    done = _run(str(REPO / "benchmarks" / "sparselora_token_rule.py"), "--config", str(config), "--batches", "2",
                "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert len(result["rows"]) == 8 and result["dense_loss"] > 0
    assert all(row["loss"] > 0 for row in result["rows"])
