"""Writes that a crash cannot leave half-done: a reader sees the old file or the new one.

Each writer goes to a hidden temporary file next to the target (same filesystem), created new
(``tempfile.mkstemp``: a name no file had, so no file of the user's is ever overwritten or removed),
is flushed to disk, and replaces the target with ``os.replace`` — atomic on POSIX. A kill between the
two leaves at most a stray ``.<name>.<random>.tmp<suffix>``, never a truncated metrics.json.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once, at import (os.umask can only be read by setting it)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write to; it replaces ``path`` only if the block succeeds.

    The temporary name keeps the suffix, so writers that pick a format from it (matplotlib,
    pandas) behave as with the real name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.fchmod(handle, 0o666 & ~_UMASK)  # mkstemp makes 0600; results get the usual permissions
    os.close(handle)
    temporary = Path(name)
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
