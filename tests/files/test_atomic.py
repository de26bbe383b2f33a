"""Atomic writes and locks: a failed write keeps the old file; a claim is exclusive and dies with its holder."""

import subprocess
import sys

import pytest

from sparselora.files.atomic import atomic_path, atomic_write_json
from sparselora.files.locks import LockBusyError, exclusive_lock, is_locked


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"accuracy": 0.9})
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text('{"accur')  # a crash mid-write
        raise RuntimeError("disk full")
    assert target.read_text() == '{\n  "accuracy": 0.9\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_lock_is_exclusive_and_released_when_its_holder_dies(tmp_path):
    lock = tmp_path / "run.lock"
    with exclusive_lock(lock, "run 'x'"):
        assert is_locked(lock)
        busy = pytest.raises(LockBusyError, match=r"run 'x' is in use by another process \(pid \d+")
        with busy, exclusive_lock(lock, "run 'x'"):
            pass
    assert not is_locked(lock)
    holder = "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); os._exit(0)"
    subprocess.run([sys.executable, "-c", holder, str(lock)], check=True)  # exits without unlocking
    assert not is_locked(lock)
