"""Tiny BERT and LLaMA models with LoRA, a batch, and their loss and gradients: shared by the sparse tests."""

import copy

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification, BertConfig, LlamaConfig


def _configs(hidden: int) -> dict:
    """A 2-layer BERT and LLaMA (GQA: 4 query heads over 2 key/value heads), FFN 4× the hidden width."""
    shared = {"vocab_size": 100, "hidden_size": hidden, "num_hidden_layers": 2, "num_attention_heads": 4}
    return {
        "bert": BertConfig(**shared, intermediate_size=4 * hidden),
        "llama": LlamaConfig(**shared, num_key_value_heads=2, intermediate_size=4 * hidden, pad_token_id=0),
    }


CONFIGS = _configs(32)
# Wider models for FLOPs checks: a rank-2 estimator is then ~3% of a 128-wide projection, as at real sizes.
WIDE = _configs(128)


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
