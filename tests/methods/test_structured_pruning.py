"""Structured pruning of LoRA adapters: rank components and columns, by magnitude, SVD or chance."""

import pytest
import torch

from sparselora.config import ConfigError, build_config
from sparselora.methods.lora_prune import prune_columns, prune_rank


def _adapter(rank=4, n_in=12, n_out=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rank, n_in, generator=generator), torch.randn(n_out, rank, generator=generator)


@pytest.mark.parametrize("importance", ["magnitude", "svd", "random"])
def test_rank_pruning_leaves_the_kept_rank(importance):
    a, b = _adapter()
    mask_a, mask_b = prune_rank(a, b, 2, importance, torch.Generator().manual_seed(0))
    assert torch.linalg.matrix_rank(b @ a) == 2
    assert torch.all(a[~mask_a] == 0) and torch.all(b[~mask_b] == 0)
    assert int(mask_a[:, 0].sum()) == 2


def test_svd_rank_pruning_is_the_best_rank_k_approximation():
    a, b = _adapter()
    delta = b @ a
    errors = {}
    for importance in ("svd", "magnitude", "random"):
        a_i, b_i = a.clone(), b.clone()
        prune_rank(a_i, b_i, 2, importance, torch.Generator().manual_seed(1))
        errors[importance] = float(torch.linalg.norm(delta - b_i @ a_i))
    singular = torch.linalg.svdvals(delta)
    assert errors["svd"] == pytest.approx(float(singular[2:].norm()), rel=1e-4)  # Eckart–Young
    assert errors["svd"] <= errors["magnitude"] + 1e-5 and errors["svd"] <= errors["random"] + 1e-5


@pytest.mark.parametrize("importance", ["magnitude", "svd", "random"])
def test_column_pruning_zeros_whole_input_columns(importance):
    a, b = _adapter()
    mask = prune_columns(a, b, 3, importance, torch.Generator().manual_seed(0))
    delta = b @ a
    assert int((delta.abs().sum(dim=0) > 0).sum()) == 3
    assert torch.all(a[~mask] == 0)


def test_magnitude_columns_keep_the_largest():
    a, b = _adapter()
    a[:, 5] *= 100
    mask = prune_columns(a, b, 1, "magnitude", torch.Generator())
    assert bool(mask[0, 5])


def test_random_pruning_depends_on_the_generator():
    picks = set()
    for seed in range(5):
        a, b = _adapter()
        mask = prune_columns(a, b, 3, "random", torch.Generator().manual_seed(seed))
        picks.add(tuple(mask[0].tolist()))
    assert len(picks) > 1


def test_unstructured_refuses_svd_importance():
    with pytest.raises(ConfigError, match="prune_importance"):
        build_config({"method": "lora_prune", "prune_importance": "svd"})
