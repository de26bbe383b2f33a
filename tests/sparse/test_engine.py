"""SparseLoRA FFN engine: exactness at sparsity 0, real FLOPs savings, schedule, errors."""

import copy
import math
import re

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForSequenceClassification, BertConfig, LlamaConfig

from sparselora.sparse.config import SparseLoRAConfig, layer_schedule
from sparselora.sparse.engine import apply_sparselora
from sparselora.sparse.svd import SVDCacheError, low_rank

CONFIGS = {
    "bert": BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
    ),
    "llama": LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        pad_token_id=0,
    ),
}
# Wider models for FLOPs checks: a rank-2 estimator is then ~3% of a 128-wide projection, as at real sizes.
WIDE = {
    "bert": BertConfig(
        vocab_size=100, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512
    ),
    "llama": LlamaConfig(
        vocab_size=100,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=512,
        pad_token_id=0,
    ),
}
TARGETS = {
    "bert": ["query", "value", "intermediate.dense", "output.dense"],
    "llama": ["q_proj", "v_proj", "up_proj", "gate_proj", "down_proj"],
}


def _fresh_config(family: str, wide: bool = False):
    """A copy of a shared config: moving a model to another dtype writes that dtype into its config."""
    return copy.deepcopy((WIDE if wide else CONFIGS)[family])


def _peft_model(family: str, seed: int = 0, targets: list[str] | None = None, wide: bool = False, trained: bool = True):
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(_fresh_config(family, wide))
    lora = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets or TARGETS[family], task_type="SEQ_CLS"
    )
    peft = get_peft_model(model, lora)
    for name, param in peft.named_parameters():  # "trained": LoRA B nonzero so the LoRA path matters
        if trained and "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    return peft


def _batch(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1, 100, (4, 12), generator=generator), "labels": torch.tensor([0, 1, 0, 1])}


def _loss_and_grads(model, batch):
    torch.manual_seed(123)  # same dropout masks in both models
    model.train()
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.logits.detach(), grads


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_sparsity_zero_equals_dense_lora(family, tmp_path):
    dense = _peft_model(family)
    sparse = copy.deepcopy(dense)
    # a tiny sparsity keeps every channel but still runs the sparse code paths (FFN and attention)
    config = SparseLoRAConfig(ffn_sparsity=1e-9, attn_sparsity=1e-9, svd_rank=4, svd_cache=str(tmp_path / "f.st"))
    engine = apply_sparselora(sparse, config, progress=False)
    engine.start_sparse_now()
    assert all(layer.num_kept == layer.width for layer in engine.ffn)
    assert len(engine.attention) == 2 and all(block.num_kept == block.head_dim for block in engine.attention)
    logits_d, grads_d = _loss_and_grads(dense, _batch())
    logits_s, grads_s = _loss_and_grads(sparse, _batch())
    assert engine.ffn[0].keep is not None and engine.attention[0].selection is not None  # sparse paths ran
    torch.testing.assert_close(logits_s, logits_d, rtol=1e-5, atol=1e-6)
    for name in grads_d:
        torch.testing.assert_close(grads_s[name], grads_d[name], rtol=1e-4, atol=1e-6)


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


def test_eval_runs_dense_and_warmup_schedule(tmp_path):
    model = _peft_model("bert")
    engine = apply_sparselora(
        model,
        SparseLoRAConfig(
            ffn_sparsity=0.5,
            svd_rank=4,
            sparse_warmup_ratio=0.3,
            calibration_steps=2,
            svd_cache=str(tmp_path / "f.safetensors"),
        ),
        progress=False,
    )
    model.train()
    for step, sparse_expected in [(0, False), (1, False), (2, False), (3, True)]:
        engine.begin_step(step, max_steps=10)  # warm-up = ceil(0.3 * 10) = 3 steps
        model(**_batch())
        assert (engine.ffn[1].keep is not None) == sparse_expected, step
    model.eval()
    with torch.no_grad():
        model(**_batch())
    assert engine.ffn[1].keep is None


