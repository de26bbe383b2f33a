from pathlib import Path

import pytest
import torch

from sparselora.config import build_config
from sparselora.data import DataNotFoundError, get_task
from sparselora.data.files import DataFileError
from sparselora.data.gsm8k import final_answer
from sparselora.data.preprocess import prepare
from sparselora.models import load_tokenizer, resolve_model


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model("minilm"))


@pytest.mark.parametrize(
    ("task", "columns", "eval_rows"),
    [
        ("sst2", {"text", "label"}, 872),
        ("mrpc", {"text", "text_pair", "label"}, 408),
        ("imdb", {"text", "label"}, 25000),
    ],
)
def test_classification_tasks_read_the_local_copy(data_env, task, columns, eval_rows):
    data = get_task(task).load(build_config({"task": task, "max_train_samples": 50}))
    assert set(data.train.column_names) == columns
    assert len(data.train) == 50 and len(data.eval) == eval_rows
    assert set(data.train["label"]) <= {0, 1}


def test_imdb_subset_is_balanced(data_env):
    data = get_task("imdb").load(build_config({"task": "imdb", "max_train_samples": 200}))
    assert 60 < sum(data.train["label"]) < 140


def test_dynamic_padding_pads_to_the_longest_in_batch(data_env, tokenizer):
    config = build_config({"max_train_samples": 64, "max_eval_samples": 8})
    raw = get_task("sst2").load(config)
    prepared = prepare(
        "classification",
        raw.train,
        raw.eval,
        tokenizer,
        causal=False,
        max_length=128,
        max_train_samples=None,
        max_eval_samples=None,
    )
    rows = [prepared.train[i] for i in range(8)]
    batch = prepared.train_collator(rows)
    assert batch["input_ids"].shape[1] == max(len(r["input_ids"]) for r in rows) < 128


def test_wikitext_blocks_and_masked_eval_is_deterministic(data_env, tokenizer):
    config = build_config({"task": "wikitext2"})
    raw = get_task("wikitext2").load(config)
    kwargs = {"causal": False, "max_length": 64, "max_train_samples": 20, "max_eval_samples": 10}
    first = prepare("language_modeling", raw.train.select(range(300)), raw.eval.select(range(300)), tokenizer, **kwargs)
    again = prepare("language_modeling", raw.train.select(range(300)), raw.eval.select(range(300)), tokenizer, **kwargs)
    assert len(first.train) == 20 and all(len(ids) == 64 for ids in first.train["input_ids"])
    rows = [first.eval[i] for i in range(4)]
    masked_a, masked_b = first.eval_collator(rows), again.eval_collator(rows)
    assert torch.equal(masked_a["labels"], masked_b["labels"]) and (masked_a["labels"] != -100).any()


def _prepare_gsm8k(raw, tokenizer, chat_template: bool):
    return prepare(
        "generation",
        raw.train,
        raw.eval,
        tokenizer,
        causal=True,
        max_length=512,
        max_train_samples=None,
        max_eval_samples=None,
        chat_template=chat_template,
    )


