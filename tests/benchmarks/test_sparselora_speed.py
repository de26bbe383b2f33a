"""The speed benchmark runs end to end (on a tiny model: the numbers themselves are not checked)."""

import json
import subprocess
import sys

import pytest
import yaml

from tests.helpers import REPO, tiny_run


@pytest.mark.parametrize("mode", ["forward", "backward"])
def test_benchmark_writes_its_json(mode, tiny_llama_dir, data_env, tmp_path):
    config = tiny_run(
        tiny_llama_dir,
        tmp_path,
        task="wikitext2",
        method="sparselora",
        max_length=32,
        batch_size=4,
        ffn_sparsity=0.5,
        attn_sparsity=0.5,
        svd_rank=4,
        dense_output_tokens=False,
        svd_cache=str(tmp_path / "svd.st"),
        max_train_samples=16,
        max_eval_samples=4,
        sparse_pass=mode,
    )
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "bench.json"
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "sparselora_speed.py"),
        "--config",
        str(path),
        "--warmup",
        "1",
        "--steps",
        "2",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["median_step_ms"]) == {"lora", "sparselora"} and result["speedup"] > 0
    assert 0 < result["flops_ratio_sparse_over_dense"] < 1
    assert result["sparselora"]["attn_sparsity_per_layer"] == [0.5, 0.5]
    assert result["sparselora"]["sparse_pass"] == mode and result["estimator_share_of_step_median"] is not None
    assert "speedup" in done.stdout


def test_benchmark_times_a_random_llama_shape(tmp_path):
    """The GPU case (--llama SIZE) runs end to end on the tiny shape, with some layers sparse."""
    out = tmp_path / "llama.json"
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "sparselora_speed.py"),
        *("--llama", "tiny", "--seq-len", "32", "--batch-size", "2", "--warmup", "1", "--steps", "2"),
        *("--out", str(out)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["dtype"] == "bf16" and result["seq_len"] == 32
    if result["device"].startswith("cpu"):  # torch 2.11's CUDA FlopCounterMode cannot count GQA sdpa: null there
        assert 0 < result["flops_ratio_sparse_over_dense"] < 1
    assert result["sparselora"]["ffn_sparsity_per_layer"] == [0.0, 0.0, 0.75, 0.0]
    assert 0 < result["estimator_share_of_step_median"] < 1
