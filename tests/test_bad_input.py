"""The bad-input suite: every kind of bad input gets a one-paragraph error, a non-zero exit, and harms nothing.

Each case runs the real command line (``sparselora.cli.main``) in-process. Before each case a finished
run folder exists; afterwards every file it held must be byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from transformers import BertConfig, BertModel

from sparselora.cli import main
from sparselora.config import build_config
from sparselora.training.loop import train
from tests.helpers import tiny_run


@dataclass
class World:
    root: Path  # a scratch folder per case
    runs: Path  # holds the finished run "good"
    model: Path
    other_model: Path  # same family, other shapes
    data: Path

    @property
    def good(self) -> Path:
        return self.runs / "good"

    def train_args(self, *keys: str) -> list[str]:
        """`train` on the tiny model with extra --set keys, writing into the runs folder under test."""
        args = ["train", "--set", f"model={self.model}", "--set", "max_steps=2", "--set", "progress=false"]
        args += ["--set", f"data_dir={self.data}", "--output-dir", str(self.runs)]
        for key in keys:  # later --set keys win
            args += ["--set", key]
        return args

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    def sst2_copy(self, train_text: str | bytes) -> Path:
        """A data folder whose sst2/train.tsv is ``train_text`` (validation stays real)."""
        folder = self.root / "data"
        (folder / "sst2").mkdir(parents=True, exist_ok=True)
        shutil.copy(self.data / "sst2" / "validation.tsv", folder / "sst2" / "validation.tsv")
        self.write("data/sst2/train.tsv", train_text)
        return folder

    def train_on_sst2(self, train_text: str | bytes) -> list[str]:
        """`train` on a data folder whose sst2/train.tsv is ``train_text``."""
        return self.train_args(f"data_dir={self.sst2_copy(train_text)}")

    def run_copy(self, change: Callable[[Path], None]) -> Path:
        """A copy of the finished run, damaged by ``change``."""
        copy = self.root / "copied_run"
        shutil.copytree(self.good, copy)
        change(copy)
        return copy


@pytest.fixture(scope="module")
def world_template(tiny_bert_dir, shared_data_dir, tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("bad-input")
    os.environ["SPARSELORA_DATA_DIR"] = str(shared_data_dir)
    train(build_config(tiny_run(tiny_bert_dir, root / "runs", name="good", max_steps=2)))
    torch.manual_seed(0)
    other = root / "other-model"
    BertModel(
        BertConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96)
    ).save_pretrained(other)
    shutil.copy(tiny_bert_dir / "tokenizer.json", other / "tokenizer.json")
    shutil.copy(tiny_bert_dir / "tokenizer_config.json", other / "tokenizer_config.json")
    return World(root / "case", root / "runs", tiny_bert_dir, other, shared_data_dir)


class Hostile:
    """Unpickling this runs a shell command: loading it would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickle_adapter(run: Path, marker: Path) -> None:
    (run / "adapter_model.safetensors").unlink()
    (run / "adapter_model.bin").write_bytes(pickle.dumps(Hostile(marker)))


def _other_model(world: World) -> Callable[[Path], None]:
    def change(run: Path) -> None:
        config = yaml.safe_load((run / "config.yaml").read_text())
        (run / "config.yaml").write_text(yaml.safe_dump({**config, "model": str(world.other_model)}))

    return change


TRAIN_TSV = "sentence\tlabel\nit is good\t1\nit is bad\t0\n"
BROKEN_JSONL = '{"text": "good", "label": 1}\n{"text": "bad", "label": 0\n'
NULL_LABEL_JSONL = '{"text": "good", "label": 1}\n{"text": "bad", "label": null}\n'


def _truncate_adapter(run: Path) -> None:
    weights = run / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _string_accuracy(run: Path) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["task_metrics"]["accuracy"] = "high"
    (run / "metrics.json").write_text(json.dumps(metrics))


LATIN1_TSV = TRAIN_TSV.replace("good", "göod").encode("latin-1")

