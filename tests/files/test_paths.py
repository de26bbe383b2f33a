"""Paths from user input: run names, output folders and files, and what publishing may replace."""

from pathlib import Path

import pytest

from sparselora.config import build_config
from sparselora.files.paths import UnsafePathError, check_folder_name, check_output_file, check_writable_folder
from sparselora.run_folder.layout import RunFolderError, publish, write_status
from sparselora.training.loop import train
from tests.helpers import tiny_run


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/tmp", "a\\b", ".hidden", "a\tb", "a\x7fb"])
def test_a_run_name_is_one_folder_name(name):
    with pytest.raises(UnsafePathError, match="single folder name"):
        check_folder_name(name, "name")


@pytest.mark.parametrize("name", ["sst2_lora", "r16-lr5e-4", "a.b", "ünïcode"])
def test_ordinary_names_pass(name):
    assert check_folder_name(name, "name") == name


def test_output_folders_and_files(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UnsafePathError, match="existing file"):
        check_writable_folder(a_file, "output_dir")
    with pytest.raises(UnsafePathError, match="cannot hold files"):
        check_writable_folder(Path("/proc/sparselora"), "output_dir")
    with pytest.raises(UnsafePathError, match="is a folder"):
        check_output_file(tmp_path, "--json")
    assert check_output_file(tmp_path / "new" / "out.json", "--json").parent.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "new"]  # the probe file is gone


def test_publishing_replaces_only_a_run_folder(tmp_path):
    partial, final = tmp_path / ".x.partial", tmp_path / "x"
    partial.mkdir()
    final.mkdir()
    (final / "thesis.tex").write_text("years of work")
    with pytest.raises(RunFolderError, match="not a sparselora run folder"):
        publish(partial, final)
    assert (final / "thesis.tex").read_text() == "years of work" and partial.is_dir()
    write_status(final, "finished")  # an earlier run of the same name is replaced
    publish(partial, final)
    assert not (final / "thesis.tex").exists() and not partial.exists()


def test_training_never_replaces_a_folder_that_is_not_a_run(tiny_bert_dir, data_env, tmp_path):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("keep me")
    config = build_config(tiny_run(tiny_bert_dir, tmp_path, name="mine", max_steps=1))
    for overwrite in (False, True):
        with pytest.raises(RunFolderError, match="never replaced"):
            train(config, overwrite=overwrite)
    assert [p.name for p in keep.iterdir()] == ["notes.txt"]
    assert not (tmp_path / ".mine.partial").exists()
