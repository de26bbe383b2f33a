"""Every registered method trains a causal LM (tiny LLaMA, WikiText-2), in fp32 and bf16, and reloads exactly."""

import json

import pytest

from sparselora.config import build_config
from sparselora.evaluation.rerun import evaluate_run
from sparselora.methods import method_names
from sparselora.training.loop import train
from tests.helpers import tiny_run

# Keys that make each method do something on a 2-layer model in 3 steps.
EXTRA = {
    "layerlens": {"trainable_budget": 0.001, "lens_batches": 1, "lora_r": 4},
    "lora_prune": {"prune_ratio": 0.5, "prune_structure": "rank", "prune_importance": "svd"},
    "adalora": {"init_r": 4, "target_r": 2},
    "hira": {"hira_r": 4},
    "sparselora": {"svd_rank": 4, "ffn_sparsity": 0.5, "attn_sparsity": 0.5, "sparse_warmup_ratio": 0.0},
}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("method", method_names())
def test_method_on_a_decoder(method, precision, tiny_llama_dir, data_env, tmp_path):
    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    keys = tiny_run(
        tiny_llama_dir,
        tmp_path,
        task="wikitext2",
        method=method,
        max_length=32,
        max_train_samples=32,
        max_eval_samples=8,
        max_steps=3,
        precision=precision,
        **EXTRA.get(method, {}),
    )
    if method == "sparselora":
        keys["svd_cache"] = str(tmp_path / "svd.safetensors")
    run = train(build_config(keys))
    assert json.loads((run / "metrics.json").read_text())["train"]["precision"] == precision
    recorded, measured = evaluate_run(run)  # reloaded in the run's precision, under the same autocast
    assert measured["perplexity"] == pytest.approx(recorded["perplexity"], rel=1e-5 if precision == "fp32" else 1e-3)