# case → (arguments, a fragment the error must contain)
CASES: dict[str, Callable[[World], tuple[list[str], str]]] = {
    # config
    "unknown key": lambda w: (w.train_args("lerning_rate=0.001"), "Did you mean 'learning_rate'"),
    "wrong type": lambda w: (w.train_args("lora_r=abc"), "lora_r: Input should be a valid integer"),
    "missing config file": lambda w: (["train", str(w.root / "nope.yaml")], "config file not found"),
    "empty config file": lambda w: (["train", str(w.write("empty.yaml", ""))], "is empty"),
    "YAML syntax error": lambda w: (["train", str(w.write("bad.yaml", "model: [minilm\n"))], "is not valid YAML"),
    "config not a mapping": lambda w: (["train", str(w.write("list.yaml", "- lora\n"))], "must hold a mapping"),
    "YAML with a Python tag": lambda w: (
        ["train", str(w.write("evil.yaml", f'model: !!python/object/apply:os.system ["touch {w.root}/pwned"]\n'))],
        "is not valid YAML",
    ),
    "--set without =": lambda w: (w.train_args("lora_r"), "--set expects key=value"),
    "unknown method": lambda w: (w.train_args("method=lorra"), "unknown method 'lorra'"),
    "unknown task": lambda w: (w.train_args("task=sst3"), "unknown task 'sst3'"),
    "unknown model": lambda w: (w.train_args(f"model={w.root}/no-such-model"), "could not load model"),
    "negative learning rate": lambda w: (
        w.train_args("learning_rate=-1"),
        "learning_rate: Input should be greater than 0",
    ),
    "rank 0": lambda w: (w.train_args("lora_r=0"), "lora_r: Input should be greater than 0"),
    "sparsity 1": lambda w: (w.train_args("method=sparselora", "ffn_sparsity=1.0"), "ffn_sparsity"),
    "unknown predictor": lambda w: (
        w.train_args("method=sparselora", "predictor=best"),
        "predictor: Input should be 'svd', 'oracle' or 'random'",
    ),
    "batch size 0": lambda w: (w.train_args("batch_size=0"), "batch_size: Input should be greater than 0"),
    "negative L1": lambda w: (w.train_args("method=lora_l1", "l1_lambda=-1"), "l1_lambda"),
    "prune ratio 1": lambda w: (w.train_args("method=lora_prune", "prune_ratio=1.0"), "prune_ratio"),
    "another method's key": lambda w: (w.train_args("ffn_sparsity=0.5"), "a key of method(s) sparselora"),
    # data
    "data folder missing": lambda w: (w.train_args(f"data_dir={w.root}/no-data"), "does not exist"),
    "empty data file": lambda w: (w.train_on_sst2(""), "is empty"),
    "missing column": lambda w: (
        w.train_on_sst2(TRAIN_TSV.replace("sentence", "text")),
        "column 'sentence' (read by task sst2) not in the train split",
    ),
    "non-numeric label": lambda w: (
        w.train_on_sst2(TRAIN_TSV.replace("1", "positive")),
        "label 'positive' is not one of 0..1",
    ),
    "label out of range": lambda w: (
        w.train_on_sst2(TRAIN_TSV.replace("1", "7")),
        "label 7 is not one of 0..1",
    ),
    "non-UTF-8 bytes": lambda w: (
        w.train_on_sst2(LATIN1_TSV),
        "is not UTF-8 text",
    ),
    "file task without a file": lambda w: (w.train_args("task=csv"), "config key 'train_file' is required"),
    "file task, file missing": lambda w: (
        w.train_args("task=csv", f"train_file={w.root}/no.csv", f"eval_file={w.root}/no.csv"),
        "file not found",
    ),
    # run folders
    "eval: folder missing": lambda w: (["eval", str(w.root / "no-run")], "does not exist"),
    "eval: half-written folder": lambda w: (
        ["eval", str(w.run_copy(lambda r: (r / "metrics.json").unlink()))],
        "missing metrics.json",
    ),
    "eval: failed run": lambda w: (
        ["eval", str(w.run_copy(lambda r: (r / "status.json").write_text('{"state": "failed", "error": "boom"}')))],
        "not a finished run (state: failed: boom)",
    ),
    "eval: run from another model": lambda w: (["eval", str(w.run_copy(_other_model(w)))], "do not fit model"),
    "eval: adapter config not JSON": lambda w: (
        ["eval", str(w.run_copy(lambda r: (r / "adapter_config.json").write_text("{'r': 8,")))],
        "is not valid JSON",
    ),
    "eval: pickle instead of safetensors": lambda w: (
        ["eval", str(w.run_copy(lambda r: _pickle_adapter(r, w.root / "pwned")))],
        "pickle file(s) adapter_model.bin",
    ),
    "train over a finished run": lambda w: (w.train_args("name=good"), "already holds a finished run"),
    "resume with nothing to resume": lambda w: ([*w.train_args("name=fresh"), "--resume"], "nothing to resume"),
    "report: not a results folder": lambda w: (["report", str(w.runs)], "not a comparison results folder"),
    "compare: unknown key": lambda w: (["compare", str(w.write("c.yaml", "methodz: {lora: {}}\n"))], "methodz"),
    "svd rank too large": lambda w: (
        ["svd", "build", str(w.model), "--rank", "64", "--out", str(w.root / "f.safetensors")],
        "svd_rank",
    ),
    # YAML and config values
    "--set YAML syntax error": lambda w: (w.train_args("name='oops"), "--set name is not valid YAML"),
    "non-string YAML key": lambda w: (["train", str(w.write("k.yaml", "1: 2\n"))], "keys must be names"),
    "duplicate YAML key": lambda w: (
        ["train", str(w.write("d.yaml", "lora_r: 4\nlora_r: 8\n"))],
        "key 'lora_r' appears twice",
    ),
    "infinite learning rate": lambda w: (w.train_args("learning_rate=inf"), "Input should be a finite number"),
    "fewer epochs than one step": lambda w: (w.train_args("max_steps=", "epochs=1e-9"), "less than one optimiser step"),
    "rank above the projection size": lambda w: (w.train_args("lora_r=1000000"), "is larger than the smaller side"),
    "max_length beyond the model's positions": lambda w: (
        w.train_args("max_length=1000000000"),
        "positions; use max_length <=",
    ),
    "no target modules": lambda w: (w.train_args("target_modules=[]"), "an empty list targets nothing"),
    # paths built from input
    "name is the parent folder": lambda w: (w.train_args("name=.."), "must be a single folder name"),
    "name is the runs folder itself": lambda w: (w.train_args("name=."), "must be a single folder name"),
    "name with a path": lambda w: (w.train_args("name=../escaped"), "must be a single folder name"),
    "absolute name": lambda w: (w.train_args(f"name={w.root}"), "must be a single folder name"),
    "name with a control character": lambda w: (w.train_args('name="a\\tb"'), "contains a control character"),
    "output_dir under /proc": lambda w: ([*w.train_args(), "--output-dir", "/proc/sparselora-runs"], "cannot hold"),
    "output_dir under /sys": lambda w: ([*w.train_args(), "--output-dir", "/sys/kernel/sparselora"], "cannot hold"),
    "output_dir is a file": lambda w: (
        [*w.train_args(), "--output-dir", str(w.write("a-file", "x"))],
        "is an existing file, not a folder",
    ),
    "compare label with a path": lambda w: (
        ["compare", str(w.write("c.yaml", "methods: {'../x': {method: lora}}\n"))],
        "must be a single folder name",
    ),
    "compare --seeds not integers": lambda w: (
        ["compare", str(w.write("c.yaml", "methods: {lora: {}}\n")), "--seeds", "a,b"],
        "--seeds expects comma-separated integers",
    ),
    "calibrate --out is a folder": lambda w: (
        ["calibrate", str(w.write("s.yaml", "method: sparselora\n")), "--out", str(w.root)],
        "is a folder: give a file path",
    ),
    "flops --json is a folder": lambda w: (["flops", "--json", str(w.root)], "is a folder: give a file path"),
    "study --out is a file": lambda w: (
        ["study", "svd-vs-random", "--quick", "--phase", "a", "--out", str(w.write("f", "x"))],
        "is an existing file",
    ),
    # data files
    "jsonl broken at a line": lambda w: (
        w.train_args("task=jsonl", f"train_file={w.write('b.jsonl', BROKEN_JSONL)}", f"eval_file={w.root}/b.jsonl"),
        "line 2: not valid JSON",
    ),
    "train_file is a folder": lambda w: (
        w.train_args("task=csv", f"train_file={w.root}", f"eval_file={w.root}"),
        "is a folder; give the path of a data file",
    ),
    "train_file is /dev/null": lambda w: (
        w.train_args("task=csv", "train_file=/dev/null", "eval_file=/dev/null"),
        "is not a regular file",
    ),
    "empty label": lambda w: (
        w.train_args("task=jsonl", f"train_file={w.write('n.jsonl', NULL_LABEL_JSONL)}", f"eval_file={w.root}/n.jsonl"),
        "data row 2: label column 'label' is empty",
    ),
    "label column is the text column": lambda w: (
        w.train_args(
            "task=tsv",
            f"train_file={w.write('t.tsv', TRAIN_TSV)}",
            f"eval_file={w.root}/t.tsv",
            "text_column=sentence",
            "label_column=sentence",
        ),
        "which is also a text column",
    ),
    # damaged run folders
    "eval: truncated adapter": lambda w: (["eval", str(w.run_copy(_truncate_adapter))], "not a readable safetensors"),
    "eval: metrics.json is {}": lambda w: (
        ["eval", str(w.run_copy(lambda r: (r / "metrics.json").write_text("{}")))],
        "has no `task_metrics` mapping",
    ),
    "eval: accuracy is a string": lambda w: (["eval", str(w.run_copy(_string_accuracy))], "non-numeric task metrics"),
    "eval: garbage status.json": lambda w: (
        ["eval", str(w.run_copy(lambda r: (r / "status.json").write_text("garbage")))],
        "is not a status file sparselora wrote",
    ),
    # command-line values
    "flops --seq-len 0": lambda w: (["flops", "--seq-len", "0"], "Invalid value for '--seq-len'"),
    "flops negative batch": lambda w: (["flops", "--batch-size", "-4"], "Invalid value for '--batch-size'"),
    "runs of a missing folder": lambda w: (["runs", str(w.root / "nowhere")], "does not exist"),
    "sparse recall --batches 0": lambda w: (
        ["sparse", "recall", str(w.write("s.yaml", "method: sparselora\n")), "--batches", "0"],
        "Invalid value for '--batches'",
    ),
    "eval --tolerance -1": lambda w: (["eval", str(w.good), "--tolerance", "-1"], "Invalid value for '--tolerance'"),
    "eval --device nonsense": lambda w: (["eval", str(w.good), "--device", "gpu0"], "is not a device name"),
    # the LLM training path
    "unknown precision": lambda w: (w.train_args("precision=fp8"), "precision: Input should be 'auto'"),
    "fp16 on the CPU": lambda w: (w.train_args("precision=fp16"), "fp16 needs a CUDA device"),
    "training_args: unknown field": lambda w: (w.train_args("training_args={optimizer: sgd}"), "did you mean 'optim'"),
    "training_args: a run key": lambda w: (w.train_args("training_args={num_train_epochs: 3}"), "run key `epochs`"),
    "training_args: refused by transformers": lambda w: (
        w.train_args("training_args={optim: no-such-optimizer}"),
        "transformers refused them",
    ),
    "HF alias and run key together": lambda w: (
        w.train_args("per_device_train_batch_size=8", "batch_size=4"),
        "keep only 'batch_size'",
    ),
}


