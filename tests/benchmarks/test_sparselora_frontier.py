"""The frontier script pairs a comparison's accuracy with a speed benchmark of the same sparsity."""

import importlib.util
import json
import subprocess
import sys

import pytest
import yaml

from sparselora.config import build_config
from sparselora.training.loop import train
from tests.helpers import REPO, tiny_run

SPARSITY = {"ffn_sparsity": 0.5, "attn_sparsity": 0.5, "svd_rank": 4, "dense_output_tokens": False}
SPARSE_CELL = {"method": "sparselora", "sparse_warmup_ratio": 0.2, "sparse_cooldown_ratio": 0.2, **SPARSITY}


def _frontier_module():
    spec = importlib.util.spec_from_file_location("sparselora_frontier", REPO / "benchmarks" / "sparselora_frontier.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


frontier = _frontier_module()


@pytest.fixture(scope="module")
def comparison(tiny_bert_dir, shared_data_dir, tmp_path_factory):
    """A comparison folder's runs: lora and a sparse cell (10 steps: 2 dense, 6 sparse, 2 dense), seeds 0-2."""
    out = tmp_path_factory.mktemp("frontier")
    shared = tiny_run(tiny_bert_dir, out / "runs", max_steps=10, data_dir=str(shared_data_dir))
    for label, keys in (("lora", {}), ("sparse", SPARSE_CELL)):
        for seed in range(3):
            train(build_config(shared | keys | {"seed": seed, "name": f"sst2__{label}__s{seed}"}))
    return out, shared


@pytest.fixture(scope="module")
def benchmark(comparison, tmp_path_factory) -> dict:
    """A real (2-step) speed benchmark at the sparse cell's sparsity."""
    _, shared = comparison
    folder = tmp_path_factory.mktemp("bench")
    config = folder / "bench.yaml"
    config.write_text(yaml.safe_dump(shared | {"method": "sparselora", "output_dir": str(folder)} | SPARSITY))
    out = folder / "bench.json"
    script = str(REPO / "benchmarks" / "sparselora_speed.py")
    command = [sys.executable, script, "--config", str(config), "--warmup", "1", "--steps", "2", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text())


def _run_frontier(monkeypatch, results_dir, benchmark_paths, out) -> None:
    point = "sparse=" + ",".join(str(path) for path in benchmark_paths)
    argv = ["sparselora_frontier.py", str(results_dir), "--point", point, "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    frontier.main()


def test_frontier_pairs_seeds_and_scales_the_speedup_by_the_sparse_steps(
    comparison, benchmark, tmp_path, monkeypatch, capsys
):
    out, _ = comparison
    (tmp_path / "bench.json").write_text(json.dumps(benchmark))
    _run_frontier(monkeypatch, out, [tmp_path / "bench.json"], tmp_path / "f")
    (point,) = json.loads((tmp_path / "f.json").read_text())["points"]
    assert (tmp_path / "f.png").is_file() and "| sparse | forward | 3 |" in capsys.readouterr().out
    assert point["seeds"] == [0, 1, 2] and point["sparse_step_share"] == pytest.approx(0.6)

    def accuracy(label, seed):
        metrics = json.loads((out / "runs" / f"sst2__{label}__s{seed}" / "metrics.json").read_text())
        return metrics["task_metrics"]["accuracy"]

    differences = [accuracy("sparse", s) - accuracy("lora", s) for s in range(3)]
    assert point["delta_pt"] == pytest.approx(100 * sum(differences) / 3)
    assert point["run_speedup"] == pytest.approx(1 / (0.4 + 0.6 / benchmark["speedup"]))


def test_a_point_with_several_benchmark_runs_takes_their_median_speedup(comparison, benchmark, tmp_path, monkeypatch):
    out, _ = comparison
    paths = []
    for factor in (3.0, 1.0, 2.0):  # the same run's record with its speedup scaled: only the median is checked
        path = tmp_path / f"bench{factor}.json"
        path.write_text(json.dumps(benchmark | {"speedup": factor * benchmark["speedup"]}))
        paths.append(path)
    _run_frontier(monkeypatch, out, paths, tmp_path / "f")
    (point,) = json.loads((tmp_path / "f.json").read_text())["points"]
    assert point["sparse_step_speedup"] == pytest.approx(2.0 * benchmark["speedup"])
    assert len(point["sparse_step_speedups"]) == 3


def test_a_benchmark_of_other_sparsity_or_a_missing_one_is_refused(comparison, benchmark, tmp_path, monkeypatch):
    out, _ = comparison
    (tmp_path / "bench.json").write_text(json.dumps(benchmark))
    other = json.loads(json.dumps(benchmark))
    other["sparselora"]["ffn_sparsity_per_layer"] = [0.25 for _ in other["sparselora"]["ffn_sparsity_per_layer"]]
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match=r"ffn_sparsity_per_layer .* rerun the benchmark"):
        _run_frontier(monkeypatch, out, [tmp_path / "bench.json", tmp_path / "other.json"], tmp_path / "f")
    with pytest.raises(SystemExit, match="no benchmark JSON at"):
        _run_frontier(monkeypatch, out, [tmp_path / "none.json"], tmp_path / "f")
    assert not (tmp_path / "f.json").exists()  # nothing written on bad input


def test_points_of_an_earlier_frontier_join_and_a_remeasured_cell_replaces_its_old_point(
    comparison, benchmark, tmp_path, monkeypatch
):
    out, _ = comparison
    (tmp_path / "bench.json").write_text(json.dumps(benchmark))
    _run_frontier(monkeypatch, out, [tmp_path / "bench.json"], tmp_path / "earlier")
    earlier = json.loads((tmp_path / "earlier.json").read_text())
    old = earlier["points"][0] | {"label": "old_cell", "sparse_pass": "backward", "sparse_step_speedup": 1.5}
    stale = earlier["points"][0] | {"accuracy": 0.0}
    (tmp_path / "earlier.json").write_text(json.dumps(earlier | {"points": [old, stale]}))
    point = f"sparse={tmp_path / 'bench.json'}"
    argv = ["sparselora_frontier.py", str(out), "--point", point, "--include", str(tmp_path / "earlier.json")]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path / "both")])
    frontier.main()
    points = {point["label"]: point for point in json.loads((tmp_path / "both.json").read_text())["points"]}
    assert set(points) == {"sparse", "old_cell"} and points["sparse"]["accuracy"] > 0
    assert points["old_cell"]["sparse_pass"] == "backward"
