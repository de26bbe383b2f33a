"""Run a comparison's cells (here, or as SLURM / Ray jobs: compare.executors), resuming where an earlier
invocation stopped.

A cell is finished when its run folder holds metrics.json (run folders are published atomically,
so a killed cell leaves nothing that looks finished; its training resumes from its last checkpoint).
A cell that fails — bad key, NaN loss, any exception — is written to ``failed/<cell>.json`` with its
error and the next cell starts. A cell another process is training (two comparisons on one
folder) is left to it: the training process holds the run's lock, so no cell is trained twice.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from sparselora.compare.plan import Cell, CompareConfig, plan_cells, runs_dir
from sparselora.config import ConfigError, config_changes
from sparselora.files.atomic import atomic_write_json, atomic_write_text
from sparselora.files.locks import BUSY_EXIT_CODE, is_locked
from sparselora.files.paths import check_writable_folder
from sparselora.run_folder.layout import METRICS_FILE, lock_path, read_run

logger = logging.getLogger(__name__)

FAILED_DIR = "failed"
CELLS_DIR = "cells"  # each cell's resolved run config
LOGS_DIR = "logs"  # each cell's training output
COMPARE_FILE = "compare.yaml"


Outcome = Literal["finished", "failed", "claimed"]


@dataclass
class ComparisonStatus:
    finished: list[Cell] = field(default_factory=list)
    skipped: list[Cell] = field(default_factory=list)  # finished before this invocation
    failed: list[Cell] = field(default_factory=list)
    claimed: list[Cell] = field(default_factory=list)  # being trained by another process


def cell_finished(config: CompareConfig, cell: Cell) -> bool:
    return (runs_dir(config) / cell.run_name / METRICS_FILE).is_file()


class StaleCellError(RuntimeError):
    """A finished cell was trained with settings the comparison config no longer has."""


def changed_keys(config: CompareConfig, cell: Cell) -> dict[str, tuple]:
    """Keys whose resolved value differs between the finished run and the current config."""
    saved, _ = read_run(runs_dir(config) / cell.run_name)
    return config_changes(saved, cell.run_config(config).to_flat_dict())


def check_not_stale(config: CompareConfig, cells: list[Cell]) -> None:
    """Resuming must not mix settings: refuse when a finished cell no longer matches the config."""
    stale = {}
    for cell in cells:
        if cell_finished(config, cell):
            try:
                changed = changed_keys(config, cell)
            except ConfigError as err:
                # skipping it would report the old run under a config that no longer describes it
                raise ConfigError(
                    f"finished cell {cell.run_name}: the config's keys for it are invalid now: {err}"
                ) from None
            if changed:
                stale[cell.run_name] = changed
    if stale:
        details = "; ".join(
            f"{name}: " + ", ".join(f"{k} {old!r} → {new!r}" for k, (old, new) in changed.items())
            for name, changed in stale.items()
        )
        raise StaleCellError(
            f"finished cells were trained with other settings than the config now asks for ({details}). "
            f"Delete those folders under '{runs_dir(config)}' to re-run them, or restore the config."
        )


def failure_path(results_dir: Path, cell: Cell) -> Path:
    return results_dir / FAILED_DIR / f"{cell.run_name}.json"


class CellFailedError(RuntimeError):
    """A cell's training process exited with an error (the message is its error line)."""


class CellClaimedError(RuntimeError):
    """Another process (a second `compare` on the same folder) is training this cell."""


