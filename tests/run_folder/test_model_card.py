"""The model card reads every method-specific line from the method's MethodSpec."""

import json

import yaml

from sparselora.methods import get_method
from sparselora.methods.lora import LORA_CITATION
from sparselora.run_folder.model_card import _adapter_section


def test_a_methods_card_rows_replace_loras(tmp_path):
    adapter = {"peft_type": "ADALORA", "r": 8, "init_r": 12, "target_r": 4, "lora_alpha": 16, "lora_dropout": 0.1}
    (tmp_path / "adapter_config.json").write_text(json.dumps(adapter | {"target_modules": ["query"]}))
    lines = _adapter_section(tmp_path, get_method("adalora"))
    assert "| Rank r | 12 at start → 4 on average (budget reallocated) |" in lines
    assert "| Rank r | 8 |" in _adapter_section(tmp_path, get_method("lora"))


def test_the_card_cites_the_methods_papers_and_parses(tiny_bert_dir, data_env, tmp_path):
    from sparselora.config import build_config
    from sparselora.training.loop import train
    from tests.helpers import tiny_run

    run = train(build_config(tiny_run(tiny_bert_dir, tmp_path, method="dora", max_steps=1)))
    card = (run / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "peft" and "dora" in front["tags"]
    citations = card.split("## Citation")[1]
    assert LORA_CITATION in citations and "DoRA: Weight-Decomposed Low-Rank Adaptation" in citations
    assert "| 0 | negative |" in card and "| 1 | positive |" in card  # SST-2's class names


def test_the_hub_reads_the_cards_metadata_and_results(tiny_bert_dir, data_env, tmp_path):
    from huggingface_hub import ModelCard

    from sparselora.config import build_config
    from sparselora.training.loop import train
    from tests.helpers import tiny_run

    run = train(build_config(tiny_run(tiny_bert_dir, tmp_path, max_steps=1)))
    card = ModelCard.load(run / "README.md")
    metrics = json.loads((run / "metrics.json").read_text())["task_metrics"]
    # a local folder with no Hub origin gets no base_model (the Hub rejects a path)
    assert card.data.base_model is None and card.data.library_name == "peft"
    text = (run / "README.md").read_text()
    assert "Epochs 0.25 (1 steps)" in text  # as trained: 1 step of 4 per epoch, not the configured 1
    assert "the first 48 examples only (max_eval_samples)" in text
    assert card.data.datasets == ["nyu-mll/glue"] and card.data.pipeline_tag == "text-classification"
    results = {result.metric_type: result for result in card.data.eval_results}
    assert set(results) == {"accuracy", "f1", "loss"}
    assert results["accuracy"].metric_value == metrics["accuracy"]
    assert results["accuracy"].dataset_config == "sst2" and results["accuracy"].dataset_split == "validation"


def test_the_base_models_licence_comes_from_its_card():
    from sparselora.models import resolve_model
    from sparselora.run_folder.model_card import base_card_metadata

    assert base_card_metadata(resolve_model("minilm")) == {"license": "apache-2.0", "language": "en"}


def test_a_file_task_names_no_hub_dataset(tiny_bert_dir, tmp_path):
    from huggingface_hub import ModelCard

    from sparselora.config import build_config
    from sparselora.training.loop import train
    from tests.helpers import tiny_run

    rows = "".join(f"{text}\t{label}\n" for text, label in [("good film", 1), ("bad film", 0)] * 8)
    (tmp_path / "train.tsv").write_text("text\tlabel\n" + rows)
    keys = tiny_run(tiny_bert_dir, tmp_path, task="tsv", train_file=str(tmp_path / "train.tsv"), max_steps=1)
    run = train(build_config(keys | {"eval_file": str(tmp_path / "train.tsv")}))
    card = ModelCard.load(run / "README.md")
    assert card.data.datasets is None and "custom" not in card.content
    assert card.data.eval_results[0].dataset_split == "train.tsv"  # the evaluation file, by name


def test_the_base_model_is_a_hub_id_or_nothing(tmp_path):
    from sparselora.models import ModelSource
    from sparselora.run_folder.model_card import card_base_model

    folder = tmp_path / "copied"
    folder.mkdir()
    assert card_base_model(ModelSource(name="minilm", path="anything")) == "sentence-transformers/all-MiniLM-L6-v2"
    assert card_base_model(ModelSource(name="org/model", path="org/model")) == "org/model"
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "Qwen/Qwen2.5-0.5B"}))
    assert card_base_model(ModelSource(name=str(folder), path=str(folder))) == "Qwen/Qwen2.5-0.5B"
    (folder / "config.json").write_text(json.dumps({"_name_or_path": str(folder)}))
    assert card_base_model(ModelSource(name=str(folder), path=str(folder))) is None
