"""Parameter counts, including bitsandbytes' packed 4-bit weights."""

import pytest
import torch
from torch import nn

from sparselora.training.params import count_parameters


def test_counts_trainable_and_nonzero():
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.zero_()
    model.bias.requires_grad_(False)
    counts = count_parameters(model)
    assert counts["total"] == 15 and counts["trainable"] == 12 and counts["nonzero_trainable"] == 0


def test_4bit_weights_count_their_logical_size():
    bnb = pytest.importorskip("bitsandbytes")
    layer = bnb.nn.Linear4bit(64, 32, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer = layer.to("cpu")  # quantises
    assert count_parameters(layer)["total"] == 64 * 32