# the newer features: trackers, metrics, datasets, SparseLoRA's keys, comparisons' timing, export
def _compare_yaml(w, extra: str = "", methods: str = "methods: {lora: {}}\n") -> str:
    return str(
        w.write(
            "cmp.yaml",
            (
                f"name: c\noutput_dir: {w.root / 'cmp'}\ntasks: [sst2]\nseeds: [0]\n"
                f"shared: {{model: {w.model}, max_steps: 2, progress: false, data_dir: {w.data}}}\n" + methods + extra
            ),
        )
    )


def _parquet(w, name: str = "t.parquet") -> str:
    import pandas as pd

    path = w.root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"sentence": ["good", "bad"], "label": [1, 0]}).to_parquet(path)
    return str(path)


def _existing(w):
    folder = w.root / "existing"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mine.txt").write_text("keep")
    return folder


def _dataset_folder(w):
    folder = w.root / "ds"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.csv").write_text("text,label\ngood,1\nbad,0\n")
    (folder / "validation.csv").write_text("text,label\ngood,1\nbad,0\n")
    return folder


NEWER_FEATURES: dict[str, Callable[[World], tuple[list[str], str]]] = {
    "training_args: tracker not installed": lambda w: (
        w.train_args("training_args={report_to: [wandb]}"),
        "needs the package wandb",
    ),
    "training_args: unknown tracker": lambda w: (
        w.train_args("training_args={report_to: [tensorbored]}"),
        "not a tracker transformers knows",
    ),
    "training_args: report_to a number": lambda w: (
        w.train_args("training_args={report_to: 5}"),
        "must be a tracker name",
    ),
    "training_args: not a mapping": lambda w: (w.train_args("training_args=[optim]"), "training_args"),
    "training_args: wrong value type": lambda w: (
        w.train_args("training_args={dataloader_num_workers: many}"),
        "'dataloader_num_workers' must be int",
    ),
    "training_args: value of the wrong type": lambda w: (
        w.train_args("training_args={optim_args: 3}"),
        "'optim_args' must be str | None",
    ),
    "precision in capitals": lambda w: (w.train_args("precision=BF16"), "precision: Input should be"),
    "unknown metric": lambda w: (w.train_args("metrics=[no_such_metric]"), "no_such_metric"),
    "metric of another task kind": lambda w: (w.train_args("metrics=[exact_match]"), "exact_match"),
    "metrics not a list": lambda w: (w.train_args("metrics=5"), "metrics"),
    "unknown problem_type": lambda w: (w.train_args("problem_type=ordinal"), "problem_type"),
    "regression on a class task": lambda w: (w.train_args("problem_type=regression"), "regression needs numeric"),
    "chat_template not a bool": lambda w: (w.train_args("chat_template=maybe"), "chat_template"),
    "task dataset without dataset": lambda w: (w.train_args("task=dataset"), "dataset"),
    "task dataset, folder missing": lambda w: (
        w.train_args("task=dataset", f"dataset={w.root / 'nowhere'}"),
        "nowhere",
    ),
    "task dataset, unknown split": lambda w: (
        w.train_args("task=dataset", f"dataset={_dataset_folder(w)}", "eval_split=test"),
        "test",
    ),
    "task dataset, missing column": lambda w: (
        w.train_args("task=dataset", f"dataset={_dataset_folder(w)}", "text_column=body"),
        "body",
    ),
    "parquet file that is text": lambda w: (
        w.train_args(
            "task=parquet",
            f"train_file={w.write('t.parquet', 'not parquet')}",
            f"eval_file={w.write('e.parquet', 'not parquet')}",
            "text_column=sentence",
        ),
        "t.parquet",
    ),
    "arrow file that is text": lambda w: (
        w.train_args(
            "task=arrow",
            f"train_file={w.write('t.arrow', 'not arrow')}",
            f"eval_file={w.write('e.arrow', 'x')}",
            "text_column=sentence",
        ),
        "t.arrow",
    ),
    "parquet without the label column": lambda w: (
        w.train_args(
            "task=parquet",
            f"train_file={_parquet(w)}",
            f"eval_file={_parquet(w, 'e.parquet')}",
            "text_column=sentence",
            "label_column=stars",
        ),
        "stars",
    ),
    "unknown sparse_pass": lambda w: (
        w.train_args("method=sparselora", "sparse_pass=sideways"),
        "sparse_pass: Input should be",
    ),
    "unknown backward_rule": lambda w: (
        w.train_args("method=sparselora", "sparse_pass=backward", "backward_rule=largest"),
        "backward_rule",
    ),
    "estimator_tokens 0": lambda w: (w.train_args("method=sparselora", "estimator_tokens=0"), "estimator_tokens"),
    "unknown dense_span": lambda w: (w.train_args("method=sparselora", "dense_span=all"), "dense_span"),
    "unknown ffn_score_input": lambda w: (w.train_args("method=sparselora", "ffn_score_input=max"), "ffn_score_input"),
    "compare: timing rounds 0": lambda w: (["compare", _compare_yaml(w, "timing: {rounds: 0}\n")], "rounds"),
    "compare: timing unknown key": lambda w: (["compare", _compare_yaml(w, "timing: {round: 5}\n")], "round"),
    "compare: timing not a mapping": lambda w: (["compare", _compare_yaml(w, "timing: fast\n")], "timing"),
    "compare --retime without timing": lambda w: (["compare", _compare_yaml(w), "--retime"], "no `timing:` key"),
    "compare --only an unknown method": lambda w: (["compare", _compare_yaml(w), "--only", "method=hira"], "hira"),
    "compare --only an unknown key": lambda w: (["compare", _compare_yaml(w), "--only", "colour=red"], "colour"),
    "compare --only without =": lambda w: (["compare", _compare_yaml(w), "--only", "lora"], "lora"),
    "compare --retime, --only no cell": lambda w: (
        ["compare", _compare_yaml(w, "timing: {rounds: 3}\n"), "--retime", "--only", "seed=7"],
        "matches no cell",
    ),
    "export into the run folder": lambda w: (
        ["export", str(w.good), "--merge", str(w.good / "merged")],
        "inside the run folder",
    ),
    "export onto the run folder": lambda w: (["export", str(w.good), "--merge", str(w.good)], "is the run folder"),
    "export over an existing folder": lambda w: (
        ["export", str(w.good), "--merge", str(_existing(w))],
        "already exists",
    ),
}
CASES |= NEWER_FEATURES


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix != ".lock"  # a lock file holds the pid of its last holder, not a result
    }


def _finished_runs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_the_suite_covers_at_least_100_kinds():
    assert len(NEWER_FEATURES) >= 30 and len(CASES) >= 100


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_a_clear_error_and_changes_nothing(case, world_template, capsys):
    world = world_template
    shutil.rmtree(world.root, ignore_errors=True)
    world.root.mkdir()
    args, fragment = CASES[case](world)
    before = _snapshot(world.runs)

    code = main(args)

    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())  # rich wraps long lines
    assert code == 2, text  # the documented exit code of bad input
    assert "error:" in text.lower() and fragment in text, text
    assert "Traceback" not in text
    after = _snapshot(world.runs)
    assert {k: v for k, v in after.items() if k in before} == before  # no earlier result changed
    assert _finished_runs(world.runs) == ["good"]  # and no new run appeared
    assert not (world.root / "pwned").exists()  # nothing hostile was executed


def test_debug_shows_the_traceback_of_bad_input(world_template):
    """--debug re-raises, for errors that are bad input too (the paragraph would hide where it came from)."""
    from sparselora.config import ConfigError

    with pytest.raises(ConfigError, match="Did you mean 'learning_rate'"):
        main([*world_template.train_args("lerning_rate=0.001"), "--debug"])
