"""Where a training run starts: fresh, or from the last complete checkpoint of an unfinished run.

Rerunning the command of a killed or crashed run continues it: the partial folder's config must
match the new one (keys that only move files or change what is shown may differ), and the newest
checkpoint whose ``trainer_state.json`` was written — the Trainer writes it last — is the one used.
The training log is cut back to that step, so the resumed run's log reads as one run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from sparselora.config import config_changes
from sparselora.files.atomic import atomic_write_text
from sparselora.run_folder.layout import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    TRAIN_LOG_FILE,
    RunFolderError,
    is_run_folder,
    partial_dir,
    write_config,
    write_status,
)

TRAINER_STATE_FILE = "trainer_state.json"


def checkpoint_step(checkpoint: Path) -> int | None:
    """The step a checkpoint folder completed, or None if it was not finished being written."""
    try:
        state = json.loads((checkpoint / TRAINER_STATE_FILE).read_text())
        return int(state["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def last_checkpoint(work: Path) -> Path | None:
    """The newest complete checkpoint of a partial run folder."""
    complete = [(checkpoint_step(c), c) for c in (work / CHECKPOINTS_DIR).glob("checkpoint-*") if c.is_dir()]
    complete = [(step, c) for step, c in complete if step is not None]
    return max(complete)[1] if complete else None


def _logged_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None  # a line cut short by the kill


def truncate_log(log: Path, step: int) -> None:
    """Drop log lines the killed run wrote after its last checkpoint: they are trained again."""
    if not log.is_file():
        return
    steps = [(line, _logged_step(line)) for line in log.read_text().splitlines()]
    kept = [line for line, logged in steps if logged is not None and logged <= step]
    atomic_write_text(log, "".join(f"{line}\n" for line in kept))


def check_own_work_folder(work: Path) -> None:
    """A partial folder is reused or removed only if sparselora wrote it (its status file says so) or it is empty."""
    if not work.exists() and not work.is_symlink():
        return
    if work.is_symlink() or not work.is_dir() or not (is_run_folder(work) or not any(work.iterdir())):
        raise RunFolderError(
            f"'{work}' exists but is not an unfinished sparselora run; it is never removed or reused. "
            "Move it away, or choose another `name` or `output_dir`."
        )


def prepare_work_folder(
    final: Path, flat_config: dict[str, Any], overwrite: bool, resume: bool, is_main: bool = True
) -> Path | None:
    """Create or reuse ``final``'s partial folder; return the checkpoint to resume from (None: fresh).

    The caller has already refused a finished run (``check_run_folder``). Only the main process
    changes the folder; the others only look for the checkpoint.
    """
    work = partial_dir(final)
    if not is_main:
        return last_checkpoint(work)
    check_own_work_folder(work)
    if overwrite and work.exists():
        shutil.rmtree(work)
    checkpoint = last_checkpoint(work) if work.exists() else None
    if checkpoint is not None:
        saved = yaml.safe_load((work / CONFIG_FILE).read_text()) if (work / CONFIG_FILE).is_file() else {}
        changes = config_changes(saved or {}, flat_config)
        if changes:
            details = ", ".join(f"{key}: {old!r} there, {new!r} now" for key, (old, new) in changes.items())
            raise RunFolderError(
                f"'{work}' holds an unfinished run of '{final.name}' with other settings ({details}). "
                "Rerun with the same config to resume it, pass --overwrite to discard it and start "
                "over, or choose another `name`."
            )
    elif resume:
        where = f"'{work}' has no complete checkpoint" if work.exists() else f"there is no unfinished run at '{work}'"
        raise RunFolderError(
            f"nothing to resume: {where} (checkpoints are written every `save_steps`). Drop --resume to start over."
        )
    elif work.exists():
        shutil.rmtree(work)  # a run killed before its first checkpoint: nothing to keep
    step = checkpoint_step(checkpoint) if checkpoint else None
    work.mkdir(parents=True, exist_ok=True)
    write_status(work, "running", resumed_from_step=step)  # first: the folder says whose it is
    write_config(work, flat_config)
    if checkpoint is not None:
        truncate_log(work / TRAIN_LOG_FILE, step)
    return checkpoint
