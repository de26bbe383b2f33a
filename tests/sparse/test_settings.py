"""SparseLoRA's settings: the per-layer schedule."""

import pytest

from sparselora.sparse.settings import SparseLoRAConfig, layer_schedule


def test_layer_schedule_forms_and_errors():
    config = SparseLoRAConfig(ffn_sparsity=0.5, layer_sparsity={"layer.0": 0.0, "layers.1.mlp": 0.9})
    assert layer_schedule(config, 3, "mlp") == [0.0, 0.9, 0.5]
    with pytest.raises(ValueError, match="no layer 7"):
        layer_schedule(SparseLoRAConfig(layer_sparsity={"layer.7": 0.5}), 6, "mlp")
    with pytest.raises(ValueError, match=r"layer\.N"):
        SparseLoRAConfig(layer_sparsity={"block3": 0.5})
    with pytest.raises(ValueError):
        SparseLoRAConfig(ffn_sparsity=1.0)
    both = SparseLoRAConfig(attn_sparsity=0.3, layer_sparsity={"layers.1.attn": 0.0, "layers.0.mlp": 0.2})
    assert layer_schedule(both, 2, "attn") == [0.3, 0.0]
    assert layer_schedule(both, 2, "mlp") == [0.2, 0.5]
