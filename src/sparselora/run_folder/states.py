"""What is in a runs folder: each run's state, read from its status file and its trainer's claim."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sparselora.files.locks import is_locked
from sparselora.run_folder.layout import lock_path, read_status
from sparselora.run_folder.resume import checkpoint_step, last_checkpoint

PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class RunEntry:
    name: str
    folder: Path
    state: str  # finished | running | interrupted | failed
    checkpoint_step: int | None = None
    error: str | None = None


def _unfinished(name: str, work: Path) -> RunEntry:
    status = read_status(work) or {}
    checkpoint = last_checkpoint(work)
    step = checkpoint_step(checkpoint) if checkpoint else None
    if is_locked(lock_path(work.parent / name)):
        return RunEntry(name, work, "running", step)
    if status.get("state") == "failed":
        return RunEntry(name, work, "failed", step, status.get("error"))
    # "running" on disk with no live claim: the process was killed
    return RunEntry(name, work, "interrupted", step)


def list_runs(folder: Path) -> list[RunEntry]:
    entries = []
    for path in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        if not path.is_dir():
            continue
        if path.name.startswith(".") and path.name.endswith(PARTIAL_SUFFIX):
            entries.append(_unfinished(path.name[1 : -len(PARTIAL_SUFFIX)], path))
        elif not path.name.startswith(".") and (read_status(path) or {}).get("state") == "finished":
            entries.append(RunEntry(path.name, path, "finished"))
    return entries
