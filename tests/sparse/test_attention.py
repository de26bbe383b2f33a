"""Attention's sparse execution: FLOPs fall by the sparsity, RoPE pairs and GQA groups stay together, the
token rule (output tokens dense, context tokens reduced) and the GQA head mapping."""

import copy
import re

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from sparselora.sparse.apply import apply_sparselora
from sparselora.sparse.settings import SparseLoRAConfig
from sparselora.sparse.tokens import TokenSplit
from tests.sparse.models import WIDE, _batch, _peft_model
from tests.sparse.test_exactness import SIZES

LLAMA = {"vocab_size": 100, **SIZES["llama"]}
BERT = {"vocab_size": 100, **SIZES["bert"]}


def _causal_lm(model_type: str = "llama", attention: str = "sdpa"):
    config = AutoConfig.for_model(model_type, **LLAMA)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attention)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets))
    for name, param in peft.named_parameters():  # LoRA B nonzero: the LoRA path must matter
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    return peft


def _lm_batch():
    input_ids = torch.randint(1, 100, (3, 12), generator=torch.Generator().manual_seed(1))
    labels = input_ids.clone()
    labels[:, :7] = -100  # prompt: positions 0..5 predict prompt tokens, 6..10 the answer
    labels[1, :9] = -100  # rows differ, so the batch span is wider than row 1's own output tokens
    return {"input_ids": input_ids, "labels": labels}


def _loss_and_grads(model, batch):
    model.train()
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _layer_input(model, batch, layer: int = 0) -> torch.Tensor:
    """The hidden states that reach layer ``layer``'s attention block in a training forward."""
    seen = {}
    attention = model.base_model.model.model.layers[layer].self_attn

    def keep_input(_module, args, kwargs) -> None:
        seen.setdefault("x", (args[0] if args else kwargs["hidden_states"]).detach())

    handle = attention.register_forward_pre_hook(keep_input, with_kwargs=True)
    model.train()
    with torch.no_grad():
        model(**batch)
    handle.remove()
    return seen["x"]


