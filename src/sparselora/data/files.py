"""Your own data: csv/tsv/jsonl/parquet/arrow files, or any dataset ``load_dataset`` opens.

Classification is read here; SFT, chat and text data for causal LMs in data/sft.py (``data_format``).

Labels map to class ids as users expect: numbers in numeric order (``1`` and ``1.0`` are one class),
anything else in sorted string order. The mapping is recorded in the run (``label_names``, the model's
``id2label``), so evaluating a run does not need its training file again.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from datasets import Dataset

from sparselora.data.readers import DataFileError, check_columns, read_table
from sparselora.data.registry import TaskData, TaskSpec, first_n, register_task
from sparselora.data.sft import detect_format, sft_splits


def _read(path: Path | None, key: str) -> Dataset:
    if path is None:
        raise DataFileError(f"config key '{key}' is required for a file task: the path of a csv/tsv/jsonl file")
    path = Path(path)
    if path.is_dir():
        raise DataFileError(f"config key '{key}': '{path.resolve()}' is a folder; give the path of a data file")
    if path.exists() and not path.is_file():
        raise DataFileError(f"config key '{key}': '{path.resolve()}' is not a regular file (a device or a pipe)")
    if not path.is_file():
        raise DataFileError(f"config key '{key}': file not found at '{path.resolve()}'")
    return read_table(path)


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def _label_name(value: Any, numeric: bool) -> str:
    """The class a label value names: numbers by value (1 ≡ 1.0 → "1"), strings as written."""
    if not numeric:
        return str(value)
    number = _as_number(value)
    if number is None:
        return str(value)
    return str(int(number)) if number.is_integer() else repr(number)


def _check_present(values: list[Any], where: str, column: str) -> None:
    for row, value in enumerate(values):
        missing = value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""
        if missing:
            raise DataFileError(
                f"{where}, data row {row + 1}: label column '{column}' is empty. Every row needs a label: "
                "fill it in or drop the row."
            )


def label_mapping(values: list[Any]) -> list[str]:
    """Class names in id order: numeric labels by value, others sorted as strings."""
    numeric = all(_as_number(v) is not None for v in values)
    names = {_label_name(v, numeric) for v in values}
    return sorted(names, key=float) if numeric else sorted(names)


def _score_splits(config, train: Dataset | None, evaluation: Dataset, where: dict[str, str]) -> TaskData:
    """``problem_type: regression``: every label a number (a similarity score, a rating), kept as a float."""

    def scores(split: Dataset, name: str) -> list[float]:
        numbers = []
        for row, value in enumerate(split[config.label_column]):
            number = _as_number(value)
            if number is None or not math.isfinite(number):
                raise DataFileError(
                    f"{where[name]}, data row {row + 1}: label {value!r} is not a number; "
                    "problem_type regression needs numeric labels"
                )
            numbers.append(number)
        return numbers

    return _standard_splits(config, train, evaluation, scores, [])


def _standard_splits(config, train: Dataset | None, evaluation: Dataset, labels_of, label_names) -> TaskData:
    """Both splits in the standard columns (``text``, ``text_pair``, ``label``), subset as configured."""

    def standard(split: Dataset, name: str) -> Dataset:
        out = {"text": [str(t) for t in split[config.text_column]], "label": labels_of(split, name)}
        if config.text_pair_column:
            out["text_pair"] = [str(t) for t in split[config.text_pair_column]]
        return Dataset.from_dict(out)

    empty = Dataset.from_dict({"text": [], "label": []})
    return TaskData(
        train=first_n(standard(train, "train"), config.max_train_samples) if train is not None else empty,
        eval=first_n(standard(evaluation, "eval"), config.max_eval_samples),
        label_names=label_names,
    )


def _check_label_column(config) -> None:
    if config.label_column in (config.text_column, config.text_pair_column):
        raise DataFileError(
            f"config key 'label_column' is '{config.label_column}', which is also a text column: "
            "set label_column to the column that holds the classes."
        )


def load_files(config) -> TaskData:
    recorded = config.label_names  # set when a saved run is evaluated: its training file is not needed
    training_file_there = config.train_file is not None and Path(config.train_file).is_file()
    train = _read(config.train_file, "train_file") if recorded is None or training_file_there else None
    evaluation = _read(config.eval_file, "eval_file")
    where = {"train": f"train_file '{config.train_file}'", "eval": f"eval_file '{config.eval_file}'"}
    fmt = detect_format(config, train if train is not None else evaluation, where["train" if train else "eval"])
    if fmt != "classification":
        return sft_splits(config, fmt, train, evaluation, where)
    _check_label_column(config)
    return classification_splits(config, train, evaluation, where, recorded)


def load_hub_dataset(config) -> TaskData:
    """``task: dataset``: the ``dataset`` key's Hub id, local folder or data file, opened by ``load_dataset``."""
    from sparselora.data.sources import open_dataset

    splits = open_dataset(config)
    for key, split in (("train_split", config.train_split), ("eval_split", config.eval_split)):
        if split not in splits:
            raise DataFileError(
                f"config key '{key}': dataset '{config.dataset}' has no split '{split}'; its splits: {list(splits)}"
            )
    train, evaluation = splits[config.train_split], splits[config.eval_split]
    source = f"dataset '{config.dataset}'"
    where = {"train": f"{source} split '{config.train_split}'", "eval": f"{source} split '{config.eval_split}'"}
    fmt = detect_format(config, train, where["train"])
    if fmt != "classification":
        return sft_splits(config, fmt, train, evaluation, where)
    _check_label_column(config)
    feature = train.features.get(config.label_column)
    class_names = list(getattr(feature, "names", None) or []) or None  # a ClassLabel column names its classes
    recorded = config.label_names or class_names
    if class_names:  # ids → names, so one mapping rule serves every source
        train, evaluation = (split.cast_column(config.label_column, _as_string()) for split in (train, evaluation))
        train, evaluation = (_names_of(split, config.label_column, class_names) for split in (train, evaluation))
    return classification_splits(config, train, evaluation, where, recorded)