def run_cell(config: CompareConfig, cell: Cell) -> None:
    """Train one cell in its own Python process.

    A fresh process per cell makes its measurements its own — peak RSS above all, which in a
    long-lived process would include what earlier cells left behind — and a crash, even a
    segfault, cannot take the comparison down. The cell's config and full log are kept.
    """
    if is_locked(lock_path(runs_dir(config) / cell.run_name)):
        raise CellClaimedError(cell.run_name)
    cell_config = write_cell_config(config, cell)
    log = Path(config.output_dir) / LOGS_DIR / f"{cell.run_name}.log"
    # this attempt's own log: a second comparison racing for the cell must not truncate it
    attempt_log = log.with_name(f".{log.stem}.{os.getpid()}.log")
    attempt_log.parent.mkdir(parents=True, exist_ok=True)
    with attempt_log.open("w") as handle:
        command = [sys.executable, "-m", "sparselora.cli", "train", str(cell_config)]
        completed = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False)
    if completed.returncode == BUSY_EXIT_CODE or (completed.returncode != 0 and cell_finished(config, cell)):
        attempt_log.unlink()  # another process trained the cell meanwhile: its log is the one to keep
        raise CellClaimedError(cell.run_name)
    os.replace(attempt_log, log)
    if completed.returncode != 0:
        raise CellFailedError(_error_line(log))


def write_cell_config(config: CompareConfig, cell: Cell) -> Path:
    path = Path(config.output_dir) / CELLS_DIR / f"{cell.run_name}.yaml"
    atomic_write_text(path, yaml.safe_dump(cell.run_keys(config), sort_keys=False))
    return path


def _error_line(log: Path) -> str:
    """The CLI's ``error: ...`` line, else the end of a traceback."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return errors[-1] if errors else (lines[-1] if lines else f"exited with an error; see {log}")


def attempt_cell(config: CompareConfig, cell: Cell) -> Outcome:
    """Train one cell and record how it ended: the unit of work every executor runs, wherever it runs."""
    failure = failure_path(Path(config.output_dir), cell)
    try:
        run_cell(config, cell)
    except CellClaimedError:
        return "claimed"
    except Exception as err:  # one bad cell must not stop the comparison
        logger.error("cell %s failed: %s", cell.run_name, err)
        error = str(err) if isinstance(err, CellFailedError) else f"{type(err).__name__}: {err}"
        record_failure(config, cell, error, traceback.format_exc())
        return "failed"
    failure.unlink(missing_ok=True)  # an earlier failure of this cell is superseded
    return "finished"


def record_failure(config: CompareConfig, cell: Cell, error: str, details: str = "") -> None:
    payload = {"cell": cell.run_name, "label": cell.label, "task": cell.task, "seed": cell.seed}
    atomic_write_json(failure_path(Path(config.output_dir), cell), payload | {"error": error, "traceback": details})


def prepare_comparison(config: CompareConfig, only: dict[str, str] | None = None) -> list[Cell]:
    """The selected cells, once the results folder is writable, no finished cell is stale and compare.yaml is
    written (what ``report`` reads)."""
    results_dir = check_writable_folder(Path(config.output_dir), "output_dir")
    cells = plan_cells(config, only)
    check_not_stale(config, cells)  # before compare.yaml is rewritten: a refused run changes nothing
    atomic_write_text(results_dir / COMPARE_FILE, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return cells


def run_comparison(
    config: CompareConfig, only: dict[str, str] | None = None, progress: bool = True
) -> ComparisonStatus:
    """Train every selected cell that is not finished, on the config's executor."""
    from sparselora.compare.executors import EXECUTORS

    cells = prepare_comparison(config, only)
    status = ComparisonStatus(skipped=[cell for cell in cells if cell_finished(config, cell)])
    pending = [cell for cell in cells if not cell_finished(config, cell)]
    outcomes = EXECUTORS[config.executor](config, pending, progress) if pending else []
    for cell, outcome in zip(pending, outcomes, strict=True):
        getattr(status, outcome).append(cell)
    return status


def cell_commands(config: CompareConfig, only: dict[str, str] | None = None) -> list[str]:
    """One ``sparselora train`` command per unfinished cell, its config written: for any scheduler."""
    cells = [cell for cell in prepare_comparison(config, only) if not cell_finished(config, cell)]
    return [shlex.join(["sparselora", "train", str(write_cell_config(config, cell).resolve())]) for cell in cells]
