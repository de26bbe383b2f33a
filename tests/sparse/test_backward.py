"""Exact-forward SparseLoRA: the forward is dense LoRA's bit for bit; only frozen input gradients are sparse."""

import copy

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from sparselora.sparse.config import SparseLoRAConfig
from sparselora.sparse.engine import apply_sparselora
from tests.sparse.test_engine import TARGETS, _batch, _loss_and_grads, _peft_model


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
    from tests.conftest import tiny_run

    keys = tiny_run(tiny_bert_dir, tmp_path, method="sparselora", sparse_pass="backward", max_steps=4)
    run = train(build_config(keys | {"ffn_sparsity": 0.5, "attn_sparsity": 0.5, "sparse_warmup_ratio": 0.0}))
    report = json.loads((run / "metrics.json").read_text())["method"]
    assert report["ffn_kept_fraction"] == pytest.approx(0.5)
    recorded, measured = evaluate_run(run)
    assert measured["eval_loss"] == pytest.approx(recorded["eval_loss"], abs=1e-6)


def test_the_analysis_commands_refuse_the_backward_mode(tiny_bert_dir, data_env, tmp_path):
    from sparselora.config import build_config
    from sparselora.sparse.session import open_session
    from tests.conftest import tiny_run

    config = build_config(tiny_run(tiny_bert_dir, tmp_path, method="sparselora", sparse_pass="backward"))
    with pytest.raises(ValueError, match="sparse_pass: forward"):
        open_session(config, 1)


def test_the_flops_calculator_counts_a_dense_forward_and_a_sparser_backward(tiny_bert_dir):
    from sparselora.config import build_config
    from sparselora.flops import config_flops
    from tests.conftest import tiny_run

    keys = tiny_run(tiny_bert_dir, "runs", method="sparselora", sparse_pass="backward", ffn_sparsity=0.75)
    sparse, dense = config_flops(build_config(keys).to_flat_dict(), seq_len=16, batch_size=4)
    assert sparse.total("forward") == dense.total("forward")
    assert "estimator" not in sparse.components()
    assert sparse.total("train") < dense.total("train")