def test_gsm8k_labels_only_the_answer(data_env, tiny_llama_dir):
    tok = load_tokenizer(resolve_model(str(tiny_llama_dir)))
    raw = get_task("gsm8k").load(build_config({"task": "gsm8k", "max_train_samples": 4, "max_eval_samples": 3}))
    prepared = _prepare_gsm8k(raw, tok, chat_template=False)
    row = prepared.train[0]
    prompt_len = len(tok(raw.train[0]["prompt"], add_special_tokens=False)["input_ids"])
    assert all(label == -100 for label in row["labels"][:prompt_len])
    assert row["labels"][prompt_len:] == row["input_ids"][prompt_len:]
    assert row["labels"][-1] == tok.eos_token_id
    assert prepared.eval_answers == [final_answer(a) for a in raw.eval["target"]]
    assert len(prepared.eval_prompts) == 3


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}[SEP]{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.mark.parametrize("use_template", [True, False])
def test_gsm8k_prompts_go_through_the_chat_template(data_env, tiny_llama_dir, use_template):
    tok = load_tokenizer(resolve_model(str(tiny_llama_dir)))
    tok.chat_template = CHAT_TEMPLATE
    raw = get_task("gsm8k").load(build_config({"task": "gsm8k", "max_train_samples": 2, "max_eval_samples": 2}))
    prepared = _prepare_gsm8k(raw, tok, chat_template=use_template)
    row = prepared.train[0]
    answer_start = row["labels"].index(next(label for label in row["labels"] if label != -100))
    prompt, answer = tok.decode(row["input_ids"][:answer_start]), tok.decode(row["input_ids"][answer_start:])
    assert row["labels"][answer_start:] == row["input_ids"][answer_start:]  # every answer token is trained
    if use_template:
        question = raw.train[0]["user"]
        assert prompt.startswith("< | user | >") and prompt.endswith("< | assistant | >"), prompt
        assert tok.decode(tok(question, add_special_tokens=False)["input_ids"]) in prompt
        assert answer.endswith("[SEP]") and answer.count("[SEP]") == 1  # the template's end of turn, once
        assert prepared.eval_prompts[0].endswith("<|assistant|>")
    else:
        assert prompt.startswith("question :") and prepared.eval_prompts[0].startswith("Question:")


@pytest.mark.parametrize("use_template", [True, False])
def test_gsm8k_few_shot_prompts_hold_solved_problems_but_train_only_the_answer(data_env, tiny_llama_dir, use_template):
    tok = load_tokenizer(resolve_model(str(tiny_llama_dir)))
    tok.chat_template = CHAT_TEMPLATE
    keys = {"task": "gsm8k", "max_train_samples": 2, "max_eval_samples": 2}
    plain = get_task("gsm8k").load(build_config(keys))
    shot = get_task("gsm8k").load(build_config({**keys, "few_shot": 2}))
    for split in ("train", "eval"):
        for row, base in zip(getattr(shot, split), getattr(plain, split), strict=True):
            assert row["prompt"].endswith(base["prompt"]) and row["prompt"].count("Question:") == 3
            assert row["target"] == base["target"] and row["answer"] == base["answer"]
            assert row["user"].endswith(base["prompt"]) and row["user"].count("####") == 2
    prepared, before = _prepare_gsm8k(shot, tok, use_template), _prepare_gsm8k(plain, tok, use_template)
    trained = [[label for label in row["labels"] if label != -100] for row in (prepared.train[0], before.train[0])]
    assert trained[0] == trained[1] and len(prepared.train[0]["input_ids"]) > 2 * len(before.train[0]["input_ids"])
    assert prepared.eval_answers == before.eval_answers


def test_gsm8k_few_shot_examples_may_not_be_trained_on(data_env):
    with pytest.raises(ValueError, match=r"few_shot=3 takes the last 3 .* set max_train_samples <="):
        get_task("gsm8k").load(build_config({"task": "gsm8k", "few_shot": 3}))


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("so 3+4 = 7\n#### 7", "7"),
        ("#### 1,234", "1234"),
        ("The answer is 12.", "12"),
        ("no number", None),
        ("#### -5", "-5"),
        ("total 3.0", "3"),
    ],
)
def test_final_answer(text, answer):
    assert final_answer(text) == answer


def test_missing_data_names_every_path_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SPARSELORA_DATA_DIR", str(tmp_path / "env-dir"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sparselora.data.sources._REPO_ROOT", tmp_path / "repo")
    (tmp_path / "cfg-dir").mkdir()
    config = build_config({"task": "mrpc", "data_dir": str(tmp_path / "cfg-dir")})
    with pytest.raises(DataNotFoundError) as err:
        get_task("mrpc").load(config)
    message = str(err.value)
    assert str(tmp_path / "cfg-dir" / "mrpc") in message and str(tmp_path / "env-dir" / "mrpc") in message
    assert "--data-dir" in message


def test_a_data_dir_that_does_not_exist_is_named(tmp_path):
    config = build_config({"task": "sst2", "data_dir": str(tmp_path / "typo")})
    with pytest.raises(DataNotFoundError, match=r"typo.*does not exist"):
        get_task("sst2").load(config)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_generic_file_task_maps_string_labels(tmp_path):
    train = _write(tmp_path / "train.csv", "review,stars\ngood film,pos\nbad film,neg\nfine,pos\n")
    evaluation = _write(
        tmp_path / "eval.jsonl", '{"review": "great", "stars": "pos"}\n{"review": "awful", "stars": "neg"}\n'
    )
    config = build_config(
        {
            "task": "csv",
            "train_file": str(train),
            "eval_file": str(evaluation),
            "text_column": "review",
            "label_column": "stars",
        }
    )
    data = get_task("csv").load(config)
    assert data.label_names == ["neg", "pos"]
    assert data.train["label"] == [1, 0, 1] and data.eval["label"] == [1, 0]
    assert data.train["text"][0] == "good film"


def test_generic_file_task_errors(tmp_path):
    train = _write(tmp_path / "train.tsv", "sentence\tlabel\nhello\t1\n")
    missing = build_config({"task": "tsv", "train_file": str(tmp_path / "nope.tsv"), "eval_file": str(train)})
    with pytest.raises(DataFileError, match=r"train_file.*not found"):
        get_task("tsv").load(missing)
    wrong_column = build_config({"task": "tsv", "train_file": str(train), "eval_file": str(train)})
    with pytest.raises(DataFileError, match=r"'text'.*text_column.*sentence"):
        get_task("tsv").load(wrong_column)


def _file_task(tmp_path, train_text: str, name: str = "train.tsv", **keys):
    train = _write(tmp_path / name, train_text)
    return get_task("tsv").load(
        build_config({"task": "tsv", "train_file": str(train), "eval_file": str(train), **keys})
    )