def test_dense_cooldown_at_the_end(tmp_path):
    model = _peft_model("bert")
    config = SparseLoRAConfig(
        svd_rank=4,
        sparse_warmup_ratio=0.2,
        sparse_cooldown_ratio=0.2,
        calibration_steps=1,
        svd_cache=str(tmp_path / "f.st"),
    )
    engine = apply_sparselora(model, config, progress=False)
    model.train()
    sparse_steps = []
    for step in range(10):
        engine.begin_step(step, max_steps=10)
        model(**_batch())
        sparse_steps.append(engine.ffn[0].keep is not None)
    assert sparse_steps == [False, False, True, True, True, True, True, True, False, False]


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


def test_detach_restores_dense_forwards(tmp_path):
    dense = _peft_model("llama")
    sparse = copy.deepcopy(dense)
    engine = apply_sparselora(
        sparse,
        SparseLoRAConfig(ffn_sparsity=0.8, svd_rank=4, svd_cache=str(tmp_path / "f.safetensors")),
        progress=False,
    )
    engine.start_sparse_now()
    engine.detach()
    torch.testing.assert_close(_loss_and_grads(sparse, _batch())[0], _loss_and_grads(dense, _batch())[0])


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_model_moved_after_attach_runs_sparse_on_its_new_dtype(family, tmp_path):
    """Trainer and benchmarks move the model (device, dtype) after apply_sparselora: the engine follows."""
    model = _peft_model(family)
    config = SparseLoRAConfig(ffn_sparsity=0.5, attn_sparsity=0.5, svd_rank=4, svd_cache=str(tmp_path / "f.st"))
    engine = apply_sparselora(model, config, progress=False)
    engine.start_sparse_now()
    model.to(torch.float64)
    logits, grads = _loss_and_grads(model, _batch())
    assert engine.ffn[0].keep is not None and engine.attention[0].selection is not None
    assert logits.dtype == torch.float64 and all(g.dtype == torch.float64 for g in grads.values())
    assert engine.ffn[0].up_estimator.a.dtype == torch.float64


def test_bf16_base_with_fp32_adapters_matches_peft(tmp_path):
    """PEFT keeps adapters in fp32 over a bf16 base; the sparse path must add them as PEFT does."""
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_config(_fresh_config("llama"), dtype=torch.bfloat16)
    dense = get_peft_model(base, LoraConfig(r=4, target_modules=TARGETS["llama"], task_type="SEQ_CLS"))
    assert dense.base_model.model.model.layers[0].mlp.up_proj.lora_A["default"].weight.dtype == torch.float32
    sparse = copy.deepcopy(dense)
    config = SparseLoRAConfig(ffn_sparsity=1e-9, attn_sparsity=1e-9, svd_rank=4, svd_cache=str(tmp_path / "f.st"))
    apply_sparselora(sparse, config, progress=False).start_sparse_now()
    logits_s, grads_s = _loss_and_grads(sparse, _batch())
    logits_d, grads_d = _loss_and_grads(dense, _batch())
    torch.testing.assert_close(logits_s, logits_d)
    for name in grads_d:
        torch.testing.assert_close(grads_s[name], grads_d[name], rtol=0.02, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run where one is lent)")
def test_trainer_moves_the_model_to_cuda_and_it_trains_sparse(tmp_path):
    """The HF Trainer moves the model to the GPU after apply_sparselora: selection and estimators follow it."""
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_config(_fresh_config("llama")),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    config = SparseLoRAConfig(
        ffn_sparsity=0.5, attn_sparsity=0.5, svd_rank=4, sparse_warmup_ratio=0.0, calibration_steps=1,
        svd_cache=str(tmp_path / "f.st"),
    )  # fmt: skip
    engine = apply_sparselora(model, config, progress=False)
    ids = torch.randint(1, 100, (16, 12))
    labels = ids.clone()
    labels[:, :6] = -100  # a prompt and an answer: the token split runs on the GPU too
    data = [{"input_ids": i, "labels": label} for i, label in zip(ids, labels, strict=True)]
    arguments = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=4, bf16=True,
        logging_steps=1, save_strategy="no", report_to=[],
    )  # fmt: skip
    trainer = Trainer(model=model, args=arguments, train_dataset=data, callbacks=[engine.callback()])
    trainer.train()
    assert engine.ffn[0].keep is not None and engine.ffn[0].keep.is_cuda
    assert engine.ffn[0].up_estimator.a.is_cuda and engine.attention[0].selection is not None
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)


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


