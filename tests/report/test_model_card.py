"""The model card reads every method-specific line from the method's MethodSpec."""

import json

import yaml

from sparselora.methods import get_method
from sparselora.methods.lora import LORA_CITATION
from sparselora.report.model_card import _adapter_section


def test_a_methods_card_rows_replace_loras(tmp_path):
    adapter = {"peft_type": "ADALORA", "r": 8, "init_r": 12, "target_r": 4, "lora_alpha": 16, "lora_dropout": 0.1}
    (tmp_path / "adapter_config.json").write_text(json.dumps(adapter | {"target_modules": ["query"]}))
    lines = _adapter_section(tmp_path, get_method("adalora"))
    assert "| Rank r | 12 at start → 4 on average (budget reallocated) |" in lines
    assert "| Rank r | 8 |" in _adapter_section(tmp_path, get_method("lora"))


def test_the_card_cites_the_methods_papers_and_parses(tiny_bert_dir, data_env, tmp_path):
    from sparselora.config import build_config
    from sparselora.training.loop import train
    from tests.conftest import tiny_run

    run = train(build_config(tiny_run(tiny_bert_dir, tmp_path, method="dora", max_steps=1)))
    card = (run / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "peft" and "dora" in front["tags"]
    citations = card.split("## Citation")[1]
    assert LORA_CITATION in citations and "DoRA: Weight-Decomposed Low-Rank Adaptation" in citations
    assert "| 0 | negative |" in card and "| 1 | positive |" in card  # SST-2's class names
