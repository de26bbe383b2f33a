"""Publishing through a staging folder never touches a folder or file the user already has."""

import os

import pytest

from sparselora.files.atomic import atomic_write_text
from sparselora.files.staging import MARKER, staged_folder


def _user_folders(tmp_path):
    """Folders named like any staging or temporary name a writer might once have used."""
    for name in ("out.partial", ".out.partial", ".out.staging", f".out.{os.getpid()}.tmp.yaml"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "mine.txt").write_text("keep")
    return sorted(p.name for p in tmp_path.iterdir())


def test_a_staged_folder_appears_whole_and_leaves_nothing_behind(tmp_path):
    before = _user_folders(tmp_path)
    with staged_folder(tmp_path / "out") as staging:
        assert staging.parent == tmp_path and staging.name not in before
        (staging / "weights.safetensors").write_text("w")
        assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["weights.safetensors"]  # no marker left
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "out"])
    assert all((tmp_path / name / "mine.txt").read_text() == "keep" for name in before)


def test_a_failed_write_removes_only_its_own_staging_folder(tmp_path):
    before = _user_folders(tmp_path)
    with pytest.raises(RuntimeError), staged_folder(tmp_path / "out") as staging:
        assert (staging / MARKER).is_file()
        raise RuntimeError("disk on fire")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_folder_that_appears_meanwhile_is_never_replaced(tmp_path):
    with pytest.raises(FileExistsError, match="appeared"), staged_folder(tmp_path / "out"):
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "mine.txt").write_text("keep")
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_writes_use_a_fresh_temporary_name(tmp_path):
    """An old-style temporary name (``.<stem>.<pid>.tmp<suffix>``) held by the user is left alone."""
    user = tmp_path / f".map.{os.getpid()}.tmp.yaml"
    user.write_text("mine")
    atomic_write_text(tmp_path / "map.yaml", "a: 1\n")
    assert user.read_text() == "mine" and (tmp_path / "map.yaml").read_text() == "a: 1\n"
    assert oct((tmp_path / "map.yaml").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([user.name, "map.yaml"])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
