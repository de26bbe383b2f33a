"""Keeping every channel is dense LoRA, for every model type the architecture map claims.

A model type added to the map is tested here automatically: it passes (logits and every gradient equal to
dense LoRA, sdpa and eager attention) or SparseLoRA refuses it with a clear error.
"""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForSequenceClassification

from sparselora.models import get_arch
from sparselora.models.architectures import supported_model_types
from sparselora.sparse.apply import FFN_REFUSED, UnsupportedModelError, apply_sparselora
from sparselora.sparse.settings import SparseLoRAConfig

SIZES = {  # each family's own names for the sizes of a 2-layer, 32-wide model
    "bert": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64},
    # dropout off: DistilBERT's FFN block also holds the down projection and its dropout, so its dense
    # [CLS] token runs the block twice and draws dropout masks in another order than the dense model
    "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64, "dropout": 0.0},
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 4},
    "llama": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
        "head_dim": 8,
        "pad_token_id": 0,
    },
}
SIZES["roberta"] = {**SIZES["bert"], "pad_token_id": 1}
SIZES["gemma"] = {**SIZES["llama"], "query_pre_attn_scalar": 8, "sliding_window": 6}  # Gemma 2: window < length
SIZES["gemma2"] = {**SIZES["gemma"], "attn_logit_softcapping": 0.5}  # small enough to change the scores
SIZES["olmo2"] = SIZES["llama"]
SIZES["phi3"] = {**SIZES["llama"], "pad_token_id": 0}
SIZES["mixtral"] = {**SIZES["llama"], "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 6}


EAGER_ONLY = ("gemma2",)  # transformers runs Gemma 2 (logit soft-capping) with eager attention only


def _tiny_model(model_type: str, attention: str):
    attention = "eager" if model_type in EAGER_ONLY else attention
    family = get_arch(model_type).family
    config = AutoConfig.for_model(model_type, vocab_size=100, **SIZES[family])
    config._attn_implementation = attention
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation=attention)
    if model_type in ("qwen3", "olmo2"):  # untrained q/k norms are all ones: give them weights that matter
        for name, param in model.named_parameters():
            if "q_norm" in name or "k_norm" in name:
                torch.nn.init.normal_(param, mean=1.0, std=0.3)
    spec = get_arch(model_type)
    roles = [r for r in ("q", "v", "qkv", "up", "gate", "down") if r in spec.projections]
    lora = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, task_type="SEQ_CLS", target_modules=[spec.projections[r] for r in roles]
    )
    peft = get_peft_model(model, lora)
    for name, param in peft.named_parameters():  # LoRA B nonzero: the LoRA path must matter
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    return peft


def _loss_and_grads(model, batch):
    torch.manual_seed(123)  # the same dropout masks in both models
    model.train()
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("model_type", supported_model_types())
def test_keeping_every_channel_is_dense_lora(model_type, attention, tmp_path):
    if model_type in EAGER_ONLY and attention == "sdpa":
        pytest.skip(f"{model_type} has no sdpa attention in transformers")
    spec = get_arch(model_type)
    dense = _tiny_model(model_type, attention)
    sparse = copy.deepcopy(dense)
    with_attention = spec.attention is not None
    with_ffn = spec.ffn not in FFN_REFUSED
    config = SparseLoRAConfig(
        ffn_sparsity=1e-9 if with_ffn else 0.0,  # keeps every channel, still runs the sparse code paths
        attn_sparsity=1e-9 if with_attention else 0.0,
        svd_rank=4,
        svd_cache=str(tmp_path / "factors.safetensors"),
    )
    if get_arch(model_type).conv1d:
        with pytest.raises(UnsupportedModelError, match="Conv1D"):
            apply_sparselora(sparse, config, progress=False)
        return
    if not with_attention:
        with pytest.raises(UnsupportedModelError, match="attn_sparsity: 0"):
            apply_sparselora(copy.deepcopy(dense), config.model_copy(update={"attn_sparsity": 0.5}), progress=False)
    if not with_ffn:
        with pytest.raises(UnsupportedModelError, match="ffn_sparsity: 0"):
            apply_sparselora(copy.deepcopy(dense), config.model_copy(update={"ffn_sparsity": 0.5}), progress=False)
    if not (with_ffn or with_attention):
        return
    engine = apply_sparselora(sparse, config, progress=False)
    engine.start_sparse_now()
    generator = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(2, 100, (4, 12), generator=generator), "labels": torch.tensor([0, 1, 0, 1])}
    logits_d, grads_d = _loss_and_grads(dense, batch)
    logits_s, grads_s = _loss_and_grads(sparse, batch)
    assert all(block.keep is not None for block in engine.ffn)  # the sparse paths ran
    assert all(block.selection is not None for block in engine.attention)
    assert len(engine.attention) == (2 if with_attention else 0) and len(engine.ffn) == (2 if with_ffn else 0)
    torch.testing.assert_close(logits_s, logits_d, rtol=1e-5, atol=1e-6)
    for name in grads_d:
        torch.testing.assert_close(grads_s[name], grads_d[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("rule", ["contribution", "gradient"])
@pytest.mark.parametrize("model_type", [t for t in supported_model_types() if not get_arch(t).conv1d])
def test_backward_mode_forward_is_exact_and_keep_all_gradients_too(model_type, rule, tmp_path):
    """sparse_pass: backward on every mapped architecture: logits equal dense LoRA's at any sparsity,
    and with every channel kept (no attention dropping) every gradient does too."""
    dense = _tiny_model(model_type, "sdpa")
    generator = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(2, 100, (4, 12), generator=generator), "labels": torch.tensor([0, 1, 0, 1])}
    logits_d, grads_d = _loss_and_grads(dense, batch)
    spec = get_arch(model_type)
    with_ffn, with_attention = spec.ffn not in FFN_REFUSED, "q" in spec.projections
    if not with_ffn:
        with pytest.raises(UnsupportedModelError, match="ffn_sparsity: 0"):
            apply_sparselora(copy.deepcopy(dense), SparseLoRAConfig(sparse_pass="backward"), progress=False)
    settings = [(ffn * with_ffn, attn * with_attention) for ffn, attn in ((1e-9, 0.0), (0.75, 0.5))]
    for ffn, attn in [s for s in settings if any(s)]:
        sparse = copy.deepcopy(dense)
        engine = apply_sparselora(
            sparse,
            SparseLoRAConfig(sparse_pass="backward", backward_rule=rule, ffn_sparsity=ffn, attn_sparsity=attn),
            progress=False,
        )
        engine.start_sparse_now()
        logits_s, grads_s = _loss_and_grads(sparse, batch)
        assert torch.equal(logits_s, logits_d)
        if attn == 0.0:
            for name in grads_d:
                torch.testing.assert_close(grads_s[name], grads_d[name], rtol=1e-5, atol=1e-7, msg=name)
