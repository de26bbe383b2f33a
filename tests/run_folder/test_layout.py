"""Publishing a run replaces only the earlier run of that name, and nothing else beside it."""

from sparselora.run_folder.layout import publish, write_status


def _run(folder, text):
    folder.mkdir(parents=True)
    write_status(folder, "finished")
    (folder / "metrics.json").write_text(text)
    return folder


def test_publishing_over_a_run_leaves_users_folders_of_any_name_alone(tmp_path):
    final = _run(tmp_path / "r", "old")
    for name in (".r.previous", ".r.partial.previous", "r.previous"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "mine.txt").write_text("keep")
    before = sorted(p.name for p in tmp_path.iterdir())
    publish(_run(tmp_path / ".r.partial", "new"), final)
    assert (final / "metrics.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(before) - {".r.partial"})
    assert all((tmp_path / name / "mine.txt").read_text() == "keep" for name in before if name != "r")