def test_numeric_labels_map_in_numeric_order(tmp_path):
    rows = "".join(f"t{i}\t{i % 12}\n" for i in range(24))
    data = _file_task(tmp_path, "sentence\tlabel\n" + rows, text_column="sentence")
    assert data.label_names == [str(i) for i in range(12)]
    assert data.train["label"][:12] == list(range(12))  # label 2 is class 2, not class 4 (string order)


def test_one_and_one_point_zero_are_one_class(tmp_path):
    data = _file_task(tmp_path, "text\tlabel\na\t1\nb\t1.0\nc\t0\n")
    assert data.label_names == ["0", "1"] and data.train["label"] == [1, 1, 0]


def test_string_labels_are_sorted_and_recorded(tmp_path):
    data = _file_task(tmp_path, "text\tlabel\na\tnot_entailment\nb\tentailment\n")
    assert data.label_names == ["entailment", "not_entailment"] and data.train["label"] == [1, 0]


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_label_names_file_and_row(tmp_path, empty):
    with pytest.raises(DataFileError, match=r"train_file '.*train.tsv', data row 2: label column 'label' is empty"):
        _file_task(tmp_path, f"text\tlabel\na\t1\nb\t{empty}\n")


def test_label_column_cannot_be_the_text_column(tmp_path):
    with pytest.raises(DataFileError, match="also a text column"):
        _file_task(tmp_path, "text\tlabel\na\t1\n", label_column="text")


def test_recorded_label_names_need_no_training_file(tmp_path):
    evaluation = _write(tmp_path / "eval.tsv", "text\tlabel\na\tpos\nb\tneg\n")
    config = build_config(
        {
            "task": "tsv",
            "train_file": str(tmp_path / "gone.tsv"),
            "eval_file": str(evaluation),
            "label_names": ["neg", "pos"],
        }
    )
    data = get_task("tsv").load(config)
    assert data.eval["label"] == [1, 0] and len(data.train) == 0


def test_default_run_names_of_file_tasks_include_the_file(tmp_path):
    first = build_config({"task": "tsv", "train_file": "a/qnli.tsv", "eval_file": "x.tsv"})
    second = build_config({"task": "tsv", "train_file": "b/cola.tsv", "eval_file": "x.tsv"})
    assert first.run_name == "tsv_qnli_minilm_lora_s0" and second.run_name == "tsv_cola_minilm_lora_s0"


def _sst2_frames(shared_data_dir, rows: int):
    import pandas as pd

    read = lambda name: pd.read_csv(shared_data_dir / "sst2" / name, sep="\t", quoting=3).head(rows)  # noqa: E731
    return read("train.tsv"), read("validation.tsv")


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_parquet_and_arrow_files_are_file_tasks(shared_data_dir, tmp_path, fmt):
    from datasets import Dataset

    train, validation = _sst2_frames(shared_data_dir, 40)
    paths = {}
    for name, frame in (("train", train), ("validation", validation)):
        dataset = Dataset.from_pandas(frame, preserve_index=False)
        paths[name] = tmp_path / f"{name}.{fmt}"
        if fmt == "parquet":
            dataset.to_parquet(paths[name])
        else:
            dataset.save_to_disk(tmp_path / name)
            paths[name] = next((tmp_path / name).glob("*.arrow"))
    config = build_config(
        {
            "task": fmt,
            "train_file": str(paths["train"]),
            "eval_file": str(paths["validation"]),
            "text_column": "sentence",
        }
    )
    data = get_task(fmt).load(config)
    assert len(data.train) == 40 and data.label_names == ["0", "1"]
    assert data.train["text"][0] == train["sentence"][0]


def test_the_dataset_task_opens_a_folder_with_load_dataset_and_keeps_class_names(shared_data_dir, tmp_path):
    from datasets import ClassLabel, Dataset

    train, validation = _sst2_frames(shared_data_dir, 30)
    for name, frame in (("train", train), ("validation", validation)):
        dataset = Dataset.from_pandas(frame, preserve_index=False)
        dataset = dataset.cast_column("label", ClassLabel(names=["negative", "positive"]))
        dataset.to_parquet(tmp_path / "sst2" / f"{name}.parquet")
    config = build_config({"task": "dataset", "dataset": str(tmp_path / "sst2"), "text_column": "sentence"})
    data = get_task("dataset").load(config)
    assert data.label_names == ["negative", "positive"]  # the ClassLabel's names, in its order
    assert data.train["label"] == list(train["label"]) and len(data.eval) == 30
    with pytest.raises(DataFileError, match="has no split 'dev'; its splits"):
        get_task("dataset").load(build_config(config.to_flat_dict() | {"eval_split": "dev"}))


def test_the_dataset_task_offline_lists_what_it_tried(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    config = build_config({"task": "dataset", "dataset": "someone/no-such-dataset"})
    with pytest.raises(DataNotFoundError, match=r"could not be opened .* Tried: a local folder .* \(not found\)"):
        get_task("dataset").load(config)
    with pytest.raises(DataFileError, match="needs the key `dataset`"):
        get_task("dataset").load(build_config({"task": "dataset"}))
