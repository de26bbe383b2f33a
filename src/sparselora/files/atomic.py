"""Writes that a crash cannot leave half-done: a reader sees the old file or the new one.

Each writer goes to a hidden temporary file next to the target (same filesystem), is flushed to
disk, and replaces the target with ``os.replace`` — atomic on POSIX. A kill between the two
leaves at most a stray ``.<name>.<pid>.tmp<suffix>``, never a truncated metrics.json.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write to; it replaces ``path`` only if the block succeeds.

    The temporary name keeps the suffix, so writers that pick a format from it (matplotlib,
    pandas) behave as with the real name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield temporary
        _fsync(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def _fsync(path: Path) -> None:
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())


def atomic_write_csv(frame: Any, path: str | Path) -> None:
    """A pandas DataFrame as CSV, without its index."""
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, index=False)
