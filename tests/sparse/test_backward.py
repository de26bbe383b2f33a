"""Exact-forward SparseLoRA: the forward is dense LoRA's bit for bit; only frozen input gradients are sparse."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModelForSequenceClassification

from sparselora.models import get_arch, iter_projections
from sparselora.models.architectures import supported_model_types
from sparselora.sparse.apply import FFN_REFUSED, apply_sparselora
from sparselora.sparse.settings import SparseLoRAConfig
from sparselora.sparse.svd import base_weight
from tests.sparse.models import TARGETS, _batch, _loss_and_grads, _peft_model
from tests.sparse.test_exactness import EAGER_ONLY, SIZES


def _family_batch(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(2, 100, (4, 12), generator=generator), "labels": torch.tensor([0, 1, 0, 1])}


def _backward_mode(model, **keys):
    config = SparseLoRAConfig(sparse_pass="backward", **keys)
    engine = apply_sparselora(model, config, progress=False)
    engine.start_sparse_now()
    return engine


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("rule", ["contribution", "random", "gradient"])
def test_the_forward_is_dense_loras_bit_for_bit(family, rule):
    dense = _peft_model(family)
    sparse = copy.deepcopy(dense)
    engine = _backward_mode(sparse, ffn_sparsity=0.75, attn_sparsity=0.5, backward_rule=rule)
    logits_d, grads_d = _loss_and_grads(dense, _batch())
    logits_s, grads_s = _loss_and_grads(sparse, _batch())
    assert torch.equal(logits_s, logits_d)
    assert all(block.keep is not None and block.keep.numel() == block.num_kept for block in engine.ffn)
    assert all(block.selection for block in engine.attention if block.layer > 0)  # layer 0 reads frozen inputs
    assert any(not torch.equal(grads_s[name], grads_d[name]) for name in grads_d)  # the backward is sparse
    head = [name for name in grads_d if "classifier" in name or "score" in name]  # above every sparse backward
    assert head and all(torch.equal(grads_s[name], grads_d[name]) for name in head)


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("rule", ["contribution", "gradient"])
def test_keeping_every_channel_gives_every_gradient_of_dense_lora(family, rule):
    dense = _peft_model(family)
    sparse = copy.deepcopy(dense)
    _backward_mode(sparse, ffn_sparsity=1e-9, backward_rule=rule)
    logits_d, grads_d = _loss_and_grads(dense, _batch())
    logits_s, grads_s = _loss_and_grads(sparse, _batch())
    assert torch.equal(logits_s, logits_d)
    for name in grads_d:
        torch.testing.assert_close(grads_s[name], grads_d[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_bf16_forward_is_dense_and_gradients_follow_the_dtype(family):
    """Base and adapters in bf16 (a CPU-tested stand-in for a GPU run): the same guarantees as fp32."""
    dense = _peft_model(family).to(torch.bfloat16)
    keep_all, sparse = copy.deepcopy(dense), copy.deepcopy(dense)
    _backward_mode(keep_all, ffn_sparsity=1e-9)
    _backward_mode(sparse, ffn_sparsity=0.75, attn_sparsity=0.5)
    logits_d, grads_d = _loss_and_grads(dense, _batch())
    for model in (keep_all, sparse):
        logits, grads = _loss_and_grads(model, _batch())
        assert torch.equal(logits, logits_d)
        assert all(grad.dtype == torch.bfloat16 and grad.isfinite().all() for grad in grads.values())
    _, grads_keep_all = _loss_and_grads(keep_all, _batch())
    for name in grads_d:
        torch.testing.assert_close(grads_keep_all[name], grads_d[name], rtol=2e-2, atol=1e-3, msg=name)


def test_the_gradient_rule_keeps_the_channels_of_largest_input_gradient():
    """Every token sampled: the choice is the exact top-k of each channel's share of the FFN input gradient."""
    model = _peft_model("bert", targets=TARGETS["bert"][:2])  # LoRA on attention: the FFN is plain nn.Linear
    engine = _backward_mode(model, ffn_sparsity=0.5, backward_rule="gradient", estimator_tokens=10_000)
    seen = {}
    for layer, (up, down) in enumerate(_ffn_modules(model)):
        up.register_forward_hook(lambda _m, _a, out, layer=layer: seen.__setitem__(("z", layer), out.detach()))
        down.register_full_backward_hook(
            lambda _m, _grad_in, grad_out, layer=layer: seen.__setitem__(("dy", layer), grad_out[0])
        )
    _loss_and_grads(model, _batch())
    for layer, (block, (up, down)) in enumerate(zip(engine.ffn, _ffn_modules(model), strict=True)):
        z = seen["z", layer].reshape(-1, block.width).requires_grad_()
        dy = seen["dy", layer].reshape(z.shape[0], -1)
        (dz,) = torch.autograd.grad(block.activation(z), z, grad_outputs=dy @ down.weight)
        expected = torch.topk(dz.norm(dim=0) * up.weight.norm(dim=1), block.num_kept).indices.sort().values
        assert torch.equal(block.keep, expected), layer


