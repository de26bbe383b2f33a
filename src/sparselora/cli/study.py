"""The SVD-vs-random study."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sparselora.cli.core import DataDirOption, app, console

study_app = typer.Typer(help="The SVD-vs-random study (docs/study/).", no_args_is_help=True)
app.add_typer(study_app, name="study")


@study_app.command("svd-vs-random")
def study_svd_vs_random(
    out: Annotated[Path, typer.Option("--out", help="Study folder: phase_a/, phase_b/, phase_c/, report.md.")],
    phase: Annotated[str, typer.Option(help="a, b, c or all.")] = "all",
    quick: Annotated[bool, typer.Option(help="Reduced sizes (minutes; used by the tests).")] = False,
    models: Annotated[
        str | None, typer.Option(help="Phase B models, comma-separated (default minilm,smollm2; quick: minilm).")
    ] = None,
    finetune_model: Annotated[str, typer.Option(help="Phase C model.")] = "minilm",
    data_dir: DataDirOption = None,
) -> None:
    """Run phase A (synthetic), B (real weights, real predictor) and/or C (prune → fine-tune), then the report."""
    import os

    from sparselora.study.run import PHASES, run_study

    if data_dir is not None:
        os.environ["SPARSELORA_DATA_DIR"] = str(data_dir)
    phases = set(PHASES) if phase == "all" else {phase.lower()}
    report_path = run_study(out, phases, quick, tuple(models.split(",")) if models else None, finetune_model)
    console.print(f"report: {report_path}")


@study_app.command("report")
def study_report(study_dir: Annotated[Path, typer.Argument(help="A study folder.")]) -> None:
    """Rebuild report.md from the phases' CSV files."""
    from sparselora.study.report import write_report

    console.print(str(write_report(study_dir)))
