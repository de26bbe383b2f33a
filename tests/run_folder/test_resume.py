"""Checkpoints and resume: a SIGKILLed run continues to the same result; NaN keeps the last good checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sparselora.cli import main
from sparselora.config import build_config
from sparselora.files.locks import LockBusyError, exclusive_lock
from sparselora.run_folder.layout import RunFolderError, lock_path, partial_dir, write_status
from sparselora.run_folder.resume import last_checkpoint, truncate_log
from sparselora.run_folder.states import list_runs
from sparselora.training.loop import TrainingDivergedError, train
from tests.helpers import tiny_run


def _cli_train(config_path: Path, env: dict) -> subprocess.Popen:
    command = [sys.executable, "-m", "sparselora.cli", "train", str(config_path)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _write_config(folder: Path, keys: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(keys))
    return path


# Per case: what must survive the kill. Dropout needs the RNG state; SparseLoRA's schedule turns
# sparse at step 8, after the checkpoint at 6; lora_prune prunes at step 4 and holds that mask after;
# the exact-forward mode's random rule draws channels with its own generator.
SPARSE = {"method": "sparselora", "ffn_sparsity": 0.5, "attn_sparsity": 0.5, "sparse_warmup_ratio": 0.2}
KILLED_RUNS = {
    "lora": {"method": "lora", "lora_dropout": 0.1},
    "sparselora": {**SPARSE, "svd_rank": 4},
    "sparselora_backward": {**SPARSE, "sparse_pass": "backward", "backward_rule": "random", "lora_dropout": 0.1},
    "lora_prune": {"method": "lora_prune", "prune_ratio": 0.5, "recovery_steps": 36},
}


@pytest.mark.parametrize("case", list(KILLED_RUNS))
def test_a_sigkilled_run_resumes_to_the_uninterrupted_result(case, tiny_bert_dir, data_env, tmp_path):
    env = {**os.environ, "SPARSELORA_DATA_DIR": str(data_env)}
    # 10 epochs of 4 steps: the kill lands mid-epoch, so data position and RNG states must be restored
    keys = tiny_run(tiny_bert_dir, tmp_path / "killed", name="run", max_steps=40, save_steps=6, logging_steps=2)
    keys |= KILLED_RUNS[case]
    if case == "sparselora":
        keys["svd_cache"] = str(tmp_path / "svd.safetensors")

    reference_keys = {**keys, "output_dir": str(tmp_path / "reference")}
    reference = _cli_train(_write_config(tmp_path / "cfg-reference", reference_keys), env)  # runs alongside

    config_path = _write_config(tmp_path / "cfg-killed", keys)
    work = partial_dir(tmp_path / "killed" / "run")
    process = _cli_train(config_path, env)
    deadline = time.monotonic() + 300
    while last_checkpoint(work) is None:
        assert process.poll() is None, "the run ended before its first checkpoint: " + process.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert reference.wait(timeout=600) == 0, reference.stdout.read()
    assert not (tmp_path / "killed" / "run").exists()  # nothing that looks finished
    [entry] = list_runs(tmp_path / "killed")
    assert entry.state == "interrupted" and entry.checkpoint_step is not None

    resumed = _cli_train(config_path, env)  # the same command again
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output

    done, expected = tmp_path / "killed" / "run", tmp_path / "reference" / "run"
    metrics = json.loads((done / "metrics.json").read_text())
    reference_metrics = json.loads((expected / "metrics.json").read_text())
    assert metrics["train"]["resumed_from_step"] == entry.checkpoint_step
    assert metrics["train"]["steps"] == 40
    assert metrics["task_metrics"] == reference_metrics["task_metrics"]  # bit for bit on CPU
    weights, reference_weights = (load_file(d / "adapter_model.safetensors") for d in (done, expected))
    assert all(torch.equal(weights[k], reference_weights[k]) for k in reference_weights)
    logged = [json.loads(line)["step"] for line in (done / "train_log.jsonl").read_text().splitlines()]
    assert logged == list(range(2, 41, 2))  # the log reads as one run: no step twice, none missing


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_bert_dir, data_env, tmp_path, capsys):
    # step 1 trains on finite weights (saved); lr 1e30 makes them huge, so step 2's loss is not finite
    config = build_config(
        tiny_run(tiny_bert_dir, tmp_path, name="nan", learning_rate=1e30, max_steps=6, save_steps=1, logging_steps=1)
    )
    with pytest.raises(
        TrainingDivergedError, match=r"(non-finite|became nan|became inf).*last good checkpoint \(step 1\)"
    ) as err:
        train(config)
    work = partial_dir(tmp_path / "nan")
    checkpoint = last_checkpoint(work)
    assert checkpoint is not None and str(checkpoint) in str(err.value)
    weights = load_file(checkpoint / "adapter_model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    status = json.loads((work / "status.json").read_text())
    assert status["state"] == "failed" and "TrainingDivergedError" in status["error"]
    assert not (tmp_path / "nan").exists()
    assert main(["runs", str(tmp_path)]) == 0
    listing = " ".join(capsys.readouterr().out.split())
    assert "nan" in listing and "failed" in listing and "step 1" in listing


def test_resume_refuses_other_settings_and_missing_checkpoints(tiny_bert_dir, data_env, tmp_path):
    keys = tiny_run(tiny_bert_dir, tmp_path, name="r", max_steps=4, save_steps=2)
    with pytest.raises(RunFolderError, match="nothing to resume"):
        train(build_config(keys), resume=True)
    work = partial_dir(tmp_path / "r")
    (work / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (work / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    (work / "config.yaml").write_text(yaml.safe_dump(build_config(keys).to_flat_dict()))
    write_status(work, "running")  # as a killed run leaves it
    with pytest.raises(RunFolderError, match=r"other settings \(learning_rate: 0.001 there, 0.002 now\)"):
        train(build_config({**keys, "learning_rate": 2e-3}))
    assert (work / "checkpoints" / "checkpoint-2").is_dir()  # refusing changed nothing


def test_a_run_held_by_another_process_is_refused(tiny_bert_dir, data_env, tmp_path):
    config = build_config(tiny_run(tiny_bert_dir, tmp_path, name="busy", max_steps=2))
    with exclusive_lock(lock_path(tmp_path / "busy"), "test claim"), pytest.raises(LockBusyError, match="pid"):
        train(config)
    assert not partial_dir(tmp_path / "busy").exists()


def test_the_log_is_cut_back_to_the_checkpoint(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 2, "loss": 0.7}\n{"step": 4, "loss": 0.6}\n{"step": 6, "loss": 0.5}\n{"step": 8, "lo')
    truncate_log(log, 4)
    assert log.read_text() == '{"step": 2, "loss": 0.7}\n{"step": 4, "loss": 0.6}\n'


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_users_folder_with_the_partial_name_is_never_removed(overwrite, tiny_bert_dir, data_env, tmp_path):
    mine = tmp_path / "runs" / ".r.partial"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(RunFolderError, match="not an unfinished sparselora run"):
        train(build_config(tiny_run(tiny_bert_dir, tmp_path / "runs", name="r", max_steps=1)), overwrite=overwrite)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