def _ffn_modules(model) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    from sparselora.models import get_arch, iter_projections

    spec = get_arch(model.config.model_type)
    modules = dict(model.named_modules())
    roles: dict[int, dict[str, torch.nn.Module]] = {}
    for proj in iter_projections(model, spec):
        roles.setdefault(proj.layer, {})[proj.role] = modules[proj.name]
    return [(roles[i]["up"], roles[i]["down"]) for i in sorted(roles)]


def _backward_flops(model) -> int:
    torch.manual_seed(123)
    model.train()
    loss = model(**_batch()).loss
    with FlopCounterMode(display=False) as counter:
        loss.backward()
    model.zero_grad()
    return counter.get_total_flops()


@pytest.mark.parametrize("sparsity", [0.5, 0.75])
def test_the_ffn_input_gradient_flops_fall_by_the_kept_fraction(sparsity):
    dense = _peft_model("bert", targets=TARGETS["bert"][:2], wide=True)  # LoRA on attention only
    sparse = copy.deepcopy(dense)
    engine = _backward_mode(sparse, ffn_sparsity=sparsity)
    tokens = _batch()["input_ids"].numel()
    hidden, width = 128, 512
    ffn_input_grads = 2 * 2 * 2 * tokens * hidden * width  # 2 FLOPs per MAC, up and down, 2 layers
    saved = _backward_flops(dense) - _backward_flops(sparse)
    kept = engine.ffn[0].num_kept / width
    assert saved == pytest.approx((1 - kept) * ffn_input_grads, rel=1e-6)


def test_two_forwards_before_one_backward_keep_their_own_channels():
    """Gradient accumulation: each forward's kept channels travel with its own graph."""
    dense = _peft_model("bert")
    sparse = copy.deepcopy(dense)
    _backward_mode(sparse, ffn_sparsity=1e-9)
    for model in (dense, sparse):
        model.train()
        model.zero_grad()
        torch.manual_seed(0)
        losses = [model(**_batch(seed)).loss for seed in (1, 2)]
        sum(losses).backward()
    for (name, a), (_, b) in zip(dense.named_parameters(), sparse.named_parameters(), strict=True):
        if a.requires_grad:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_the_method_trains_in_backward_mode(tiny_bert_dir, data_env, tmp_path):
    import json

    from sparselora.config import build_config
    from sparselora.evaluation.rerun import evaluate_run
    from sparselora.training.loop import train
    from tests.helpers import tiny_run

    keys = tiny_run(tiny_bert_dir, tmp_path, method="sparselora", sparse_pass="backward", max_steps=4)
    run = train(build_config(keys | {"ffn_sparsity": 0.5, "attn_sparsity": 0.5, "sparse_warmup_ratio": 0.0}))
    report = json.loads((run / "metrics.json").read_text())["method"]
    assert report["ffn_kept_fraction"] == pytest.approx(0.5)
    recorded, measured = evaluate_run(run)
    assert measured["eval_loss"] == pytest.approx(recorded["eval_loss"], abs=1e-6)


