"""lora_l1, lora_prune and dora: exact zeros, fixed masks, PEFT round trips."""

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, BertConfig

from sparselora.config import ConfigError, build_config
from sparselora.evaluation.rerun import evaluate_run
from sparselora.methods.lora import lora_weights
from sparselora.methods.lora_l1 import soft_threshold
from sparselora.methods.lora_prune import AdapterPruning, LoraPruneOptions, magnitude_masks
from sparselora.training.loop import train
from tests.helpers import tiny_run


def _adapter_zero_fraction(run) -> float:
    weights = [w for k, w in load_file(run / "adapter_model.safetensors").items() if "lora_" in k]
    return 1 - sum(int(w.count_nonzero()) for w in weights) / sum(w.numel() for w in weights)


def test_soft_threshold_makes_exact_zeros():
    weight = torch.tensor([0.5, -0.05, 0.02, -2.0])
    soft_threshold([weight], 0.1)
    assert weight.tolist() == pytest.approx([0.4, 0.0, 0.0, -1.9])
    assert (weight == 0).sum() == 2


def test_lora_l1_reports_counted_sparsity(tiny_bert_dir, data_env, tmp_path):
    run = train(build_config(tiny_run(tiny_bert_dir, tmp_path, method="lora_l1", l1_lambda=5.0, learning_rate=1e-2)))
    report = json.loads((run / "metrics.json").read_text())["method"]
    assert report["adapter_sparsity"] > 0.1
    assert report["adapter_sparsity"] == pytest.approx(_adapter_zero_fraction(run))  # saved zeros = reported


def test_lora_prune_zeros_the_ratio_and_saves_them(tiny_bert_dir, data_env, tmp_path):
    run = train(build_config(tiny_run(tiny_bert_dir, tmp_path, method="lora_prune", prune_ratio=0.5)))
    report = json.loads((run / "metrics.json").read_text())["method"]
    assert report["adapter_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert _adapter_zero_fraction(run) == pytest.approx(report["adapter_sparsity"])
    recorded, measured = evaluate_run(run)  # the pruned adapter reproduces its metrics
    assert measured["accuracy"] == pytest.approx(recorded["accuracy"])


def _tiny_peft():
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_config(
        BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS"))
    for weight in lora_weights(model):
        torch.nn.init.normal_(weight)
    return model


def test_recovery_holds_the_mask_fixed():
    model = _tiny_peft()
    callback = AdapterPruning(model, LoraPruneOptions(prune_ratio=0.5, recovery_steps=3))
    callback.prune()
    pruned = [w.detach().clone() for w in callback.weights]
    optimizer = torch.optim.AdamW(callback.weights, lr=0.1)
    batch = {"input_ids": torch.randint(0, 50, (4, 6)), "labels": torch.tensor([0, 1, 0, 1])}
    for _ in range(3):
        model(**batch).loss.backward()
        optimizer.step()
        callback.on_optimizer_step(None, None, None)
        optimizer.zero_grad()
    for before, after, mask in zip(pruned, callback.weights, callback.masks, strict=True):
        assert torch.all(after[~mask] == 0)  # pruned weights stay exactly zero
        assert not torch.equal(after[mask], before[mask])  # the kept ones keep training


def test_global_and_per_matrix_scopes():
    small, large = torch.full((10,), 0.1), torch.full((10,), 5.0)
    small[0], large[0] = 0.0, 0.0
    per_matrix = magnitude_masks([small.clone(), large.clone()], 0.5, "per_matrix")
    assert [int(m.sum()) for m in per_matrix] == [0, 0]  # ties at the cut: all equal values are pruned
    ramp_a, ramp_b = torch.arange(1.0, 11.0), torch.arange(11.0, 21.0)
    global_masks = magnitude_masks([ramp_a, ramp_b], 0.5, "global")
    assert int(global_masks[0].sum()) == 0 and int(global_masks[1].sum()) == 10
    per = magnitude_masks([ramp_a, ramp_b], 0.5, "per_matrix")
    assert [int(m.sum()) for m in per] == [5, 5]


def test_dora_trains_and_reloads(tiny_bert_dir, data_env, tmp_path):
    run = train(build_config(tiny_run(tiny_bert_dir, tmp_path, method="dora", max_steps=2)))
    assert json.loads((run / "adapter_config.json").read_text())["use_dora"] is True
    recorded, measured = evaluate_run(run)
    assert measured["eval_loss"] == pytest.approx(recorded["eval_loss"], abs=1e-6)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"method": "lora_prune", "prune_ratio": 1.0}, "prune_ratio"),
        ({"method": "lora_l1", "l1_lambda": -1}, "l1_lambda"),
        ({"method": "lora_prune", "prune_scope": "row"}, "prune_scope"),
    ],
)
def test_bad_values_are_refused(raw, key):
    with pytest.raises(ConfigError, match=key):
        build_config(raw)
