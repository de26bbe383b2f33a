"""Readers for the on-disk formats of the local data folder."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pandas as pd
from datasets import Dataset


class DataFileError(ValueError):
    """A data file is missing, unreadable, or lacks what the task needs: the message names file and fix."""


def read_table(path: Path) -> Dataset:
    """TSV/CSV/JSONL (optionally .gz), Parquet or Arrow → Dataset. GLUE TSVs are unquoted and contain '"'."""
    name = path.name.removesuffix(".gz")
    if name.endswith((".parquet", ".arrow")):
        return _read_columnar(path)
    try:
        if name.endswith(".tsv"):
            frame = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False, encoding="utf-8")
        elif name.endswith(".csv"):
            frame = pd.read_csv(path, keep_default_na=False, encoding="utf-8")
        elif name.endswith(".jsonl"):
            frame = pd.DataFrame(_json_lines(path))
        elif name.endswith(".json"):
            frame = pd.read_json(path, encoding="utf-8")
        else:
            raise DataFileError(
                f"cannot read '{path}': expected a .tsv, .csv, .jsonl (optionally .gz), .parquet or .arrow file"
            )
    except pd.errors.EmptyDataError:
        raise DataFileError(f"'{path}' is empty: it needs a header line and at least one row") from None
    except UnicodeDecodeError as err:
        raise DataFileError(
            f"'{path}' is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}). "
            f"Re-encode it, e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed.{name.rsplit('.', 1)[-1]}`."
        ) from None
    except (pd.errors.ParserError, ValueError) as err:
        if isinstance(err, DataFileError):
            raise
        raise DataFileError(f"'{path}' could not be parsed as {name.rsplit('.', 1)[-1]}: {err}") from None
    if frame.empty:
        raise DataFileError(f"'{path}' has a header but no rows")
    return Dataset.from_pandas(frame, preserve_index=False)


def _read_columnar(path: Path) -> Dataset:
    """Parquet and Arrow files through ``datasets`` (the formats its own caches and the Hub use)."""
    try:
        dataset = Dataset.from_parquet(str(path)) if path.suffix == ".parquet" else Dataset.from_file(str(path))
    except Exception as err:  # pyarrow's errors (ArrowInvalid, ...) share no base with the datasets ones
        raise DataFileError(f"'{path}' could not be read as {path.suffix[1:]}: {err}") from None
    if len(dataset) == 0:
        raise DataFileError(f"'{path}' has no rows")
    return dataset


def _json_lines(path: Path) -> list[dict]:
    """One JSON object per line; a broken line is named by its number."""
    opener = gzip.open if path.name.endswith(".gz") else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFileError(
                    f"'{path}', line {number}: not valid JSON ({err.msg} at column {err.colno})"
                ) from None
            if not isinstance(row, dict):
                raise DataFileError(f"'{path}', line {number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    if not rows:
        raise pd.errors.EmptyDataError
    return rows


def check_columns(dataset: Dataset, columns: dict[str, str], where: str) -> None:
    """Every wanted column is there (column → why it is wanted); else name it, the file and its columns."""
    for column, wanted_by in columns.items():
        if column not in dataset.column_names:
            raise DataFileError(
                f"column '{column}' ({wanted_by}) not in {where}; its columns: {', '.join(dataset.column_names)}"
            )


def check_labels(dataset: Dataset, num_labels: int, where: str, column: str = "label") -> None:
    """Class labels must be integers 0..num_labels-1; name the first row that is not."""
    for row, value in enumerate(dataset[column]):
        valid = isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer()
        if not valid or not 0 <= int(value) < num_labels:
            raise DataFileError(
                f"{where}, data row {row + 1}: label {value!r} is not one of 0..{num_labels - 1}. "
                f"Labels of this task are integers in that range."
            )


def read_lines(path: Path) -> Dataset:
    return Dataset.from_dict({"text": path.read_text(encoding="utf-8").splitlines()})
