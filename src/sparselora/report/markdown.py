"""Markdown tables: the one writer behind results.md, the study report and the frontier table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd


def table(header: Sequence[object], rows: Iterable[Sequence[object]]) -> str:
    """A pipe table; cells are written as given (``|`` inside a cell is escaped)."""

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(row) for row in rows)])


def frame_table(frame: pd.DataFrame, floats: str = "{:.4g}") -> str:
    """A DataFrame as a pipe table, floats formatted with ``floats``."""
    rows = ([floats.format(v) if isinstance(v, float) else v for v in row] for _, row in frame.iterrows())
    return table(list(frame.columns), rows)
