"""Where a comparison's cells train: here one after another, as a SLURM job array (submitit), or as Ray tasks.

Each job runs ``runner.attempt_cell``: the same ``sparselora train`` process as a local cell, its run folder
under the shared results folder (run locks keep two jobs off one cell), a failure written to ``failed/``.
The interleaved timing pass stays on the machine that runs ``compare``: step times from a cluster's
mixed nodes are not comparable.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from sparselora.compare.plan import Cell, CompareConfig
from sparselora.compare.runner import Outcome, attempt_cell, record_failure
from sparselora.config import ConfigError

SUBMITIT_DIR = "submitit"  # job scripts and logs of the SLURM executor


def run_local(config: CompareConfig, cells: list[Cell], progress: bool) -> list[Outcome]:
    outcomes = []
    bar = tqdm(cells, desc=config.name, unit="cell", disable=not progress)
    for cell in bar:
        bar.set_postfix_str(cell.run_name)
        outcomes.append(attempt_cell(config, cell))
    return outcomes


def run_submitit(
    config: CompareConfig, cells: list[Cell], progress: bool, cluster: str | None = "slurm"
) -> list[Outcome]:
    """One job per cell in one array. ``cluster="local"`` runs the jobs as local processes (submitit's own
    local executor), which is how this is tested without a cluster."""
    submitit = _import("submitit", "slurm")
    folder = Path(config.output_dir) / SUBMITIT_DIR / "%j"
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        executor.update_parameters(name=config.name, **config.executor_options)
    except (RuntimeError, ValueError, TypeError) as err:
        raise ConfigError(f"executor slurm: {err} (check executor_options and that sbatch is on PATH)") from None
    jobs = executor.map_array(attempt_cell, [config] * len(cells), cells)
    return [
        _result(config, cell, job.result)
        for cell, job in tqdm(list(zip(cells, jobs, strict=True)), desc=config.name, unit="cell", disable=not progress)
    ]


def run_ray(config: CompareConfig, cells: list[Cell], progress: bool) -> list[Outcome]:
    """One Ray task per cell on the cluster ``RAY_ADDRESS`` names, the one already initialised in this process,
    or a local instance started (and stopped) here."""
    ray = _import("ray", "ray")
    started = not ray.is_initialized()
    if started:
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(**({"num_cpus": 1} | config.executor_options))(attempt_cell)
        refs = {task.remote(config, cell): cell for cell in cells}
        outcomes: dict[Cell, Outcome] = {}
        with tqdm(total=len(cells), desc=config.name, unit="cell", disable=not progress) as bar:
            waiting = list(refs)
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1)
                cell = refs[done[0]]
                outcomes[cell] = _result(config, cell, lambda ref=done[0]: ray.get(ref))
                bar.update()
        return [outcomes[cell] for cell in cells]
    finally:
        if started:
            ray.shutdown()


def _result(config: CompareConfig, cell: Cell, result: Callable[[], Outcome]) -> Outcome:
    """A job's outcome; a job the scheduler lost (killed, node gone) is recorded as a failed cell."""
    try:
        return result()
    except Exception as err:
        record_failure(config, cell, f"job failed: {type(err).__name__}: {err}", traceback.format_exc())
        return "failed"


def _import(module: str, executor: str):
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(
            f"executor {executor} needs {module}: pip install 'sparselora[sweeps]' (or use --executor local)"
        ) from None


EXECUTORS: dict[str, Callable[[CompareConfig, list[Cell], bool], list[Outcome]]] = {
    "local": run_local,
    "slurm": run_submitit,
    "ray": run_ray,
}
