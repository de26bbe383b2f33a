"""A method is one file: a module registered from outside runs through every part of sparselora."""

import json

import pytest

from sparselora.compare.plan import CompareConfig
from sparselora.compare.runner import run_comparison
from sparselora.config import build_config
from sparselora.evaluation.rerun import evaluate_run
from sparselora.flops import config_flops
from sparselora.methods import get_method
from sparselora.methods.registry import PLUGINS_ENV
from sparselora.report.comparison import build_report
from sparselora.training.loop import train
from tests.helpers import tiny_run

PLUGIN = "tests.methods.lora_fa_plugin"


@pytest.fixture
def plugin(monkeypatch):
    monkeypatch.setenv(PLUGINS_ENV, PLUGIN)  # the comparison's cell processes load it from here
    import tests.methods.lora_fa_plugin as module  # this process: registered on import

    return module


def test_a_plugin_method_trains_evaluates_counts_compares_and_cites(plugin, tiny_bert_dir, data_env, tmp_path):
    assert get_method("lora_fa").summary.startswith("LoRA-FA")
    keys = tiny_run(tiny_bert_dir, tmp_path / "runs", method="lora_fa", max_steps=2)
    run = train(build_config(keys))
    recorded, measured = evaluate_run(run)
    assert measured["eval_loss"] == pytest.approx(recorded["eval_loss"], abs=1e-6)
    card = (run / "README.md").read_text()
    assert plugin.LORA_FA_CITATION in card and "Only the B matrices trained (rank 8)." in card

    sparse, dense = config_flops(build_config(keys).to_flat_dict(), seq_len=16, batch_size=4)
    assert sparse.total("train") == dense.total("train") > 0

    comparison = CompareConfig(
        name="plugin",
        output_dir=tmp_path / "compare",
        reference="lora",
        seeds=[0],
        shared={k: v for k, v in keys.items() if k not in ("method", "output_dir", "name", "seed", "task")},
        methods={"lora": {}, "lora_fa": {}},
    )
    status = run_comparison(comparison, progress=False)
    assert [cell.label for cell in status.finished] == ["lora", "lora_fa"] and not status.failed
    trainable = {
        label: json.loads((tmp_path / "compare" / "runs" / f"sst2__{label}__s0" / "metrics.json").read_text())["params"]
        for label in ("lora", "lora_fa")
    }
    a_matrices = 2 * 2 * 8 * 32  # query and value of 2 layers, rank 8, 32 wide
    assert trainable["lora_fa"]["trainable"] == trainable["lora"]["trainable"] - a_matrices
    build_report(tmp_path / "compare", command="test")
    assert "lora_fa" in (tmp_path / "compare" / "sst2" / "results.md").read_text()
