"""A full disk, whichever library hit it: one error that names the folder and the space needed."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

# How a full disk reads where it is not an OSError: safetensors (Rust io error), torch.save (PytorchStreamWriter)
_FULL_DISK_TEXTS = ("No space left on device", "StorageFull", "os error 28")


class DiskFullError(OSError):
    """The disk of an output folder is full (bad input: free space or write elsewhere)."""


def is_disk_full(err: BaseException | None) -> bool:
    """True for ENOSPC, or an error (or one it was raised from) whose message says the disk is full."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        if any(text in str(err) for text in _FULL_DISK_TEXTS):
            return True
        err = err.__cause__ or err.__context__
    return False


def _written_file(err: BaseException | None) -> str | None:
    """The file whose write failed, where the error (or one it was raised from) names it."""
    while err is not None:
        if isinstance(err, OSError) and err.filename:
            return str(err.filename)
        err = err.__cause__ or err.__context__
    return None


def disk_full_error(folder: Path, needed_bytes: int, err: BaseException | None = None) -> DiskFullError:
    free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
    written = _written_file(err)
    where = f" (No space left on device: '{written}')" if written else ""
    return DiskFullError(
        f"the disk of '{folder}' is full{where}: {free / 2**20:.0f} MB free; this run needs about "
        f"{needed_bytes / 2**20:.0f} MB there for its checkpoints and results. Free some disk space or point "
        "`output_dir` at another disk; the unfinished run is kept and resumes with the same command",
    )
