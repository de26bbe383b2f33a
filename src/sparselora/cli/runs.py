"""Commands on one run: train, eval, export, push, and the state of every run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sparselora.cli.core import DataDirOption, SetOption, app, console, metrics_table


def print_run_summary(run_dir: Path) -> None:
    from sparselora.run_folder.layout import read_run

    _, metrics = read_run(run_dir)
    rows = [(k, f"{v:.4f}") for k, v in metrics["task_metrics"].items()]
    params, train, inference, memory = metrics["params"], metrics["train"], metrics["inference"], metrics["memory"]
    rows += [
        ("trainable params", f"{params['trainable']:,} ({params['trainable_pct']:.2f}%)"),
        ("train steps", f"{train['steps']:,}"),
        ("median ms/step", f"{train['median_step_ms']:.1f}"),
        ("train wall time (s)", f"{train['wall_time_s']:.1f}"),
        (f"peak memory MB ({memory['kind']})", f"{memory['peak_mb']:,.0f}"),
        ("inference ms/batch (median)", f"{inference['median_batch_latency_ms']:.1f}"),
    ]
    console.print(metrics_table(f"{metrics['run']['name']} → {run_dir}", rows))


@app.command()
def train(
    config: Annotated[Path | None, typer.Argument(help="YAML run config (omit to use the defaults).")] = None,
    overrides: SetOption = None,
    data_dir: DataDirOption = None,
    output_dir: Annotated[Path | None, typer.Option(help="Parent folder of run folders (default runs/).")] = None,
    overwrite: Annotated[
        bool,
        typer.Option(help="Start over: replace a finished run once the new one succeeds; drop an unfinished one."),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(help="Require resuming an unfinished run from its last checkpoint (default: if one exists)."),
    ] = False,
) -> None:
    """Train one (model, task, method) run and write runs/<name>/; rerun it to resume after a crash."""
    from sparselora.config import load_config
    from sparselora.training.loop import train as run_training

    overrides = list(overrides or [])
    overrides += [f"data_dir={data_dir}"] if data_dir else []
    overrides += [f"output_dir={output_dir}"] if output_dir else []
    run_dir = run_training(load_config(config, overrides), overwrite=overwrite, resume=resume)
    if run_dir is not None:
        print_run_summary(run_dir)


@app.command("eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `sparselora train`.")],
    data_dir: DataDirOption = None,
    tolerance: Annotated[
        float, typer.Option(min=0, help="Exit with code 1 if a metric differs by more than this.")
    ] = 1e-4,
    sparse: Annotated[
        bool,
        typer.Option(help="SparseLoRA runs: evaluate with the training sparsity (recorded metrics are dense)."),
    ] = False,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda or cuda:N (default: where training runs: CUDA if present).")
    ] = None,
) -> None:
    """Reload a run's adapter onto its base model and reproduce its validation metrics."""
    from sparselora.evaluation.rerun import evaluate_run
    from sparselora.training.precision import parse_device

    overrides = {"data_dir": str(data_dir)} if data_dir else None
    recorded, measured = evaluate_run(run_dir, overrides, sparse=sparse, device=parse_device(device))
    table = Table(title=f"re-evaluation of {run_dir}")
    for column in ("metric", "recorded", "now", "difference"):
        table.add_column(column, justify="right" if column != "metric" else "left")
    worst = 0.0
    for key, now in measured.items():
        before = recorded.get(key)
        diff = abs(now - before) if before is not None else float("nan")
        worst = max(worst, diff) if before is not None else worst
        table.add_row(key, f"{before:.6f}" if before is not None else "-", f"{now:.6f}", f"{diff:.2e}")
    console.print(table)
    if sparse:
        console.print("sparse evaluation: differences from the (dense) recorded metrics are expected")
        return
    if worst > tolerance:
        console.print(f"[bold red]metrics differ by up to {worst:.2e} (> {tolerance:g})[/]")
        raise typer.Exit(code=1)
    console.print(f"reproduced: every metric within {tolerance:g}")


@app.command("export")
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `sparselora train`.")],
    merge: Annotated[
        Path, typer.Option("--merge", help="New folder for the adapter merged into its base (a plain model).")
    ],
    dtype: Annotated[
        str, typer.Option(help="Weights of the merged model: fp32, bf16 or fp16 (merged in fp32).")
    ] = "fp32",
) -> None:
    """Merge a run's adapter into its base model: a transformers folder that from_pretrained and pipeline() load."""
    from sparselora.export import merge_run

    out = merge_run(run_dir, merge, dtype)
    console.print(f"merged model written to {out} (load with AutoModelFor….from_pretrained or pipeline())")


@app.command("push")
def push(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder.")],
    repo_id: Annotated[str, typer.Argument(help="Hub model repo, e.g. you/sst2-lora (created if missing).")],
    private: Annotated[bool, typer.Option(help="Create the repo private.")] = False,
) -> None:
    """Upload a run's adapter, tokenizer and model card to the Hugging Face Hub."""
    from sparselora.hub import push_run

    console.print(f"uploaded: {push_run(run_dir, repo_id, private=private)}")


@app.command("runs")
def runs_(
    folder: Annotated[Path, typer.Argument(help="A parent folder of run folders.")] = Path("runs"),
) -> None:
    """Every run under a folder and its state: finished, running, interrupted (resumable) or failed."""
    from sparselora.run_folder.states import list_runs

    if not folder.is_dir():
        raise FileNotFoundError(f"runs folder '{folder.resolve()}' does not exist; pass the output_dir of your runs")
    table = Table(title=f"runs in {folder}")
    for column in ("run", "state", "last checkpoint", "folder", "error"):
        table.add_column(column)
    for entry in list_runs(folder):
        step = "" if entry.checkpoint_step is None else f"step {entry.checkpoint_step}"
        table.add_row(entry.name, entry.state, step, str(entry.folder), entry.error or "")
    console.print(table)
