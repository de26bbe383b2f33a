"""Everything a comparison's results folder shows, rebuilt from its finished runs: tables, plots, validation."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import yaml

from sparselora.compare.plan import CompareConfig
from sparselora.compare.runner import COMPARE_FILE
from sparselora.compare.timing import read_timing
from sparselora.files.atomic import atomic_write_text
from sparselora.files.locks import exclusive_lock
from sparselora.report.plots import plot_loss_curves, plot_peak_memory, plot_quality_vs_time
from sparselora.report.results import COLUMNS, collect, primary_metric, write_task_results
from sparselora.report.validation import checks, validation_markdown
from sparselora.run_folder.layout import read_train_log

REPORT_LOCK = ".report.lock"


class NotAResultsFolderError(FileNotFoundError):
    """The folder holds no comparison (no compare.yaml)."""


def load_results_config(results_dir: Path) -> CompareConfig:
    path = results_dir / COMPARE_FILE
    if not path.is_file():
        raise NotAResultsFolderError(
            f"'{results_dir}' is not a comparison results folder: '{path}' is missing. "
            "Run `sparselora compare CONFIG.yaml` first (it writes compare.yaml there)."
        )
    try:
        return CompareConfig(**yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, TypeError, ValueError) as err:
        raise NotAResultsFolderError(f"'{path}' is not a readable comparison config: {err}") from None


def loss_curves(
    results_dir: Path, task: str, labels: list[str], key: str = "loss"
) -> dict[str, tuple[list[int], list[float]]]:
    """Mean over seeds of a logged value (``loss``, or ``eval_loss`` of runs with ``eval_steps``) per step."""
    curves = {}
    for label in labels:
        logs = []
        for run_dir in sorted((results_dir / "runs").glob(f"{task}__{label}__s*")):
            series = pd.Series({e["step"]: e[key] for e in read_train_log(run_dir) if key in e}, dtype=float)
            if not series.empty:
                logs.append(series)
        if logs:
            mean = pd.concat(logs, axis=1).mean(axis=1).sort_index()
            curves[label] = (mean.index.tolist(), mean.tolist())
    return curves


def build_report(results_dir: Path, command: str | None = None, html: bool = True) -> list[Path]:
    """Write <task>/results.{md,csv,json}, <task>/plots/*.{png,svg}, validation.md and (``html``) report.html.

    Two comparisons sharing a results folder take turns here; every file is replaced atomically.
    """
    config = load_results_config(results_dir)
    with exclusive_lock(Path(results_dir) / REPORT_LOCK, f"the report of '{results_dir}'", wait=True):
        return _write_report(results_dir, config, command, html)


def _write_report(results_dir: Path, config: CompareConfig, command: str | None, html: bool) -> list[Path]:
    frame = collect(results_dir)
    written: list[Path] = []
    validation = [f"# Validation: {config.name}", "", _provenance(command), ""]
    page_parts: dict[str, dict] = {}
    for task in config.tasks:
        task_frame = frame[frame["task"] == task] if not frame.empty else frame
        if task_frame.empty:
            validation.append(f"## {task}\n\nNo finished or failed cells yet.\n")
            continue
        folder = results_dir / task
        summary = write_task_results(
            task_frame,
            list(config.methods),
            config.reference,
            folder,
            f"{config.name}: {task}",
            read_timing(results_dir, task),
        )
        written += [folder / "results.md", folder / "results.csv", folder / "results.json"]
        if (summary["seeds"] > 0).any():
            metric = primary_metric(summary)
            plots = folder / "plots"
            higher = next(c.better == "max" for c in COLUMNS if c.key == metric)
            written += plot_quality_vs_time(
                summary, metric, f"{task}: {metric} vs time", plots / "quality_vs_time", higher_is_better=higher
            )
            written += plot_peak_memory(summary, f"{task}: peak memory", plots / "peak_memory")
            curves = loss_curves(results_dir, task, list(config.methods))
            eval_curves = loss_curves(results_dir, task, list(config.methods), key="eval_loss")
            written += plot_loss_curves(curves, f"{task}: loss", plots / "loss_curves", eval_curves)
            page_parts[task] = {
                "summary": summary,
                "metric": metric,
                "higher": higher,
                "curves": curves,
                "checks": checks(summary, config),
            }
        validation.append(validation_markdown(task, summary, config))
    atomic_write_text(results_dir / "validation.md", "\n".join(validation))
    written.append(results_dir / "validation.md")
    if html:
        from sparselora.report.html import write_html_report

        written.append(write_html_report(results_dir, config, frame, page_parts, _provenance(command)))
    return written


def _provenance(command: str | None) -> str:
    text = f"Generated {date.today().isoformat()} from the finished runs in this folder"
    return text + (f" (`{command}`)." if command else ".")
