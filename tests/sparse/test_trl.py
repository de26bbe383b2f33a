"""SparseLoRA inside TRL's SFTTrainer: the engine's callback drives the schedule, the layers run sparse."""

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from sparselora.sparse.apply import apply_sparselora
from sparselora.sparse.settings import SparseLoRAConfig

trl = pytest.importorskip("trl")


@pytest.mark.parametrize("sparse_pass", ["forward", "backward"])
def test_sft_trainer_trains_sparse_with_the_engine_callback(sparse_pass, tiny_llama_dir, tmp_path):
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    sparse = SparseLoRAConfig(
        sparse_pass=sparse_pass,
        ffn_sparsity=0.5,
        attn_sparsity=0.5,
        svd_rank=4,
        sparse_warmup_ratio=0.0,
        dense_output_tokens=False,
        svd_cache=str(tmp_path / "svd.safetensors"),
    )
    engine = apply_sparselora(model, sparse, progress=False)
    texts = [f"the number {i} follows {i - 1} and comes before {i + 1}." for i in range(1, 33)]
    args = trl.SFTConfig(
        output_dir=str(tmp_path / "sft"),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        max_length=32,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = trl.SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"text": texts}),
        processing_class=tokenizer,
        callbacks=[engine.callback()],
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer.train()
    assert engine.step == 3 and not engine.calibrating  # the callback fed the global step (0..3)
    assert all(block.keep is not None for block in engine.ffn)  # the last steps ran sparse
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if p.requires_grad)
