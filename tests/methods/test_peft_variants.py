"""QLoRA, HiRA and AdaLoRA: PEFT's implementations wired into runs that train, save and reload."""

import json
import re
import sys

import pytest

from sparselora.config import build_config
from sparselora.evaluation.rerun import evaluate_run
from sparselora.methods.hira import MissingHiraError, hira_config_class
from sparselora.methods.qlora import MissingBitsAndBytesError, QLoraOptions, quantization_kwargs
from sparselora.training.loop import train
from tests.helpers import tiny_run


def test_qlora_base_is_4bit_and_head_is_not(tiny_bert_dir, data_env, tmp_path):
    pytest.importorskip("bitsandbytes")
    run = train(build_config(tiny_run(tiny_bert_dir, tmp_path, method="qlora", max_steps=2)))
    report = json.loads((run / "metrics.json").read_text())["method"]
    assert report["quantized_linear_layers"] == 2 * 6  # q, k, v, o, up, down in each of 2 layers
    recorded, measured = evaluate_run(run)  # reloads the base in 4-bit, then the adapter
    assert measured["eval_loss"] == pytest.approx(recorded["eval_loss"], abs=1e-5)


def test_qlora_evaluates_with_the_kernel_it_trains_with(tiny_bert_dir, data_env, tmp_path):
    """bitsandbytes' CPU eval repack fails when in_features is not a multiple of 64 and computes in bf16."""
    bnb = pytest.importorskip("bitsandbytes")
    import torch

    from sparselora.training.inputs import load_inputs

    inputs = load_inputs(build_config(tiny_run(tiny_bert_dir, tmp_path, method="qlora")))
    model, _ = inputs.load_base_model()
    layer = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert layer.in_features % 64 != 0  # the shape the repack cannot handle
    x = torch.randn(3, layer.in_features, requires_grad=True)
    trained_path = layer(x)  # with a gradient: the kernel training uses
    model.eval()
    with torch.no_grad():
        evaluated = layer(x.detach())
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    torch.testing.assert_close(evaluated, trained_path.detach(), rtol=0, atol=0)


def test_qlora_without_bitsandbytes_says_how_to_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    with pytest.raises(MissingBitsAndBytesError, match=re.escape("pip install 'sparselora[qlora]'")):
        quantization_kwargs(QLoraOptions())


def test_hira_trains_and_reloads(tiny_bert_dir, data_env, tmp_path):
    run = train(build_config(tiny_run(tiny_bert_dir, tmp_path, method="hira", hira_r=4, max_steps=2)))
    assert json.loads((run / "adapter_config.json").read_text())["peft_type"] == "HIRA"
    recorded, measured = evaluate_run(run)
    assert measured["eval_loss"] == pytest.approx(recorded["eval_loss"], abs=1e-6)


def test_hira_on_an_old_peft_names_the_version(monkeypatch):
    monkeypatch.delattr(sys.modules["peft"], "HiraConfig")
    with pytest.raises(MissingHiraError, match="PEFT"):
        hira_config_class()


def test_adalora_reallocates_ranks(tiny_bert_dir, data_env, tmp_path):
    config = tiny_run(
        tiny_bert_dir,
        tmp_path,
        method="adalora",
        init_r=6,
        target_r=2,
        max_steps=12,
        max_train_samples=256,
        warmup_ratio_adalora=0.1,
        final_ratio_adalora=0.2,
    )
    run = train(build_config(config))
    report = json.loads((run / "metrics.json").read_text())["method"]
    ranks = report["ranks"]
    assert len(ranks) == 4  # query and value of 2 layers
    assert report["rank_total"] <= report["rank_budget"] == 2 * len(ranks)  # cut from 6 per module to 2 on average
    recorded, measured = evaluate_run(run)
    assert measured["eval_loss"] == pytest.approx(recorded["eval_loss"], abs=1e-6)


def test_all_linear_adapts_every_linear_layer_but_the_head(tiny_bert_dir, data_env, tmp_path):
    """As in PEFT: `all-linear` leaves the classifier out (it trains in full as a saved module), so a rank
    larger than the classifier's two outputs is fine."""
    run = train(build_config(tiny_run(tiny_bert_dir, tmp_path, target_modules="all-linear", lora_r=8, max_steps=1)))
    adapter = json.loads((run / "adapter_config.json").read_text())
    assert "classifier" not in adapter["target_modules"] and {"query", "value", "dense"} <= set(
        name.rsplit(".", 1)[-1] for name in adapter["target_modules"]
    )
    assert "classifier" in adapter["modules_to_save"]
