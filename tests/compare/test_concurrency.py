"""Two `sparselora compare` processes on one results folder: every cell trained once, tables intact."""

import os
import subprocess
import sys

import pandas as pd
import yaml

from sparselora.compare.plan import plan_cells
from tests.helpers import tiny_comparison


def test_two_comparisons_on_one_folder_share_the_cells(tiny_bert_dir, data_env, tmp_path):
    config = tiny_comparison(tiny_bert_dir, tmp_path / "results", seeds=(0, 1))
    config_path = tmp_path / "compare.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    env = {**os.environ, "SPARSELORA_DATA_DIR": str(data_env)}
    command = [sys.executable, "-m", "sparselora.cli", "compare", str(config_path)]
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=900)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs

    trained = [int(next(line for line in out.splitlines() if "cell(s) trained" in line).split()[0]) for out in outputs]
    assert sum(trained) == len(plan_cells(config)) == 4  # no cell trained twice, none missed
    runs = tmp_path / "results" / "runs"
    assert all((runs / cell.run_name / "metrics.json").is_file() for cell in plan_cells(config))
    table = pd.read_csv(tmp_path / "results" / "sst2" / "results.csv")
    assert sorted(zip(table["label"], table["seed"], strict=True)) == [
        ("lora", 0),
        ("lora", 1),
        ("lora_l1", 0),
        ("lora_l1", 1),
    ]
    assert not list((tmp_path / "results").rglob(".*.tmp*"))  # no temporary file left behind
