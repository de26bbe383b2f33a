"""The FFN's sparse execution: FLOPs, outlier channels, mean compensation."""

import copy

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from sparselora.sparse.apply import apply_sparselora
from sparselora.sparse.settings import SparseLoRAConfig
from tests.sparse.models import TARGETS, _batch, _peft_model


def _ffn_flops(model, batch, family):
    torch.manual_seed(123)
    ffn_markers = ("intermediate", "output.dense") if family == "bert" else ("mlp",)
    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    per_module = counter.get_flop_counts()
    return sum(
        sum(counts.values())
        for name, counts in per_module.items()
        if any(m in name for m in ffn_markers) and "attention" not in name and name.count(".") >= 4
    )


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("sparsity", [0.5, 0.75])
def test_ffn_flops_drop_by_the_sparsity(family, sparsity, tmp_path):
    # LoRA on attention only: the FFN FLOPs are then the frozen projections plus the estimator.
    dense = _peft_model(family, targets=TARGETS[family][:2], wide=True)
    sparse = copy.deepcopy(dense)
    engine = apply_sparselora(
        sparse,
        SparseLoRAConfig(  # every token sparse: the output-token rule is tested on its own below
            ffn_sparsity=sparsity,
            svd_rank=4,
            svd_cache=str(tmp_path / "f.safetensors"),
            dense_output_tokens=False,
        ),
        progress=False,
    )
    engine.start_sparse_now()
    dense.train(), sparse.train()
    flops_dense = _ffn_flops(dense, _batch(), family)
    flops_sparse = _ffn_flops(sparse, _batch(), family)
    # forward and input-gradient matmuls shrink to the kept fraction; the rank-2 estimator adds ~1-2%
    ratio = flops_sparse / flops_dense
    assert 1 - sparsity < ratio < 1 - sparsity + 0.03


def test_outlier_channels_are_always_kept(tmp_path):
    model = _peft_model("bert")
    layer_module = model.base_model.model.bert.encoder.layer[0]
    with torch.no_grad():  # plant a massive-activation channel: huge down-projection column
        layer_module.output.dense.base_layer.weight[:, 7] *= 500
        layer_module.intermediate.dense.base_layer.bias[7] = 5.0
    engine = apply_sparselora(
        model,
        SparseLoRAConfig(
            ffn_sparsity=0.9,
            svd_rank=2,
            calibration_steps=1,
            sparse_warmup_ratio=0,
            svd_cache=str(tmp_path / "f.safetensors"),
        ),
        progress=False,
    )
    model.train()
    engine.begin_step(0, 10)
    model(**_batch())  # calibration step (dense)
    engine.begin_step(1, 10)
    assert 7 in engine.ffn[0].outliers.tolist()
    for seed in range(3):
        model(**_batch(seed))
        assert 7 in engine.ffn[0].keep.tolist()


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_mean_compensation_keeps_the_ffn_output_mean(family, tmp_path):
    """Skipped channels add their mean: with the running mean set to this batch's, the sparse down
    projection (LoRA'd here) averages over tokens to exactly the dense output; taking them as zero does not."""
    model = _peft_model(family).eval()  # eval: no hook updates the running mean during the test
    config = SparseLoRAConfig(ffn_sparsity=0.75, svd_rank=4, mean_compensation=True, svd_cache=str(tmp_path / "f.st"))
    block = apply_sparselora(model, config, progress=False).ffn[0]
    h = torch.randn(4, 12, block.width, generator=torch.Generator().manual_seed(0)).abs() + 0.5
    with torch.no_grad():
        dense = block.down(h)
        block.keep, block.running_mean = torch.arange(0, block.width, 4), h.reshape(-1, block.width).mean(0)
        compensated = block.down(h[..., block.keep])  # sparse: the up projection made only the kept channels
        block.mean_compensation = False
        zeroed = block.down(h[..., block.keep])
    torch.testing.assert_close(compensated.mean((0, 1)), dense.mean((0, 1)), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(zeroed.mean((0, 1)), dense.mean((0, 1)), atol=1e-2)


def test_running_mean_is_tracked_on_dense_training_steps_only(tmp_path):
    model = _peft_model("bert")
    config = SparseLoRAConfig(
        ffn_sparsity=0.5,
        svd_rank=4,
        mean_compensation=True,
        sparse_warmup_ratio=0.2,
        calibration_steps=1,
        svd_cache=str(tmp_path / "f.st"),
    )
    engine = apply_sparselora(model, config, progress=False)
    block = engine.ffn[0]
    seen = []
    block.down.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().reshape(-1, block.width)))
    model.train()
    means = []
    for step in range(3):  # calibration (dense), warm-up (dense), sparse
        engine.begin_step(step, max_steps=10)
        model(**_batch(step))
        means.append(block.running_mean.clone())
    torch.testing.assert_close(means[0], seen[0].mean(0))  # first dense batch: its own mean
    torch.testing.assert_close(means[1], 0.9 * seen[0].mean(0) + 0.1 * seen[1].mean(0))  # BatchNorm-style update
    assert block.keep is not None and torch.equal(means[2], means[1])  # sparse step: mean left alone
    assert engine.measurements()["mean_compensation"] is True
