import pytest
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    DistilBertConfig,
    GPT2Config,
    LlamaConfig,
    RobertaConfig,
)

from sparselora.models import UnknownArchitectureError, get_arch, iter_projections, num_layers, target_module_names

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
