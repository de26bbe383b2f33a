import json
import os
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from sparselora.cli import app
from tests.helpers import tiny_run

runner = CliRunner()


def _yaml(tmp_path, config: dict):
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_then_eval_from_the_command_line(tiny_bert_dir, shared_data_dir, tmp_path):
    config = _yaml(tmp_path, tiny_run(tiny_bert_dir, tmp_path / "runs", name="cli"))
    result = runner.invoke(app, ["train", str(config), "--data-dir", str(shared_data_dir), "--set", "max_steps=2"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "median ms/step" in result.output
    run = tmp_path / "runs" / "cli"
    assert json.loads((run / "metrics.json").read_text())["train"]["steps"] == 2
    result = runner.invoke(app, ["eval", str(run), "--data-dir", str(shared_data_dir)])
    assert result.exit_code == 0, result.output
    assert "reproduced" in result.output


def test_bad_key_exits_2_with_the_key_named(tmp_path):
    config = _yaml(tmp_path, {"task": "sst2", "lora_rank": 8})
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2
    assert "lora_rank" in result.output and "lora_r" in result.output


def test_bad_override_value(tmp_path):
    result = runner.invoke(app, ["train", "--set", "learning_rate=-1"])
    assert result.exit_code == 2 and "learning_rate" in result.output


def test_eval_of_a_folder_that_is_not_a_run(tmp_path):
    result = runner.invoke(app, ["eval", str(tmp_path)])
    assert result.exit_code == 2 and "not a finished run folder" in result.output


def test_listing_commands():
    assert "lora" in runner.invoke(app, ["methods"]).output
    assert "gsm8k" in runner.invoke(app, ["tasks"]).output
    assert "learning_rate" in runner.invoke(app, ["config-keys"]).output


DDP_SPARSELORA = {"method": "sparselora", "ffn_sparsity": 0.5, "attn_sparsity": 0.5, "sparse_warmup_ratio": 0.0}


@pytest.mark.slow
@pytest.mark.parametrize("method_keys", [{}, DDP_SPARSELORA], ids=["lora", "sparselora"])
def test_accelerate_launch_two_cpu_processes(method_keys, tiny_bert_dir, shared_data_dir, tmp_path):
    """DDP on CPU (gloo): both processes train (SparseLoRA's engine in each), process 0 writes the run folder.

    `--cpu` would make accelerate run a single process; `--multi_gpu` selects its torchrun launcher.
    """
    keys = tiny_run(tiny_bert_dir, tmp_path / "runs", name="ddp", max_steps=3, progress=False, **method_keys)
    if method_keys:
        keys["svd_cache"] = str(tmp_path / "svd.safetensors")
    config = _yaml(tmp_path, keys)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--multi_gpu",  # accelerate's torchrun launcher; on a CPU-only machine the Trainer picks gloo
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "sparselora.cli",
        "train",
        str(config),
        "--data-dir",
        str(shared_data_dir),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs" / "ddp" / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == 2, done.stderr[-3000:]
    assert metrics["train"]["steps"] == 3
    if method_keys:
        assert metrics["method"]["ffn_kept_fraction"] == pytest.approx(0.5)


def test_svd_build_caches_and_reports(tiny_llama_dir, tmp_path):
    out = tmp_path / "factors.safetensors"
    first = runner.invoke(app, ["svd", "build", str(tiny_llama_dir), "--rank", "4", "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert "10 factor pairs" in first.output and "built in" in first.output and out.is_file()  # 2 x (up gate q k v)
    second = runner.invoke(app, ["svd", "build", str(tiny_llama_dir), "--rank", "4", "--out", str(out)])
    assert "loaded from cache" in second.output
    too_big = runner.invoke(app, ["svd", "build", str(tiny_llama_dir), "--rank", "64", "--out", str(tmp_path / "x.st")])
    assert too_big.exit_code == 2 and "between 1 and" in too_big.output


def _sparse_config(tmp_path, model_dir, **extra):
    return _yaml(
        tmp_path,
        tiny_run(
            model_dir,
            tmp_path / "runs",
            method="sparselora",
            ffn_sparsity=0.5,
            attn_sparsity=0.5,
            svd_rank=4,
            calibration_steps=1,
            svd_cache=str(tmp_path / "svd.safetensors"),
            **extra,
        ),
    )


def test_sparse_recall_prints_every_layer(tiny_llama_dir, data_env, tmp_path):
    result = runner.invoke(app, ["sparse", "recall", str(_sparse_config(tmp_path, tiny_llama_dir)), "--batches", "2"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if " ffn " in line or " attn." in line]
    assert len(rows) == 2 * 3  # 2 layers x (ffn, attn.qk, attn.v)


def test_calibrate_writes_a_layer_sparsity_map_meeting_the_target(tiny_bert_dir, data_env, tmp_path):
    import yaml

    out = tmp_path / "layers.yaml"
    result = runner.invoke(
        app,
        [
            "calibrate",
            str(_sparse_config(tmp_path, tiny_bert_dir)),
            "--target",
            "0.3",
            "--batches",
            "2",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    chosen = yaml.safe_load(out.read_text())["layer_sparsity"]
    assert set(chosen) == {"layers.0.mlp", "layers.1.mlp", "layers.0.attn", "layers.1.attn"}
    reduction = float(re.search(r"projections: ([0-9.]+)", result.output).group(1))
    assert reduction >= 0.3
    # the map is valid input for a sparselora run
    from sparselora.config import build_config

    build_config({"method": "sparselora", "layer_sparsity": chosen})


@pytest.mark.parametrize("model_fixture", ["tiny_bert_dir", "tiny_llama_dir"])
def test_calibrate_map_keeps_attention_the_config_left_dense(model_fixture, request, data_env, tmp_path):
    """Pasted over the config's layer_sparsity, the map must not turn layer 0's attention sparse.

    On a decoder too: its eval forwards must not ask sparse attention to fill a KV cache."""
    import yaml

    model_dir = request.getfixturevalue(model_fixture)
    config = _sparse_config(tmp_path, model_dir, layer_sparsity={"layers.0.attn": 0.0})
    out = tmp_path / "layers.yaml"
    result = runner.invoke(app, ["calibrate", str(config), "--target", "0.3", "--batches", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(out.read_text())["layer_sparsity"]["layers.0.attn"] == 0.0
