"""The predictor's recall of the oracle channels and the sparse network's output error."""

import pytest

from sparselora.sparse.apply import apply_sparselora
from sparselora.sparse.settings import SparseLoRAConfig
from tests.sparse.models import _batch, _peft_model


@pytest.mark.parametrize(("family", "high_rank", "floor"), [("bert", 31, 0.85), ("llama", 15, 0.6)])
def test_recall_rises_with_rank_to_near_one(family, high_rank, floor, tmp_path):
    """bert: rank 31 of 32 is an almost exact estimate → recall ≈ 1; llama's GQA k/v (32→16) cap the rank at 15."""
    from sparselora.sparse.recall import measure_recall

    batches = [_batch(seed) for seed in range(3)]
    recalls = {}
    for rank in (1, high_rank):
        model = _peft_model(family, trained=False)  # the estimator sees frozen weights; fresh LoRA adds nothing yet
        config = SparseLoRAConfig(
            ffn_sparsity=0.5, attn_sparsity=0.5, svd_rank=rank, svd_cache=str(tmp_path / f"r{rank}.st")
        )
        engine = apply_sparselora(model, config, progress=False)
        engine.calibrate_outliers(model, batches[:1])
        recalls[rank] = measure_recall(model, engine, batches)
    assert {row.part for row in recalls[high_rank]} == {"ffn", "attn.qk", "attn.v"}
    assert min(row.recall for row in recalls[high_rank]) > floor
    assert sum(row.recall for row in recalls[1]) < sum(row.recall for row in recalls[high_rank])


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_oracle_predictor_picks_the_oracle_channels_and_errs_least(family, tmp_path):
    """predictor='oracle' scores the exact projections: recall ≈ 1; its network error < SVD's and random's."""
    from sparselora.sparse.output_error import predictor_errors
    from sparselora.sparse.recall import measure_recall

    batches = [_batch(seed) for seed in range(3)]
    model = _peft_model(family, trained=False)
    config = SparseLoRAConfig(
        ffn_sparsity=0.5, attn_sparsity=0.5, svd_rank=1, predictor="oracle", svd_cache=str(tmp_path / "f.st")
    )
    engine = apply_sparselora(model, config, progress=False)
    engine.calibrate_outliers(model, batches[:1])
    # ≈ 1, not exactly: near-tied channels can swap between the two computations' float rounding
    assert min(row.recall for row in measure_recall(model, engine, batches)) > 0.95
    model.train()
    errors = predictor_errors(model, engine, batches)
    assert set(errors) == {"svd", "oracle", "random"}
    assert 0 < errors["oracle"] < min(errors["svd"], errors["random"])
    assert all(block.predictor == "oracle" for block in [*engine.ffn, *engine.attention])  # restored
    assert model.training and not engine.config.sparse_eval
