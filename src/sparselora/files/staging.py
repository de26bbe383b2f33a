"""Folders written in full before they appear: built in a staging folder no one else can hold, then renamed.

The staging folder is created fresh (``tempfile.mkdtemp``: a new name, made atomically) beside the final
folder, so it can never be a folder a user already had, and it carries a marker file; on failure only a
folder holding that marker is removed. A crash leaves at most a hidden ``.<name>.<random>.staging``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MARKER = ".sparselora-staging"


@contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success it becomes ``final``, which must not exist by then."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".staging", dir=final.parent))
    (staging / MARKER).touch()
    try:
        yield staging
        if final.exists() or final.is_symlink():  # appeared meanwhile: never replaced
            raise FileExistsError(f"'{final}' appeared while it was being written; nothing was replaced")
        staging.rename(final)
    except BaseException:
        remove_staging(staging)
        raise
    (final / MARKER).unlink(missing_ok=True)


def remove_staging(folder: Path) -> None:
    """Remove a staging folder this module made (it holds the marker); anything else is left alone."""
    if (folder / MARKER).is_file() and not folder.is_symlink():
        shutil.rmtree(folder)
