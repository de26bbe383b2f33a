"""Comparisons: run methods × tasks × seeds, and rebuild their tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sparselora.cli.core import DataDirOption, app, console


@app.command()
def compare(
    config: Annotated[Path, typer.Argument(help="Comparison YAML: methods, tasks, seeds, shared keys, targets.")],
    only: Annotated[
        str | None, typer.Option("--only", help="Run only matching cells: method=lora,task=sst2,seed=1 (any subset).")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Override a shared run key for every cell (repeatable).")
    ] = None,
    output_dir: Annotated[Path | None, typer.Option(help="Results folder (default: the config's output_dir).")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds instead of the config's.")] = None,
    data_dir: DataDirOption = None,
    retime: Annotated[
        bool, typer.Option("--retime", help="Measure the interleaved step times again (config key `timing`).")
    ] = False,
    executor: Annotated[
        str | None,
        typer.Option(help="Where cells train: local (one after another), slurm (submitit) or ray (config key)."),
    ] = None,
    plan: Annotated[
        bool, typer.Option("--plan", help="Print each unfinished cell's train command instead of running it.")
    ] = False,
) -> None:
    """Run methods × tasks × seeds (finished cells are skipped), then write tables, plots and report.html."""
    from sparselora.compare import load_compare_config, run_comparison
    from sparselora.compare.plan import parse_only, with_flags
    from sparselora.compare.runner import cell_commands
    from sparselora.compare.timing import time_comparison
    from sparselora.config import ConfigError
    from sparselora.report.comparison import build_report

    comparison = with_flags(load_compare_config(config), overrides, output_dir, seeds, data_dir, executor)
    if plan:
        for command in cell_commands(comparison, parse_only(only)):
            typer.echo(command)
        typer.echo(f"# then: sparselora report {comparison.output_dir}", err=True)
        return
    if retime and comparison.timing is None:
        raise ConfigError(f"--retime: '{config}' has no `timing:` key; add e.g. `timing: {{rounds: 20, warmup: 3}}`")
    status = run_comparison(comparison, parse_only(only))
    console.print(
        f"{len(status.finished)} cell(s) trained, {len(status.skipped)} already finished, "
        f"{len(status.claimed)} being trained by another process, {len(status.failed)} failed"
        + (f": {', '.join(c.run_name for c in status.failed)} (see failed/)" if status.failed else "")
    )
    for path in time_comparison(comparison, retime=retime):
        console.print(f"interleaved step times in {path}")
    options = [f"--set {pair}" for pair in overrides or []]
    options += [f"--output-dir {output_dir}"] if output_dir else []
    options += [f"--seeds {seeds}"] if seeds else []
    options += [f"--executor {executor}"] if executor else []
    command = " ".join(["sparselora compare", str(config), *options])
    written = build_report(Path(comparison.output_dir), command=command)
    console.print(f"tables, plots and validation.md in {comparison.output_dir} ({len(written)} files)")
    if status.failed:
        raise typer.Exit(code=1)


@app.command()
def report(
    results_dir: Annotated[Path, typer.Argument(help="A comparison's results folder (holds compare.yaml).")],
    html: Annotated[
        bool, typer.Option("--html/--no-html", help="Also write report.html (interactive, self-contained).")
    ] = True,
) -> None:
    """Rebuild tables, plots, validation.md and report.html from finished runs, without training."""
    from sparselora.report.comparison import build_report

    written = build_report(results_dir, command=f"sparselora report {results_dir}", html=html)
    for path in written:
        console.print(str(path))