def test_the_analysis_commands_refuse_the_backward_mode(tiny_bert_dir, data_env, tmp_path):
    from sparselora.config import build_config
    from sparselora.training.sparse_session import open_session
    from tests.helpers import tiny_run

    config = build_config(tiny_run(tiny_bert_dir, tmp_path, method="sparselora", sparse_pass="backward"))
    with pytest.raises(ValueError, match="sparse_pass: forward"):
        open_session(config, 1)


def test_the_flops_calculator_counts_a_dense_forward_and_a_sparser_backward(tiny_bert_dir):
    from sparselora.config import build_config
    from sparselora.flops import config_flops
    from tests.helpers import tiny_run

    keys = tiny_run(tiny_bert_dir, "runs", method="sparselora", sparse_pass="backward", ffn_sparsity=0.75)
    sparse, dense = config_flops(build_config(keys).to_flat_dict(), seq_len=16, batch_size=4)
    assert sparse.total("forward") == dense.total("forward")
    assert "estimator" not in sparse.components()
    assert sparse.total("train") < dense.total("train")


# the kept-channels-only block backward (no adapter on the FFN projections) ---------------------------
FUSED_TYPES = [t for t in supported_model_types() if not get_arch(t).conv1d and get_arch(t).ffn not in FFN_REFUSED]


def _attention_only_lora(model_type: str, dtype: torch.dtype = torch.float32):
    """A tiny model with LoRA on q/v only: its FFN blocks qualify for the fused backward."""
    family = get_arch(model_type).family
    config = AutoConfig.for_model(model_type, vocab_size=100, **SIZES[family])
    torch.manual_seed(0)
    attention = "eager" if model_type in EAGER_ONLY else "sdpa"
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation=attention)
    spec = get_arch(model_type)
    lora = LoraConfig(r=4, lora_dropout=0.0, task_type="SEQ_CLS", target_modules=[spec.projections[r] for r in "qv"])
    peft = get_peft_model(model, lora)
    for name, param in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    return peft.to(dtype)


def _per_projection(engine) -> None:
    """Re-attach every FFN block with the per-projection backward (the reference implementation)."""
    for block in engine.ffn:
        block.detach()
        block.fuse = False
        block.attach(engine)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rule", ["contribution", "random", "gradient"])
@pytest.mark.parametrize("model_type", FUSED_TYPES)
def test_the_fused_block_backward_equals_the_per_projection_one(model_type, rule, dtype):
    dense = _attention_only_lora(model_type, dtype)
    fused, reference = copy.deepcopy(dense), copy.deepcopy(dense)
    batch = _family_batch()
    keys = {"ffn_sparsity": 0.75, "backward_rule": rule, "estimator_tokens": 16}
    engine = _backward_mode(fused, **keys)
    assert all(block.fused for block in engine.ffn)
    _per_projection(_backward_mode(reference, **keys))
    logits_d, _ = _loss_and_grads(dense, batch)
    logits_f, grads_f = _loss_and_grads(fused, batch)
    logits_r, grads_r = _loss_and_grads(reference, batch)
    assert torch.equal(logits_f, logits_d) and torch.equal(logits_r, logits_d)  # forward: dense, bit for bit
    assert all(block.keep.numel() == block.num_kept for block in engine.ffn)
    tolerance = {"rtol": 1e-4, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 0.05, "atol": 2e-3}
    for name in grads_r:
        assert grads_f[name].dtype == grads_r[name].dtype
        torch.testing.assert_close(grads_f[name], grads_r[name], **tolerance, msg=name)


@pytest.mark.parametrize("model_type", FUSED_TYPES)
def test_the_fused_block_keeping_every_channel_is_dense_lora(model_type):
    dense = _attention_only_lora(model_type)
    sparse = copy.deepcopy(dense)
    engine = _backward_mode(sparse, ffn_sparsity=1e-9)
    assert all(block.fused for block in engine.ffn)
    logits_d, grads_d = _loss_and_grads(dense, _family_batch())
    logits_s, grads_s = _loss_and_grads(sparse, _family_batch())
    assert torch.equal(logits_s, logits_d)
    for name in grads_d:
        torch.testing.assert_close(grads_s[name], grads_d[name], rtol=1e-5, atol=1e-7, msg=name)


