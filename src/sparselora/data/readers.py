"""Readers for the on-disk formats of the local data folder."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
from datasets import Dataset


def read_table(path: Path) -> Dataset:
    """TSV/CSV/JSONL (optionally .gz) → Dataset. GLUE TSVs are unquoted and contain '"': quoting off."""
    name = path.name.removesuffix(".gz")
    if name.endswith(".tsv"):
        frame = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False)
    elif name.endswith(".csv"):
        frame = pd.read_csv(path, keep_default_na=False)
    elif name.endswith((".jsonl", ".json")):
        frame = pd.read_json(path, lines=name.endswith(".jsonl"))
    else:
        raise ValueError(f"cannot read '{path}': expected a .tsv, .csv or .jsonl file (optionally .gz)")
    return Dataset.from_pandas(frame, preserve_index=False)


def read_lines(path: Path) -> Dataset:
    return Dataset.from_dict({"text": path.read_text(encoding="utf-8").splitlines()})
