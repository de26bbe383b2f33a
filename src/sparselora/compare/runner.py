"""Run a comparison's cells one after another, resuming where an earlier invocation stopped.

A cell is finished when its run folder holds metrics.json (run folders are published atomically,
so a killed cell leaves nothing that looks finished). A cell that fails — bad key, NaN loss, any
exception — is written to ``failed/<cell>.json`` with its error and the next cell starts.
"""

from __future__ import annotations

import json
import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from sparselora.compare.plan import Cell, CompareConfig, plan_cells, runs_dir
from sparselora.config import build_config
from sparselora.runs import METRICS_FILE

logger = logging.getLogger(__name__)

FAILED_DIR = "failed"
COMPARE_FILE = "compare.yaml"


@dataclass
class ComparisonStatus:
    finished: list[Cell] = field(default_factory=list)
    skipped: list[Cell] = field(default_factory=list)  # finished before this invocation
    failed: list[Cell] = field(default_factory=list)


def cell_finished(config: CompareConfig, cell: Cell) -> bool:
    return (runs_dir(config) / cell.run_name / METRICS_FILE).is_file()


def failure_path(results_dir: Path, cell: Cell) -> Path:
    return results_dir / FAILED_DIR / f"{cell.run_name}.json"


def run_cell(config: CompareConfig, cell: Cell) -> None:
    from sparselora.train import train  # heavy import, only when something trains

    train(build_config(cell.run_keys(config), source=f"(cell {cell.run_name}) "))


def run_comparison(
    config: CompareConfig, only: dict[str, str] | None = None, progress: bool = True
) -> ComparisonStatus:
    results_dir = Path(config.output_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / COMPARE_FILE).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    status = ComparisonStatus()
    cells = plan_cells(config, only)
    bar = tqdm(cells, desc=config.name, unit="cell", disable=not progress)
    for cell in bar:
        bar.set_postfix_str(cell.run_name)
        if cell_finished(config, cell):
            status.skipped.append(cell)
            continue
        failure = failure_path(results_dir, cell)
        try:
            run_cell(config, cell)
        except Exception as err:  # one bad cell must not stop the comparison
            logger.error("cell %s failed: %s", cell.run_name, err)
            failure.parent.mkdir(exist_ok=True)
            payload = {"cell": cell.run_name, "label": cell.label, "task": cell.task, "seed": cell.seed}
            payload |= {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
            failure.write_text(json.dumps(payload, indent=2) + "\n")
            status.failed.append(cell)
            continue
        failure.unlink(missing_ok=True)  # an earlier failure of this cell is superseded
        status.finished.append(cell)
    return status
