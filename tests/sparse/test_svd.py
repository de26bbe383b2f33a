"""The SVD estimator's factors and their cache."""

import pytest
import torch

from sparselora.sparse.apply import apply_sparselora
from sparselora.sparse.settings import SparseLoRAConfig
from sparselora.sparse.svd import SVDCacheError, low_rank
from tests.sparse.models import _peft_model


def test_svd_rank_and_stale_cache_errors(tmp_path):
    with pytest.raises(SVDCacheError, match="between 1 and 31"):
        low_rank(torch.randn(128, 32), 32)
    cache = str(tmp_path / "shared.safetensors")
    apply_sparselora(_peft_model("bert", seed=0), SparseLoRAConfig(svd_rank=4, svd_cache=cache), progress=False)
    with pytest.raises(SVDCacheError, match="other weights"):
        apply_sparselora(_peft_model("bert", seed=1), SparseLoRAConfig(svd_rank=4, svd_cache=cache), progress=False)


def test_default_svd_cache_is_one_per_weight_dtype(tmp_path, monkeypatch):
    """A model loaded in bf16 and the same model in fp32 have different weights: each gets its own cache."""
    monkeypatch.setenv("SPARSELORA_CACHE", str(tmp_path))
    fp32 = _peft_model("bert", seed=0)
    bf16 = _peft_model("bert", seed=0).to(torch.bfloat16)
    for model in (fp32, bf16, _peft_model("bert", seed=0)):  # the third loads the fp32 cache
        apply_sparselora(model, SparseLoRAConfig(svd_rank=4), model_name="tiny", progress=False)
    assert sorted(p.name for p in (tmp_path / "svd").iterdir()) == ["tiny-r4-bf16.safetensors", "tiny-r4.safetensors"]


def test_svd_estimator_is_the_truncated_svd():
    weight = torch.randn(64, 16)
    factors = low_rank(weight, 15)
    x = torch.randn(5, 16)
    # rank 15 of a 16-column matrix drops only the smallest singular direction
    error = (x @ factors.a @ factors.b - x @ weight.T).norm() / (x @ weight.T).norm()
    assert error < 0.2


def test_cache_missing_some_roles_is_rebuilt(tmp_path):
    from sparselora.models import get_arch
    from sparselora.sparse.svd import build_factors, fingerprint, get_factors, save_factors

    model = _peft_model("bert")
    spec = get_arch("bert")
    cache = tmp_path / "old.safetensors"
    ffn_only = {k: v for k, v in build_factors(model, spec, 4, progress=False).items() if k.endswith((".up", ".gate"))}
    save_factors(cache, ffn_only, fingerprint(model, spec), 4)
    factors, stats = get_factors(model, spec, 4, cache, progress=False)
    assert "layers.0.q" in factors and stats["cached"] == 0.0
