"""The SparseLoRA engine: exactness at sparsity 0, the schedule, dtype and device moves, detach, errors."""

import copy
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification

from sparselora.sparse.apply import apply_sparselora
from sparselora.sparse.settings import SparseLoRAConfig
from tests.sparse.models import TARGETS, _batch, _fresh_config, _loss_and_grads, _peft_model


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


def test_sparselora_method_trains_and_saves_a_plain_lora_adapter(tiny_bert_dir, data_env, tmp_path):
    import json

    from sparselora.config import build_config
    from sparselora.evaluation.rerun import evaluate_run
    from sparselora.training.loop import train
    from tests.helpers import tiny_run

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
