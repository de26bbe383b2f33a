"""GLUE tasks: SST-2 (single sentences) and MRPC (sentence pairs)."""

from __future__ import annotations

from datasets import DatasetDict

from sparselora.data.readers import check_columns, check_labels, read_table
from sparselora.data.registry import TaskData, TaskSpec, first_n, register_task
from sparselora.data.sources import load_local_or_hub

GLUE = "nyu-mll/glue"


def _glue(config, subdir: str, text_columns: tuple[str, ...]) -> TaskData:
    splits = load_local_or_hub(
        config,
        subdir,
        ["train.tsv", "validation.tsv"],
        lambda folder: DatasetDict(
            train=read_table(folder / "train.tsv"), validation=read_table(folder / "validation.tsv")
        ),
        (GLUE, subdir),
    )
    renames = dict(zip(text_columns, ("text", "text_pair"), strict=False))
    label_names = ["negative", "positive"] if subdir == "sst2" else ["not_equivalent", "equivalent"]

    def standard(split, name):
        where = f"the {name} split of {subdir}"
        check_columns(split, {column: f"read by task {subdir}" for column in (*text_columns, "label")}, where)
        check_labels(split, len(label_names), where)
        keep = [*text_columns, "label"]
        split = split.remove_columns([c for c in split.column_names if c not in keep])
        return split.rename_columns(renames)

    return TaskData(
        train=first_n(standard(splits["train"], "train"), config.max_train_samples),
        eval=first_n(standard(splits["validation"], "validation"), config.max_eval_samples),
        label_names=label_names,
    )


register_task(
    TaskSpec(
        name="sst2",
        kind="classification",
        dataset_id=GLUE,
        dataset_config="sst2",
        load=lambda config: _glue(config, "sst2", ("sentence",)),
    )
)
register_task(
    TaskSpec(
        name="mrpc",
        kind="classification",
        dataset_id=GLUE,
        dataset_config="mrpc",
        load=lambda config: _glue(config, "mrpc", ("sentence1", "sentence2")),
    )
)