@pytest.mark.parametrize("span", ["tokens", "batch_span"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3", "mistral"])
def test_token_split_keeping_every_channel_is_dense_lora(model_type, attention, span, tmp_path):
    """A causal LM with trained labels runs the split path in FFN and attention; keeping all is dense LoRA."""
    dense = _causal_lm(model_type, attention)
    sparse = copy.deepcopy(dense)
    config = SparseLoRAConfig(
        ffn_sparsity=1e-9, attn_sparsity=1e-9, svd_rank=4, dense_span=span, svd_cache=str(tmp_path / "f.st")
    )
    engine = apply_sparselora(sparse, config, progress=False)
    engine.start_sparse_now()
    logits_d, grads_d = _loss_and_grads(dense, _lm_batch())
    logits_s, grads_s = _loss_and_grads(sparse, _lm_batch())
    assert all(block.split is not None for block in engine.attention)  # the split path ran
    torch.testing.assert_close(logits_s, logits_d, rtol=1e-5, atol=1e-6)
    for name in grads_d:
        torch.testing.assert_close(grads_s[name], grads_d[name], rtol=1e-4, atol=1e-6, msg=name)


def test_output_tokens_get_dense_qkv_and_context_tokens_reduced(tmp_path):
    model = _causal_lm()
    config = SparseLoRAConfig(ffn_sparsity=0.75, attn_sparsity=0.5, svd_rank=2, svd_cache=str(tmp_path / "f.st"))
    engine = apply_sparselora(model, config, progress=False)
    engine.start_sparse_now()
    batch = _lm_batch()
    x = _layer_input(model, batch)
    block = engine.attention[0]
    split = engine.output_tokens
    assert split is not None and block.selection is not None
    with torch.no_grad():
        q, k, v = block.split_qkv(x, split)
        dense = {role: getattr(block, role)(x) for role in ("q", "k", "v")}
    output = split.mask
    for role, reduced, heads in (("q", q, 4), ("k", k, 2), ("v", v, 2)):
        full = dense[role].view(3, 12, heads, 8).transpose(1, 2)
        torch.testing.assert_close(reduced.transpose(1, 2)[output], full.transpose(1, 2)[output], msg=role)
        context = reduced.transpose(1, 2)[~output]
        assert not torch.allclose(context, full.transpose(1, 2)[~output]), role
        assert (context == 0).float().mean() >= 0.5 - 1e-6  # half of each head's channels skipped


def test_encoder_first_token_gets_dense_attention_output(tmp_path):
    config = AutoConfig.for_model("bert", **BERT)
    torch.manual_seed(0)
    dense = get_peft_model(
        AutoModelForSequenceClassification.from_config(config),
        LoraConfig(r=4, lora_dropout=0.0, target_modules=["query", "value"], task_type="SEQ_CLS"),
    )
    sparse = copy.deepcopy(dense)
    engine = apply_sparselora(
        sparse,
        SparseLoRAConfig(ffn_sparsity=0.0, attn_sparsity=0.5, svd_rank=2, svd_cache=str(tmp_path / "f")),
        progress=False,
    )
    engine.start_sparse_now()
    batch = {"input_ids": torch.randint(1, 100, (2, 10), generator=torch.Generator().manual_seed(2))}
    outputs = {}
    for name, model in (("dense", dense), ("sparse", sparse)):
        first_layer = model.base_model.model.bert.encoder.layer[0].attention.self
        handle = first_layer.register_forward_hook(lambda m, a, out, name=name: outputs.__setitem__(name, out[0]))
        model.eval()  # no dropout; the engine runs training forwards only, so mark the block as training
        first_layer.train()
        with torch.no_grad():
            model(**batch)
        handle.remove()
    assert engine.attention[0].split is not None
    # the first token's query is dense, but it reads the other tokens' reduced keys and values
    assert not torch.allclose(outputs["sparse"][:, 0], outputs["dense"][:, 0])
    assert outputs["sparse"].shape == outputs["dense"].shape


def test_batch_span_covers_every_row_from_first_to_last_output_position():
    labels = torch.full((2, 8), -100)
    labels[0, 3:5] = 1  # output positions 2, 3
    labels[1, 6:8] = 1  # output positions 5, 6
    tokens = TokenSplit.output_tokens(labels, "tokens").mask
    span = TokenSplit.output_tokens(labels, "batch_span").mask
    assert tokens[0].nonzero().flatten().tolist() == [2, 3] and tokens[1].nonzero().flatten().tolist() == [5, 6]
    assert span[0].nonzero().flatten().tolist() == [2, 3, 4, 5, 6] and torch.equal(span[0], span[1])
    split = TokenSplit(span)
    rows = torch.arange(16).float().unsqueeze(1)
    assert torch.equal(split.join(rows[split.dense], rows[split.sparse]), rows)


def test_gqa_query_rows_and_output_columns_follow_their_key_value_head(tmp_path):
    """Query head h reads key/value head h // group: its Q rows are that head's kept Q/K channels and its O
    columns that head's kept V channels, at query head h's own offsets."""
    model = _causal_lm()
    config = SparseLoRAConfig(ffn_sparsity=0.0, attn_sparsity=0.5, svd_rank=2, svd_cache=str(tmp_path / "f.st"))
    engine = apply_sparselora(model, config, progress=False)
    engine.start_sparse_now()
    model.train()
    model(**_lm_batch())
    sel = engine.attention[0].selection
    heads, kv_heads, head_dim, group = 4, 2, 8, 2
    q_rows, o_columns = sel.q_rows.view(heads, -1), sel.o_columns.view(heads, -1)
    for head in range(heads):
        kv = head // group
        assert torch.equal(q_rows[head] // head_dim, torch.full_like(q_rows[head], head))
        assert torch.equal(q_rows[head] % head_dim, sel.qk[kv])
        assert torch.equal(o_columns[head] // head_dim, torch.full_like(o_columns[head], head))
        assert torch.equal(o_columns[head] % head_dim, sel.v[kv])
    assert torch.equal(sel.k_rows.view(kv_heads, -1) % head_dim, sel.qk)
    assert torch.equal(sel.v_rows.view(kv_heads, -1) % head_dim, sel.v)
    assert not torch.equal(sel.qk[0], sel.v[0]) or not torch.equal(sel.qk[1], sel.v[1])  # Q/K and V chosen apart


def _attention_flops(model, batch, family):
    """Forward FLOPs inside each layer's attention block (projections, estimator, score matmuls).

    Forward only: FlopCounterMode's per-module attribution of backward matmuls is not reliable for
    blocks that call F.linear directly; whole-step FLOPs are compared in the speed benchmark.
    """
    pattern = re.compile(r"layer\.\d+\.attention$" if family == "bert" else r"layers\.\d+\.self_attn$")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(**batch)
    return sum(sum(counts.values()) for name, counts in counter.get_flop_counts().items() if pattern.search(name))


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_attention_flops_drop_by_the_sparsity(family, tmp_path):
    dense = _peft_model(family, targets=["intermediate.dense"] if family == "bert" else ["up_proj"], wide=True)
    sparse = copy.deepcopy(dense)
    config = SparseLoRAConfig(  # every token reduced (no dense first token): the reduced-head kernel's FLOPs
        ffn_sparsity=0.0,
        attn_sparsity=0.5,
        svd_rank=2,
        dense_output_tokens=False,
        svd_cache=str(tmp_path / "f.safetensors"),
    )
    engine = apply_sparselora(sparse, config, progress=False)
    engine.start_sparse_now()
    dense.train(), sparse.train()
    ratio = _attention_flops(sparse, _batch(), family) / _attention_flops(dense, _batch(), family)
    # every projection matmul scales with the kept channels; the rank-2 Q/K/V estimator adds ~3-5%
    assert 0.5 < ratio < 0.56
    assert engine.attention[0].selection.qk.shape == (WIDE[family].num_key_value_heads if family == "llama" else 4, 16)


def test_rotary_pairs_and_gqa_groups_are_respected(tmp_path):
    model = _peft_model("llama")
    config = SparseLoRAConfig(
        ffn_sparsity=0.0, attn_sparsity=0.5, svd_rank=4, svd_cache=str(tmp_path / "f.safetensors")
    )
    engine = apply_sparselora(model, config, progress=False)
    engine.start_sparse_now()
    model.train()
    model(**_batch())
    selection = engine.attention[0].selection
    half = 4  # head_dim 8
    assert torch.equal(selection.qk[:, half // 2 :], selection.qk[:, : half // 2] + half)  # (i, i + d/2) pairs
    # query heads 0,1 share kv head 0; heads 2,3 share kv head 1: same Q/K channels within a group
    q_channels = selection.q_rows.view(4, -1) % 8
    assert torch.equal(q_channels[0], q_channels[1]) and torch.equal(q_channels[2], q_channels[3])
    assert torch.equal(q_channels[0], selection.qk[0]) and torch.equal(q_channels[2], selection.qk[1])
