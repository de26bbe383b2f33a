"""The output-token rule in the FFN: output tokens dense, context tokens sparse."""

import copy

import torch
from peft import LoraConfig, get_peft_model

from sparselora.sparse.apply import apply_sparselora
from sparselora.sparse.settings import SparseLoRAConfig
from tests.sparse.models import _batch, _fresh_config, _loss_and_grads, _peft_model


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