def test_sparselora_method_trains_and_saves_a_plain_lora_adapter(tiny_bert_dir, data_env, tmp_path):
    import json

    from sparselora.config import build_config
    from sparselora.evaluation.rerun import evaluate_run
    from sparselora.training.loop import train
    from tests.conftest import tiny_run

    config = tiny_run(
        tiny_bert_dir,
        tmp_path,
        method="sparselora",
        ffn_sparsity=0.5,
        attn_sparsity=0.5,
        svd_rank=4,
        sparse_warmup_ratio=0.25,
        calibration_steps=1,
        svd_cache=str(tmp_path / "svd.safetensors"),
    )
    run = train(build_config(config))
    adapter = json.loads((run / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and sorted(adapter["target_modules"]) == ["query", "value"]
    recorded, measured = evaluate_run(run)  # reloads as plain LoRA, evaluates dense
    assert measured["accuracy"] == pytest.approx(recorded["accuracy"])
    _, sparse_measured = evaluate_run(run, sparse=True)  # the same adapter on the sparse network
    assert sparse_measured["eval_loss"] != pytest.approx(measured["eval_loss"], abs=1e-6)
    assert (tmp_path / "svd.safetensors").is_file()
    method = json.loads((run / "metrics.json").read_text())["method"]
    assert method["ffn_kept_fraction"] == pytest.approx(0.5) and method["sparse_from_step"] == 1
    # realised, not configured: 4 steps, the first dense (warm-up 0.25 of 4), so the mean is (1 + 3 × 0.5) / 4
    assert method["realised"]["steps"] == 4 and method["realised"]["sparse_steps"] == 3
    assert method["realised"]["ffn_kept_fraction_mean"] == pytest.approx((1 + 3 * 0.5) / 4)
    logged = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    kept = [entry["sparselora/ffn_kept_fraction"] for entry in logged if "sparselora/ffn_kept_fraction" in entry]
    assert kept and kept[-1] == pytest.approx(0.5)  # the trackers and the log see it


def test_kept_fraction_is_one_on_dense_steps_and_a_second_apply_is_refused(tmp_path, caplog):
    model = _peft_model("bert")
    config = SparseLoRAConfig(ffn_sparsity=0.5, svd_rank=4, calibration_steps=1, svd_cache=str(tmp_path / "f"))
    engine = apply_sparselora(model, config, progress=False)
    with pytest.raises(ValueError, match="already applied"):
        apply_sparselora(model, config, progress=False)
    model.train()
    with caplog.at_level("WARNING"):
        model(**_batch())  # no callback: the first forward calibrates, dense
    assert "without its Trainer callback" in caplog.text
    assert engine.kept_fraction() == 1.0 and engine.configured_kept_fraction() == pytest.approx(0.5)
    model(**_batch())
    assert engine.kept_fraction() == pytest.approx(0.5)
    assert [round(ffn, 3) for ffn, _ in engine.realised] == [1.0, 0.5]
    engine.detach()
    apply_sparselora(model, config, progress=False).detach()  # once detached, it may be applied again


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


def test_decoder_output_tokens_run_dense_and_context_tokens_sparse(tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    dense = get_peft_model(
        AutoModelForCausalLM.from_config(_fresh_config("llama")), LoraConfig(r=4, target_modules=["q_proj"])
    )
    sparse = copy.deepcopy(dense)
    config = SparseLoRAConfig(ffn_sparsity=0.75, svd_rank=4, svd_cache=str(tmp_path / "f.st"))
    engine = apply_sparselora(sparse, config, progress=False)
    engine.start_sparse_now()
    batch = _batch()
    labels = batch["input_ids"].clone()
    labels[:, :7] = -100  # prompt: positions 0..5 predict prompt tokens; 6..10 predict answer tokens
    outputs = {}
    for name, model in (("dense", dense), ("sparse", sparse)):
        mlp = model.base_model.model.model.layers[0].mlp
        handle = mlp.register_forward_hook(lambda m, a, out, name=name: outputs.__setitem__(name, out))
        model.train()
        torch.manual_seed(1)
        model(input_ids=batch["input_ids"], labels=labels)
        handle.remove()
    output_positions = engine.output_tokens.mask
    assert output_positions[:, 6:11].all() and not output_positions[:, :6].any()
    torch.testing.assert_close(outputs["sparse"][output_positions], outputs["dense"][output_positions])
    assert not torch.allclose(outputs["sparse"][~output_positions], outputs["dense"][~output_positions])


def test_encoder_first_token_runs_dense_and_the_others_sparse(tmp_path):
    dense = _peft_model("bert")
    sparse = copy.deepcopy(dense)
    config = SparseLoRAConfig(ffn_sparsity=0.75, svd_rank=4, svd_cache=str(tmp_path / "f.st"))
    engine = apply_sparselora(sparse, config, progress=False)
    engine.start_sparse_now()
    outputs, grads = {}, {}
    for name, model in (("dense", dense), ("sparse", sparse)):
        ffn_out = model.base_model.model.bert.encoder.layer[0].output.dense
        handle = ffn_out.register_forward_hook(lambda m, a, out, name=name: outputs.__setitem__(name, out))
        _, grads[name] = _loss_and_grads(model, _batch())
        handle.remove()
    assert outputs["sparse"].shape == outputs["dense"].shape
    torch.testing.assert_close(outputs["sparse"][:, 0], outputs["dense"][:, 0])  # [CLS]: dense FFN
    assert not torch.allclose(outputs["sparse"][:, 1:], outputs["dense"][:, 1:])
    up_lora = "bert.encoder.layer.0.intermediate.dense.lora_B.default.weight"
    assert grads["sparse"][next(n for n in grads["sparse"] if n.endswith(up_lora))].abs().sum() > 0


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
    assert engine.report()["mean_compensation"] is True


def test_unsupported_architectures_are_refused_clearly(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel, MPNetConfig, MPNetForMaskedLM

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="Conv1D"):
        apply_sparselora(gpt2, SparseLoRAConfig(svd_cache=str(tmp_path / "g.st")), progress=False)
    config = MPNetConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    with pytest.raises(ValueError, match="architecture map"):
        apply_sparselora(MPNetForMaskedLM(config), SparseLoRAConfig(), progress=False)


def test_own_training_loop_calibrates_then_runs_sparse_and_says_so(tmp_path, caplog):
    """No Trainer callback: training forwards count as steps, dense while calibrating, then sparse."""
    model = _peft_model("bert")
    config = SparseLoRAConfig(ffn_sparsity=0.5, calibration_steps=2, svd_rank=4, svd_cache=str(tmp_path / "f.st"))
    engine = apply_sparselora(model, config, progress=False)
    model.train()
    seen = []
    with caplog.at_level("INFO", logger="sparselora.sparse.engine"):
        for _ in range(4):
            model(**_batch()).loss.backward()
            seen.append(engine.ffn[0].keep is not None)
        with torch.no_grad():  # evaluation-like forwards do not count
            model(**_batch())
    assert seen == [False, False, True, True]
    assert engine.forwards_counted == 4
    assert "without its Trainer callback" in caplog.text
    model.eval()
    model(**_batch())
    assert engine.ffn[0].keep is None  # evaluation runs dense
