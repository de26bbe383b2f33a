"""`sparselora export --merge`: a plain transformers model that pipeline() loads and that scores as the run did."""

import json

import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification, pipeline

from sparselora.cli import main
from sparselora.config import build_config
from sparselora.export import CannotMergeError, merge_run
from sparselora.training.inputs import load_inputs
from sparselora.training.loop import run_evaluation, train
from tests.helpers import tiny_run


@pytest.mark.parametrize("method", ["lora", "dora", "adalora"])
def test_the_merged_model_reproduces_the_runs_metrics(method, tiny_bert_dir, data_env, tmp_path):
    keys = {"adalora": {"init_r": 4, "target_r": 2}}.get(method, {})
    run = train(build_config(tiny_run(tiny_bert_dir, tmp_path / "runs", method=method, max_steps=4, **keys)))
    assert main(["export", str(run), "--merge", str(tmp_path / "merged")]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert merged.config.id2label == {0: "negative", 1: "positive"}
    classify = pipeline("text-classification", model=str(tmp_path / "merged"))
    assert classify("a fine film")[0]["label"] in {"negative", "positive"}
    config = build_config(yaml.safe_load((run / "config.yaml").read_text()))
    measured = run_evaluation(merged, load_inputs(config)).metrics
    recorded = json.loads((run / "metrics.json").read_text())["task_metrics"]
    for key, value in recorded.items():
        assert measured[key] == pytest.approx(value, abs=1e-5), key


def test_export_refuses_what_it_cannot_merge_and_replaces_nothing(tiny_bert_dir, data_env, tmp_path):
    qlora = train(build_config(tiny_run(tiny_bert_dir, tmp_path / "runs", method="qlora", max_steps=1, name="q")))
    with pytest.raises(CannotMergeError, match="4-bit NF4"):
        merge_run(qlora, tmp_path / "out")
    full = train(build_config(tiny_run(tiny_bert_dir, tmp_path / "runs", method="full", max_steps=1, name="f")))
    with pytest.raises(CannotMergeError, match="fully fine-tuned"):
        merge_run(full, tmp_path / "out")
    lora = train(build_config(tiny_run(tiny_bert_dir, tmp_path / "runs", max_steps=1, name="l")))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    assert main(["export", str(lora), "--merge", str(tmp_path / "taken")]) == 2
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "out").exists()


def test_export_never_touches_a_users_folder_beside_its_output(tiny_bert_dir, data_env, tmp_path):
    run = train(build_config(tiny_run(tiny_bert_dir, tmp_path / "runs", max_steps=1)))
    mine = tmp_path / "merged.partial"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["export", str(run), "--merge", str(tmp_path / "merged")]) == 0
    assert (mine / "notes.txt").read_text() == "keep" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert (tmp_path / "merged" / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".staging")]


def test_export_casts_writes_a_card_and_reads_no_dataset(tiny_bert_dir, data_env, tmp_path, monkeypatch):
    from huggingface_hub import ModelCard

    run = train(build_config(tiny_run(tiny_bert_dir, tmp_path / "runs", max_steps=2)))
    monkeypatch.setenv("SPARSELORA_DATA_DIR", str(tmp_path / "no-data-here"))  # a dataset load would fail
    assert main(["export", str(run), "--merge", str(tmp_path / "merged"), "--dtype", "bf16"]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert merged.config.dtype == torch.bfloat16
    card = ModelCard.load(tmp_path / "merged" / "README.md")
    assert card.data.library_name == "transformers" and "merged" in card.data.tags
    assert "accuracy" in card.content and "saved in bf16" in card.content
    assert main(["export", str(run), "--merge", str(tmp_path / "other"), "--dtype", "int3"]) == 2
    assert not (tmp_path / "other").exists()
