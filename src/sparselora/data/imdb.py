"""IMDB movie reviews (long texts: truncated to max_length). Evaluated on the test split."""

from __future__ import annotations

from datasets import DatasetDict

from sparselora.data.readers import read_table
from sparselora.data.registry import TaskData, TaskSpec, first_n, register_task
from sparselora.data.sources import load_local_or_hub


def load_imdb(config) -> TaskData:
    splits = load_local_or_hub(
        config,
        "imdb",
        ["train.csv.gz", "test.csv.gz"],
        lambda folder: DatasetDict(train=read_table(folder / "train.csv.gz"), test=read_table(folder / "test.csv.gz")),
        ("stanfordnlp/imdb",),
    )
    # Both splits are sorted by label: shuffle once with a fixed seed so "first N" is balanced.
    train = splits["train"].shuffle(seed=0)
    test = splits["test"].shuffle(seed=0)
    return TaskData(
        train=first_n(train, config.max_train_samples),
        eval=first_n(test, config.max_eval_samples),
        label_names=["negative", "positive"],
    )


register_task(
    TaskSpec(name="imdb", kind="classification", dataset_id="stanfordnlp/imdb", load=load_imdb, eval_split="test")
)
