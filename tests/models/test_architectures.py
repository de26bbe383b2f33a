import dataclasses

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    BertConfig,
    DistilBertConfig,
    GPT2Config,
    LlamaConfig,
    RobertaConfig,
)

from sparselora.models import (
    ArchSpec,
    UnknownArchitectureError,
    architectures,
    get_arch,
    iter_projections,
    num_layers,
    register_architecture,
    target_module_names,
)
from sparselora.sparse.apply import apply_sparselora
from sparselora.sparse.settings import SparseLoRAConfig

TINY = {
    "bert": BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    ),
    "roberta": RobertaConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    ),
    "distilbert": DistilBertConfig(vocab_size=100, dim=16, n_layers=2, n_heads=2, hidden_dim=32),
    "llama": LlamaConfig(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
    ),
    "gpt2": GPT2Config(vocab_size=100, n_embd=16, n_layer=2, n_head=2),
}
EXPECTED_ROLES = {
    "bert": {"q", "k", "v", "o", "up", "down"},
    "roberta": {"q", "k", "v", "o", "up", "down"},
    "distilbert": {"q", "k", "v", "o", "up", "down"},
    "llama": {"q", "k", "v", "o", "gate", "up", "down"},
    "gpt2": {"qkv", "o", "up", "down"},
}


@pytest.mark.parametrize("family", sorted(TINY))
def test_every_layer_has_every_role(family):
    config = TINY[family]
    config.pad_token_id = 0
    model = AutoModelForSequenceClassification.from_config(config)
    spec = get_arch(config.model_type)
    projections = list(iter_projections(model, spec))
    assert num_layers(model, spec) == 2
    for layer in range(2):
        assert {p.role for p in projections if p.layer == layer} == EXPECTED_ROLES[family]
    assert len(projections) == 2 * len(EXPECTED_ROLES[family])


def test_bert_attention_output_and_ffn_output_are_told_apart():
    model = AutoModelForSequenceClassification.from_config(TINY["bert"])
    spec = get_arch("bert")
    down = [p.name for p in iter_projections(model, spec) if p.role == "down"]
    out = [p.name for p in iter_projections(model, spec) if p.role == "o"]
    assert all(name.endswith("layer.0.output.dense") or name.endswith("layer.1.output.dense") for name in down)
    assert all("attention.output.dense" in name for name in out)
    # "dense" alone would match both: the helper must fall back to something unambiguous.
    assert target_module_names(model, spec, ("down",)) != ["dense"]
    assert target_module_names(model, spec, ("q", "v")) == ["query", "value"]


def test_default_lora_targets_per_family():
    model = AutoModelForSequenceClassification.from_config(TINY["llama"])
    spec = get_arch("llama")
    assert target_module_names(model, spec, spec.default_lora_roles) == ["q_proj", "v_proj"]


def test_unknown_architecture_error_names_the_fix():
    with pytest.raises(UnknownArchitectureError, match="target_modules"):
        get_arch("mamba")


NEW_FAMILIES = {  # model type → roles mapped (the FFN of Phi-3 is fused, Mixtral's are experts)
    "gemma": {"q", "k", "v", "o", "gate", "up", "down"},
    "gemma2": {"q", "k", "v", "o", "gate", "up", "down"},
    "olmo2": {"q", "k", "v", "o", "gate", "up", "down"},
    "phi3": {"qkv", "o", "down"},
    "mixtral": {"q", "k", "v", "o"},
}
LLAMA_SIZES = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1}


@pytest.mark.parametrize("model_type", sorted(NEW_FAMILIES))
def test_gemma_phi3_olmo2_mixtral_layers_have_their_roles(model_type):
    config = AutoConfig.for_model(model_type, vocab_size=100, intermediate_size=32, head_dim=8, **LLAMA_SIZES)
    config.pad_token_id = 0
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    projections = list(iter_projections(model, get_arch(model_type)))
    for layer in range(2):
        assert {p.role for p in projections if p.layer == layer} == NEW_FAMILIES[model_type]


def test_a_registered_architecture_is_found_and_runs_sparse(monkeypatch):
    monkeypatch.setattr(architectures, "ARCHITECTURES", list(architectures.ARCHITECTURES))
    with pytest.raises(UnknownArchitectureError, match="register_architecture"):
        get_arch("starcoder2")
    spec = ArchSpec(
        family="starcoder2",
        model_types=("starcoder2",),
        kind="decoder",
        block_pattern=r"layers",
        projections={
            "q": "self_attn.q_proj",
            "k": "self_attn.k_proj",
            "v": "self_attn.v_proj",
            "o": "self_attn.o_proj",
            "up": "mlp.c_fc",
            "down": "mlp.c_proj",
        },
        ffn="mlp",
        attention="llama",
    )
    assert register_architecture(spec) is spec and get_arch("starcoder2") is spec
    with pytest.raises(ValueError, match="already in the architecture map"):
        register_architecture(spec)
    config = AutoConfig.for_model("starcoder2", vocab_size=100, intermediate_size=32, pad_token_id=0, **LLAMA_SIZES)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="SEQ_CLS"))
    ids = torch.randint(1, 100, (2, 8))
    with torch.no_grad():
        dense = peft(input_ids=ids).logits
    engine = apply_sparselora(peft, SparseLoRAConfig(sparse_pass="backward", ffn_sparsity=0.5), progress=False)
    engine.start_sparse_now()
    assert len(engine.ffn) == 2
    with torch.no_grad():
        torch.testing.assert_close(peft(input_ids=ids).logits, dense)


def test_replace_moves_a_model_type_to_the_new_spec(monkeypatch):
    monkeypatch.setattr(architectures, "ARCHITECTURES", list(architectures.ARCHITECTURES))
    mine = dataclasses.replace(get_arch("mistral"), family="my-mistral", model_types=("mistral",))
    register_architecture(mine, replace=True)
    assert get_arch("mistral").family == "my-mistral" and "mistral" not in get_arch("llama").model_types
