"""A full disk, wherever the Trainer or PEFT hits it: exit 2, the folder and the space named, the run kept."""

import json

import safetensors.torch

from sparselora.cli import main
from sparselora.files.disk import is_disk_full
from sparselora.run_folder.layout import partial_dir
from tests.helpers import tiny_run


def _full_disk(*_args, **_kwargs):
    raise safetensors.SafetensorError(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
    )


def test_a_full_disk_names_the_folder_and_marks_the_run_failed(tiny_bert_dir, data_env, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(safetensors.torch, "serialize_file", _full_disk)  # every save_file writes through it
    config = tiny_run(tiny_bert_dir, tmp_path / "runs", max_steps=2, name="full")
    args = ["train", *[a for key, value in config.items() for a in ("--set", f"{key}={value}")]]
    code = main(args)
    text = " ".join(capsys.readouterr().err.split())
    work = partial_dir(tmp_path / "runs" / "full")
    assert code == 2, text
    assert "DiskFullError" in text and str(work) in text and "MB free" in text and "needs about" in text
    assert json.loads((work / "status.json").read_text())["state"] == "failed"
    assert not (tmp_path / "runs" / "full").exists()


def test_full_disk_errors_are_recognised_through_their_causes():
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as inner:
            raise RuntimeError("checkpoint failed") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)
    assert not is_disk_full(RuntimeError("out of memory"))
