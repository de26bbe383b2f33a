"""Precision, gradient checkpointing and evaluation on a device: the LLM training path, tested on the CPU."""

import copy
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from sparselora.config import ConfigError, build_config
from sparselora.sparse.apply import apply_sparselora
from sparselora.sparse.settings import SparseLoRAConfig
from sparselora.training.loop import train
from sparselora.training.precision import parse_device, resolve_precision
from tests.helpers import tiny_run


def test_the_base_is_bf16_and_what_trains_is_fp32(tiny_bert_dir, data_env, tmp_path):
    from sparselora.training.inputs import load_inputs

    inputs = load_inputs(build_config(tiny_run(tiny_bert_dir, tmp_path, precision="bf16")))
    setup = inputs.build_method()
    trainable = [p for p in setup.model.parameters() if p.requires_grad]
    frozen = [p for p in setup.model.parameters() if not p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    full = load_inputs(build_config(tiny_run(tiny_bert_dir, tmp_path, method="full", precision="bf16")))
    assert all(p.dtype == torch.float32 for p in full.build_method().model.parameters())  # fp32 master weights


def test_precision_auto_and_the_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="not a device name"):
        parse_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no such CUDA device"):
            parse_device("cuda")
    assert parse_device("cpu") == cpu


def test_qlora_computes_in_the_run_precision(tiny_bert_dir, data_env, tmp_path):
    from sparselora.methods.qlora import QLoraOptions, quantization_kwargs

    config = quantization_kwargs(QLoraOptions(), torch.bfloat16)["quantization_config"]
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    run = train(build_config(tiny_run(tiny_bert_dir, tmp_path, method="qlora", max_steps=2, precision="bf16")))
    assert json.loads((run / "metrics.json").read_text())["method"]["quantized_linear_layers"] > 0


def _tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
    )
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)
    return model


def _loss_and_grads(model, checkpointing: bool):
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids = torch.randint(1, 100, (2, 24), generator=torch.Generator().manual_seed(3))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("sparse_pass", ["forward", "backward"])
def test_gradient_checkpointing_changes_nothing_with_sparselora_on(sparse_pass, tmp_path):
    model = _tiny_llama()
    checkpointed = copy.deepcopy(model)
    engines = []
    for copy_ in (model, checkpointed):
        sparse = SparseLoRAConfig(
            sparse_pass=sparse_pass,
            ffn_sparsity=0.5,
            attn_sparsity=0.5,
            svd_rank=4,
            dense_output_tokens=False,
            svd_cache=str(tmp_path / "svd.safetensors"),
        )
        engines.append(apply_sparselora(copy_, sparse, progress=False))
        engines[-1].start_sparse_now()
    loss, grads = _loss_and_grads(model, checkpointing=False)
    loss_ckpt, grads_ckpt = _loss_and_grads(checkpointed, checkpointing=True)
    assert checkpointed.base_model.model.model.gradient_checkpointing
    assert torch.equal(loss, loss_ckpt)
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-7, msg=name)
    assert all(block.keep is not None for block in engines[1].ffn)  # the checkpointed model ran sparse


def test_a_run_with_gradient_checkpointing_and_eval_steps(tiny_llama_dir, data_env, tmp_path):
    keys = tiny_run(
        tiny_llama_dir,
        tmp_path,
        task="wikitext2",
        method="sparselora",
        max_length=32,
        max_train_samples=32,
        max_eval_samples=8,
        batch_size=4,
        max_steps=4,
        eval_steps=2,
        gradient_checkpointing=True,
        ffn_sparsity=0.5,
        sparse_warmup_ratio=0.0,
        dense_output_tokens=False,
        svd_rank=4,
        svd_cache=str(tmp_path / "svd.safetensors"),
        training_args={"report_to": ["tensorboard"]},
    )
    run = train(build_config(keys))
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log if "eval_loss" in entry] == [2, 4]
    assert [entry["step"] for entry in log if "loss" in entry] == [2, 4]
    events = sorted((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file in the run folder"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for event_file in events:
        tags |= set(EventAccumulator(str(event_file)).Reload().Tags()["scalars"])
    # the realised sparsity, its phase and the selection's share per logged step; the final evaluation too
    assert {"train/sparselora/ffn_kept_fraction", "train/sparselora/sparse_step"} <= tags, tags
    assert {"train/sparselora/selection_share", "train/final/eval_loss", "train/final/perplexity"} <= tags, tags
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["gradient_checkpointing"] is True
    assert metrics["method"]["selection_seconds"] > 0
    assert (
        f"Optimiser: `{metrics['train']['optim']}`, precision fp32, gradient checkpointing"
        in (run / "README.md").read_text()
    )


def test_hf_names_of_run_keys_are_aliases():
    assert build_config({"per_device_train_batch_size": 8, "num_train_epochs": 2}).batch_size == 8
    assert build_config({"lr_scheduler_type": "cosine"}).lr_scheduler == "cosine"
    with pytest.raises(ConfigError, match="same setting; keep only 'batch_size'"):
        build_config({"per_device_train_batch_size": 8, "batch_size": 4})
