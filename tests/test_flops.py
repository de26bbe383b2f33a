"""The FLOPs calculator against torch's FlopCounterMode on real forward and backward passes."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

from sparselora.flops import FlopsSetup, ModelShape, count_flops, dense_counterpart
from sparselora.models import get_arch
from sparselora.sparse.apply import apply_sparselora
from sparselora.sparse.settings import SparseLoRAConfig

BATCH, SEQ = 4, 32


def _model(family: str):
    torch.manual_seed(0)
    if family == "bert":
        config = BertConfig(
            vocab_size=100, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512
        )
        model = BertForSequenceClassification(config)
        batch = {"input_ids": torch.randint(0, 100, (BATCH, SEQ)), "labels": torch.randint(0, 2, (BATCH,))}
        return model, config, batch, "sequence_classification", ["query", "value"], "SEQ_CLS"
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
    )
    # eager attention: FlopCounterMode does not count PyTorch's CPU flash-attention kernel
    config._attn_implementation = "eager"
    ids = torch.randint(1, 100, (BATCH, SEQ))
    return LlamaForCausalLM(config), config, {"input_ids": ids, "labels": ids}, "causal_lm", ["q_proj", "v_proj"], None


def _measured_per_token(model, batch, backward=True) -> float:
    with FlopCounterMode(display=False) as counter:
        out = model(**batch)
        if backward:
            out.loss.backward()
    return counter.get_total_flops() / (BATCH * SEQ)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_full_finetuning_and_forward_match_the_flop_counter(family):
    model, config, batch, head, _, _ = _model(family)
    shape = ModelShape.from_config(config, get_arch(config.model_type))
    report = count_flops(shape, FlopsSetup(seq_len=SEQ, batch_size=BATCH, head=head, full_finetune=True))
    assert report.total("train") == pytest.approx(_measured_per_token(model, batch), rel=0.01)
    with torch.no_grad():
        assert report.total("forward") == pytest.approx(_measured_per_token(model, batch, backward=False), rel=0.01)


CASES = [("forward", 0.0, 0.0), ("forward", 0.5, 0.0), ("forward", 0.5, 0.5), ("forward", 0.75, 0.25)]
CASES += [("backward", 0.5, 0.0), ("backward", 0.75, 0.5)]  # exact forward: only input gradients sparse
CASES += [("backward-gradient", 0.75, 0.5)]  # the gradient rule's sampled matmul counted too


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize(("sparse_pass", "ffn", "attn"), CASES)
def test_lora_and_sparselora_steps_match_the_flop_counter(family, sparse_pass, ffn, attn, tmp_path):
    model, config, batch, head, targets, task_type = _model(family)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=targets, task_type=task_type))
    sparse_pass, _, rule = sparse_pass.partition("-")
    rule = rule or "contribution"
    if ffn or attn:
        model = copy.deepcopy(model)
        sparse = SparseLoRAConfig(
            sparse_pass=sparse_pass,
            backward_rule=rule,
            ffn_sparsity=ffn,
            attn_sparsity=attn,
            svd_rank=4,
            dense_output_tokens=False,
            svd_cache=str(tmp_path / "svd.safetensors"),
        )
        apply_sparselora(model, sparse, progress=False).start_sparse_now()
    model.train()
    setup = FlopsSetup(
        seq_len=SEQ,
        batch_size=BATCH,
        head=head,
        lora_ranks={0: 4, 1: 4},
        ffn_sparsity=[ffn] * 2,
        attn_sparsity=[attn] * 2,
        svd_rank=4,
        sparse_pass=sparse_pass,
        backward_rule=rule,
    )
    shape = ModelShape.from_config(config, get_arch(config.model_type))
    report = count_flops(shape, setup)
    assert report.total("train") == pytest.approx(_measured_per_token(model, batch), rel=0.02)
    if sparse_pass == "backward":
        assert report.total("forward") == count_flops(shape, dense_counterpart(setup)).total("forward")


def test_distilbert_worked_example():
    """docs/flops.md: DistilBERT FFN 768→3072→768, rank-4 estimator, 75% sparsity."""
    shape = ModelShape.from_config(DistilBertConfig(), get_arch("distilbert"))
    setup = FlopsSetup(
        seq_len=128, batch_size=1, lora_ranks={}, ffn_sparsity=[0.75] * 6, svd_rank=4, estimator_tokens=128
    )
    sparse, dense = count_flops(shape, setup), count_flops(shape, dense_counterpart(setup))
    assert dense.layers[0].forward["ffn"] == 2 * 2 * 768 * 3072 == 9_437_184
    assert sparse.layers[0].forward["ffn"] == 2 * 2 * 768 * 768 == 2_359_296
    assert sparse.layers[0].forward["estimator"] == 2 * 4 * (768 + 3072) == 30_720
    assert sparse.layers[0].forward["estimator"] / dense.layers[0].forward["ffn"] == pytest.approx(0.003255, abs=1e-6)
