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
import time
from pathlib import Path
from typing import Any, Literal

import yaml

from sparselora.atomic import atomic_write_json, atomic_write_text

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


def check_run_folder(final: Path, overwrite: bool) -> None:
    """Refuse to plan over a finished run unless ``overwrite``."""
    if (final / METRICS_FILE).is_file() and not overwrite:
        raise RunFolderError(
            f"run folder '{final}' already holds a finished run. Pass --overwrite to replace it "
            "(it is replaced only once the new run succeeds) or choose another `name`."
        )


def publish(partial: Path, final: Path) -> None:
    """Swap the finished partial folder into place (renames only: a crash leaves one or the other)."""
    previous = final.with_name(f".{final.name}.previous")
    if previous.exists():
        shutil.rmtree(previous)
    if final.exists():
        final.rename(previous)
    partial.rename(final)
    if previous.exists():
        shutil.rmtree(previous)


def write_config(folder: Path, flat_config: dict[str, Any]) -> None:
    atomic_write_text(folder / CONFIG_FILE, yaml.safe_dump(flat_config, sort_keys=False))


def write_status(folder: Path, state: RunState, **details: Any) -> None:
    """status.json: what the folder is now (a reader never sees a half-written one)."""
    payload = {"state": state, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    payload |= {"pid": os.getpid(), "host": socket.gethostname(), **details}
    atomic_write_json(folder / STATUS_FILE, payload)


def read_status(folder: Path) -> dict[str, Any] | None:
    """The folder's status; a finished run written before status files existed counts as finished."""
    path = Path(folder) / STATUS_FILE
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return {"state": "failed", "error": f"unreadable {STATUS_FILE}"}
    if (Path(folder) / METRICS_FILE).is_file():
        return {"state": "finished"}
    return None


def read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The resolved config and metrics of a finished run; anything else is refused with the reason."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder '{run_dir.resolve()}' does not exist; pass one `sparselora train` wrote.")
    status = read_status(run_dir) or {}
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
    return config, metrics


def read_train_log(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / TRAIN_LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
