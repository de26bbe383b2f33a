"""Paths built from user input: a run name is one folder name, an output folder is writable, an output
file is not a folder. Checked before anything is written, so bad input never deletes or overwrites."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class UnsafePathError(ValueError):
    """A name or path from the user that would write outside its place, or cannot be written."""


def check_folder_name(value: str, key: str) -> str:
    """``value`` names one folder inside a parent: no separator, not ``.``/``..``, no control characters.

    A leading dot is refused too: hidden names hold a run's bookkeeping (``.<name>.partial``, ``.lock``).
    """
    problem = None
    if not value:
        problem = "is empty"
    elif "/" in value or "\\" in value or os.path.isabs(value):
        problem = "contains a path separator"
    elif value in (".", ".."):
        problem = "names the current or the parent folder, not a folder of its own"
    elif value.startswith("."):
        problem = "starts with '.' (hidden names are kept for the run folder's own files)"
    elif any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        problem = "contains a control character"
    if problem:
        raise UnsafePathError(
            f"{key} {value!r} {problem}: it must be a single folder name such as 'sst2_lora_r16' "
            "(letters, digits, '_', '-', '.'); put the parent folder in `output_dir`."
        )
    return value


def check_writable_folder(path: Path, key: str) -> Path:
    """Create ``path`` if needed and prove a file can be written in it (a probe file, removed at once)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UnsafePathError(f"{key} '{path}' is an existing file, not a folder: choose a folder path.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        descriptor, probe = tempfile.mkstemp(prefix=".write-probe.", dir=path)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as err:
        raise UnsafePathError(
            f"{key} '{path}' cannot hold files ({err.strerror or err}): choose a folder you can write to."
        ) from None
    return path


def check_output_file(path: Path, option: str) -> Path:
    """An output file path: not an existing folder, and its folder can be written."""
    path = Path(path)
    if path.is_dir():
        raise UnsafePathError(f"{option} '{path}' is a folder: give a file path, e.g. '{path / 'out'}'.")
    check_writable_folder(path.parent, f"the folder of {option}")
    return path
