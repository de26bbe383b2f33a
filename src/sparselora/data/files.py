"""Your own classification data: csv/tsv/jsonl files with named text and label columns."""

from __future__ import annotations

from pathlib import Path

from sparselora.data.readers import DataFileError, check_columns, read_table
from sparselora.data.registry import TaskData, TaskSpec, first_n, register_task


def _read(path: Path | None, key: str):
    if path is None:
        raise DataFileError(f"config key '{key}' is required for a file task: the path of a csv/tsv/jsonl file")
    if not Path(path).is_file():
        raise DataFileError(f"config key '{key}': file not found at '{Path(path).resolve()}'")
    return read_table(Path(path))


def load_files(config) -> TaskData:
    train = _read(config.train_file, "train_file")
    evaluation = _read(config.eval_file, "eval_file")
    keys = ["text_column", "label_column", *(["text_pair_column"] if config.text_pair_column else [])]
    columns = {getattr(config, key): f"config key '{key}'" for key in keys}
    for key, split in (("train_file", train), ("eval_file", evaluation)):
        check_columns(split, columns, f"{key} '{getattr(config, key)}'")
    # Labels may be strings or ints: map the sorted set of training labels to 0..K-1.
    label_names = sorted({str(v) for v in train[config.label_column]})
    index = {name: i for i, name in enumerate(label_names)}

    def standard(split):
        unseen = {str(v) for v in split[config.label_column]} - set(index)
        if unseen:
            raise DataFileError(f"eval_file has labels never seen in train_file: {sorted(unseen)}")

        def row_to_standard(row):
            out = {"text": row[config.text_column], "label": index[str(row[config.label_column])]}
            if config.text_pair_column:
                out["text_pair"] = row[config.text_pair_column]
            return out

        return split.map(row_to_standard, remove_columns=split.column_names)

    return TaskData(
        train=first_n(standard(train), config.max_train_samples),
        eval=first_n(standard(evaluation), config.max_eval_samples),
        label_names=label_names,
    )


for _fmt in ("csv", "tsv", "jsonl"):
    register_task(TaskSpec(name=_fmt, kind="classification", dataset_id="custom", load=load_files))
