"""The run folder: its layout, its status, atomic publication, and reading it back.

```
runs/<name>/                 a finished run: config.yaml, metrics.json, train_log.jsonl, status.json,
                             the adapter (PEFT format) or full model, the tokenizer, a model card
runs/.<name>.partial/        the run while it trains: config.yaml, status.json (running | failed),
                             train_log.jsonl, checkpoints/checkpoint-<step>/ (resumable)
runs/.<name>.lock            the claim of the process training it (released when it exits)
```

A run is built in its partial folder and renamed into place only when complete, so a crash,
a kill or a bad config never leaves a half-written run or damages an earlier one; rerunning the
same command resumes from the last complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import yaml

from sparselora.files.atomic import atomic_write_json, atomic_write_text

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
STATUS_FILE = "status.json"
TRAIN_LOG_FILE = "train_log.jsonl"
CHECKPOINTS_DIR = "checkpoints"
METRICS_SCHEMA_VERSION = 1

RunState = Literal["running", "failed", "finished"]


class RunFolderError(FileExistsError):
    """A run folder exists already, or a folder is not a finished run."""


def partial_dir(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


def lock_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.lock")


def is_run_folder(folder: Path) -> bool:
    """A folder sparselora wrote as a run: its status file says so (or, from before status files, metrics.json)."""
    status = Path(folder) / STATUS_FILE
    if status.is_file():
        try:
            return json.loads(status.read_text()).get("state") in ("finished", "running", "failed")
        except (ValueError, UnicodeDecodeError, AttributeError):
            return False
    return (Path(folder) / METRICS_FILE).is_file() and (Path(folder) / CONFIG_FILE).is_file()


def check_run_folder(final: Path, overwrite: bool) -> None:
    """Refuse to plan over a finished run unless ``overwrite``, and over anything that is not a run, ever."""
    if not final.exists() and not final.is_symlink():
        return
    if final.is_symlink() or not final.is_dir() or not is_run_folder(final):
        raise RunFolderError(
            f"'{final}' exists and is not a sparselora run folder; it is never replaced. "
            "Choose another `name` or `output_dir`, or move it away."
        )
    if not overwrite:
        raise RunFolderError(
            f"run folder '{final}' already holds a finished run. Pass --overwrite to replace it "
            "(it is replaced only once the new run succeeds) or choose another `name`."
        )


def publish(partial: Path, final: Path) -> None:
    """Swap the finished partial folder into place (renames only: a crash leaves one or the other).

    Only an earlier run folder of the same name is replaced (checked again here, not only at the start).
    """
    check_run_folder(final, overwrite=True)
    if not final.exists():
        partial.rename(final)
        return
    # the earlier run steps aside under a fresh name (an empty folder made for it: rename replaces it)
    previous = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".previous", dir=final.parent))
    final.rename(previous)
    partial.rename(final)
    if is_run_folder(previous):
        shutil.rmtree(previous)


def write_config(folder: Path, flat_config: dict[str, Any]) -> None:
    atomic_write_text(folder / CONFIG_FILE, yaml.safe_dump(flat_config, sort_keys=False))


def write_status(folder: Path, state: RunState, **details: Any) -> None:
    """status.json: what the folder is now (a reader never sees a half-written one)."""
    payload = {"state": state, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    payload |= {"pid": os.getpid(), "host": socket.gethostname(), **details}
    atomic_write_json(folder / STATUS_FILE, payload)


def mark_failed(folder: Path, **details: Any) -> None:
    """status.json says "failed", even on a full disk: where the atomic write has no room, the old file is
    overwritten in place (its blocks are freed first) and, failing that, removed (then it reads "interrupted")."""
    try:
        write_status(folder, "failed", **details)
        return
    except OSError:
        pass
    path = folder / STATUS_FILE
    try:
        path.write_text(json.dumps({"state": "failed", **details}))
    except OSError:
        path.unlink(missing_ok=True)


def read_status(folder: Path) -> dict[str, Any] | None:
    """The folder's status; a finished run written before status files existed counts as finished."""
    path = Path(folder) / STATUS_FILE
    if path.is_file():
        try:
            status = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            status = None
        if isinstance(status, dict) and status.get("state") in ("finished", "running", "failed"):
            return status
        return {"state": "unreadable", "error": f"'{path}' is not a status file sparselora wrote"}
    if (Path(folder) / METRICS_FILE).is_file():
        return {"state": "finished"}
    return None


def read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The resolved config and metrics of a finished run; anything else is refused with the reason."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder '{run_dir.resolve()}' does not exist; pass one `sparselora train` wrote.")
    status = read_status(run_dir) or {}
    if status.get("state") == "unreadable":
        raise RunFolderError(
            f"{status['error']}: the folder was changed after training. If its run had finished (metrics.json "
            f"present), delete {STATUS_FILE} to read it again; otherwise train it again with --overwrite."
        )
    if status.get("state") not in (None, "finished"):
        reason = f": {status['error']}" if status.get("error") else ""
        raise RunFolderError(
            f"'{run_dir.resolve()}' is not a finished run (state: {status['state']}{reason}). "
            "Rerun its `sparselora train` command to resume it."
        )
    missing = [name for name in (CONFIG_FILE, METRICS_FILE) if not (run_dir / name).is_file()]
    if missing:
        raise RunFolderError(
            f"'{run_dir.resolve()}' is not a finished run folder (missing {', '.join(missing)}); "
            "pass a folder written by `sparselora train`."
        )
    try:
        config = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunFolderError(f"'{run_dir.resolve()}' holds a corrupt {CONFIG_FILE} or {METRICS_FILE}: {err}") from None
    if not isinstance(config, dict) or not isinstance(metrics, dict):
        raise RunFolderError(f"'{run_dir.resolve()}': {CONFIG_FILE} and {METRICS_FILE} must hold mappings")
    check_metrics(metrics, run_dir / METRICS_FILE)
    return config, metrics


def check_metrics(metrics: dict[str, Any], path: Path) -> None:
    """The parts of metrics.json readers rely on: a mapping of task metrics to numbers."""
    task_metrics = metrics.get("task_metrics")
    problem = None
    if not isinstance(task_metrics, dict) or not task_metrics:
        problem = "has no `task_metrics` mapping"
    else:
        bad = [k for k, v in task_metrics.items() if isinstance(v, bool) or not isinstance(v, int | float)]
        problem = f"has non-numeric task metrics {bad}" if bad else None
    if problem:
        raise RunFolderError(
            f"'{path.resolve()}' {problem}: it was not written by `sparselora train` or was edited since. "
            "Train the run again with --overwrite."
        )


def read_train_log(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / TRAIN_LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