def test_the_fused_block_allocates_no_full_width_gradient():
    """Every tensor the FFN block's backward makes is kept-width or hidden-width, never the intermediate width."""
    model = _attention_only_lora("llama")
    engine = _backward_mode(model, ffn_sparsity=0.75)
    block = engine.ffn[0]
    widths = []

    class Watch(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.dim() == 2:
                widths.append(out.shape[-1])
            return out

    model.train()
    out = model(**_family_batch())
    with Watch():
        out.loss.backward()
    assert block.width not in widths and block.num_kept in widths


def test_gradient_accumulation_and_checkpointing_with_the_fused_block():
    dense = _attention_only_lora("llama")
    sparse = copy.deepcopy(dense)
    engine = _backward_mode(sparse, ffn_sparsity=0.5)
    batches = [_family_batch(seed) for seed in (1, 2)]
    for model in (dense, sparse):
        model.train()
        model.zero_grad()
    outs = [sparse(**batch).loss for batch in batches]
    keeps = [block.keep.clone() for block in engine.ffn]
    for loss in reversed(outs):
        loss.backward()
    accumulated = {n: p.grad.clone() for n, p in sparse.named_parameters() if p.requires_grad}
    checkpointed = copy.deepcopy(dense)
    engine_c = _backward_mode(checkpointed, ffn_sparsity=0.5)
    checkpointed.base_model.model.gradient_checkpointing_enable({"use_reentrant": False})
    checkpointed.train()
    checkpointed.zero_grad()
    for batch in batches:
        checkpointed(**batch).loss.backward()
    assert all(torch.equal(block.keep, keep) for block, keep in zip(engine_c.ffn, keeps, strict=True))
    for name, grad in accumulated.items():
        torch.testing.assert_close(dict(checkpointed.named_parameters())[name].grad, grad, msg=name)


def _frozen_ffn_weights_of_rank(model, spec, rank: int) -> None:
    """Every frozen FFN projection replaced by a random matrix of exactly ``rank``."""
    generator = torch.Generator().manual_seed(7)
    for proj in iter_projections(model, spec):
        if proj.role in ("up", "gate", "down"):
            weight = base_weight(proj.module)
            rows, cols = weight.shape
            low = torch.randn(rows, rank, generator=generator) @ torch.randn(rank, cols, generator=generator)
            with torch.no_grad():
                weight.copy_(low / (rank * cols) ** 0.5)


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_the_residual_of_the_weights_rank_gives_every_gradient_of_dense_lora(model_type):
    """Frozen FFN weights of rank 3: the skipped channels' gradient through rank-3 factors is exact."""
    dense = _attention_only_lora(model_type)
    _frozen_ffn_weights_of_rank(dense, get_arch(model_type), rank=3)
    residual, zeros = copy.deepcopy(dense), copy.deepcopy(dense)
    assert all(block.fused for block in _backward_mode(residual, ffn_sparsity=0.75, backward_residual_rank=3).ffn)
    _backward_mode(zeros, ffn_sparsity=0.75)
    logits_d, grads_d = _loss_and_grads(dense, _family_batch())
    logits_r, grads_r = _loss_and_grads(residual, _family_batch())
    _, grads_z = _loss_and_grads(zeros, _family_batch())
    assert torch.equal(logits_r, logits_d)
    for name in grads_d:
        torch.testing.assert_close(grads_r[name], grads_d[name], rtol=1e-4, atol=1e-6, msg=name)
    assert any(not torch.allclose(grads_z[name], grads_d[name], rtol=1e-3) for name in grads_d)


def test_the_residual_needs_the_block_backward():
    model = _peft_model("llama")  # LoRA on the FFN projections: per-projection backward
    with pytest.raises(ValueError, match=r"backward_residual_rank=2 needs the FFN's block backward.*target_modules"):
        _backward_mode(model, ffn_sparsity=0.75, backward_residual_rank=2)