def _as_string():
    from datasets import Value

    return Value("string")


def _names_of(split: Dataset, column: str, names: list[str]) -> Dataset:
    return split.map(lambda row: {column: names[int(row[column])]})


def classification_splits(
    config, train: Dataset | None, evaluation: Dataset, where: dict[str, str], recorded: list[str] | None
) -> TaskData:
    """Check columns and labels, map labels to class ids (recorded names, else the training labels' order)."""
    keys = ["text_column", "label_column", *(["text_pair_column"] if config.text_pair_column else [])]
    columns = {getattr(config, key): f"config key '{key}'" for key in keys}
    for name, split in (("train", train), ("eval", evaluation)):
        if split is not None:
            check_columns(split, columns, where[name])
            _check_present(split[config.label_column], where[name], config.label_column)
    if config.problem_type == "regression":
        return _score_splits(config, train, evaluation, where)
    label_names = list(recorded) if recorded is not None else label_mapping(train[config.label_column])
    numeric = all(_as_number(name) is not None for name in label_names)
    index = {name: i for i, name in enumerate(label_names)}

    def class_ids(split: Dataset, name: str) -> list[int]:
        names = [_label_name(v, numeric) for v in split[config.label_column]]
        unseen = sorted(set(names) - set(index))
        if unseen:
            raise DataFileError(
                f"{where[name]} has labels never seen in training: {unseen} (the classes are {label_names})"
            )
        return [index[n] for n in names]

    return _standard_splits(config, train, evaluation, class_ids, label_names)


for _fmt in ("csv", "tsv", "jsonl", "parquet", "arrow"):
    register_task(TaskSpec(name=_fmt, kind="classification", dataset_id=None, load=load_files))
register_task(TaskSpec(name="dataset", kind="classification", dataset_id=None, load=load_hub_dataset))
