"""Exclusive claims between processes: one trainer per run folder, one report writer at a time.

``flock`` locks belong to the open file: the kernel releases them when the holder exits, however
it exits (SIGKILL included), so a crashed process never leaves a stale claim behind.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BUSY_EXIT_CODE = 3  # `sparselora train` exits with it when another process holds the run


class LockBusyError(RuntimeError):
    """Another live process holds the claim."""


@contextmanager
def exclusive_lock(path: Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold ``path``'s lock for the block; without ``wait``, fail at once if another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            raise LockBusyError(
                f"{what} is in use by another process (pid {holder}, lock file '{path}'). "
                "Wait for it to finish, or use another run name / results folder."
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def is_locked(path: Path) -> bool:
    """Whether a live process holds ``path``'s lock right now (the claim is not taken)."""
    if not path.is_file():
        return False
    descriptor = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        return False
    finally:
        os.close(descriptor)
