"""Uploading a run to the Hub: offline (as here), a clear error and the run folder exactly as it was."""

import hashlib

import yaml

from sparselora.cli import main
from sparselora.config import build_config
from tests.helpers import tiny_run


def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_upload_without_the_hub_fails_clearly_and_keeps_the_run(
    tiny_bert_dir, data_env, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    keys = tiny_run(tiny_bert_dir, tmp_path / "runs", max_steps=1, name="run", hub_model_id="someone/sst2-lora")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(keys))
    assert main(["train", str(config)]) == 2
    error = capsys.readouterr().err
    assert "could not upload" in error and "run folder is complete and unchanged" in error
    run = tmp_path / "runs" / "run"
    assert (run / "metrics.json").is_file() and (run / "adapter_model.safetensors").is_file()
    before = _digest(run)
    assert main(["push", str(run), "someone/sst2-lora"]) == 2
    assert "sparselora push" in capsys.readouterr().err
    assert _digest(run) == before
    assert build_config(keys).hub_model_id == "someone/sst2-lora"
