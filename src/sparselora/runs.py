"""The run folder: its layout, atomic publication, and reading it back.

``runs/<name>/`` holds config.yaml, metrics.json, train_log.jsonl, the adapter (PEFT format)
or full model, the tokenizer and a model card README.md. A run is written to a hidden
``.<name>.partial`` folder and renamed into place only when complete, so a crash or a bad
config never leaves a half-written run or damages an earlier one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
TRAIN_LOG_FILE = "train_log.jsonl"
METRICS_SCHEMA_VERSION = 1


class RunFolderError(FileExistsError):
    """A run folder exists already, or a folder is not a finished run."""


def partial_dir(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


def check_run_folder(final: Path, overwrite: bool) -> None:
    """Refuse to plan over a finished run unless ``overwrite``."""
    if (final / METRICS_FILE).is_file() and not overwrite:
        raise RunFolderError(
            f"run folder '{final}' already holds a finished run. Pass --overwrite to replace it "
            "(it is replaced only once the new run succeeds) or choose another `name`."
        )


def start_run_folder(final: Path) -> Path:
    """A fresh hidden folder next to ``final`` to write the run into."""
    partial = partial_dir(final)
    if partial.exists():
        shutil.rmtree(partial)  # left by a killed run
    partial.mkdir(parents=True)
    return partial


def publish(partial: Path, final: Path) -> None:
    """Atomically swap the finished partial folder into place."""
    previous = final.with_name(f".{final.name}.previous")
    if final.exists():
        final.rename(previous)
    partial.rename(final)
    if previous.exists():
        shutil.rmtree(previous)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def write_config(folder: Path, flat_config: dict[str, Any]) -> None:
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(flat_config, sort_keys=False))


def read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The resolved config and metrics of a finished run."""
    run_dir = Path(run_dir)
    missing = [name for name in (CONFIG_FILE, METRICS_FILE) if not (run_dir / name).is_file()]
    if missing:
        raise RunFolderError(
            f"'{run_dir.resolve()}' is not a finished run folder (missing {', '.join(missing)}); "
            "pass a folder written by `sparselora train`."
        )
    config = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    return config, metrics


def read_train_log(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / TRAIN_LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
