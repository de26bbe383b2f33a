"""What is there and what it costs: FLOPs, LayerLens scores, methods, tasks, config keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sparselora.cli.core import DataDirOption, SetOption, app, console
from sparselora.files.atomic import atomic_write_json
from sparselora.files.paths import check_output_file, check_writable_folder


@app.command()
def flops(
    config: Annotated[Path | None, typer.Argument(help="A run config (model, method, sparsity keys).")] = None,
    overrides: SetOption = None,
    seq_len: Annotated[int, typer.Option(min=1, help="Tokens per sequence (attention scores grow with it).")] = 128,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Sequences per batch (the estimator's cost is per batch).")
    ] = 32,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the per-layer numbers here.")] = None,
) -> None:
    """Per-token FLOPs of the forward pass and the training step, per layer, dense vs sparse (1 MAC = 2 FLOPs)."""
    from sparselora.config import load_config
    from sparselora.flops import config_flops, flops_payload

    if json_out is not None:
        check_output_file(json_out, "--json")
    run = load_config(config, overrides)
    sparse, dense = config_flops(run.to_flat_dict(), seq_len, batch_size)
    components = dense.components() + [c for c in sparse.components() if c not in dense.components()]
    title = f"{run.model} / {run.method}: training-step MFLOPs per token, sparse (seq {seq_len}, batch {batch_size})"
    table = Table(title=title)
    table.add_column("layer")
    for component in components:
        table.add_column(component, justify="right")
    table.add_column("dense", justify="right")
    table.add_column("sparse", justify="right")
    table.add_column("ratio", justify="right")
    rows = [(str(i), d, s) for i, (d, s) in enumerate(zip(dense.layers, sparse.layers, strict=True))]
    for name, d, s in [*rows, ("head", dense.head, sparse.head)]:
        dense_total, sparse_total = sum(d.train.values()), sum(s.train.values())
        cells = [f"{s.train.get(c, 0) / 1e6:.3f}" for c in components]
        totals = [f"{dense_total / 1e6:.3f}", f"{sparse_total / 1e6:.3f}", f"{sparse_total / dense_total:.3f}"]
        table.add_row(name, *cells, *totals)
    Console(width=max(console.width, 40 + 11 * len(components))).print(table)
    for kind in ("forward", "train"):
        ratio = sparse.total(kind) / dense.total(kind)
        console.print(
            f"{kind:8s} dense {dense.total(kind) / 1e9:.4f} GFLOPs/token, sparse {sparse.total(kind) / 1e9:.4f} "
            f"(ratio {ratio:.3f}, {1 / ratio:.2f}× fewer)"
        )
    if json_out is not None:
        atomic_write_json(json_out, flops_payload(run.model, run.method, seq_len, batch_size, sparse, dense))
        console.print(f"written to {json_out}")


@app.command()
def lens(
    model: Annotated[str, typer.Argument(help="Model alias, folder or Hub id.")],
    task: Annotated[str, typer.Argument(help="Task whose training batches score the layers.")],
    overrides: SetOption = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for layer_scores.json/.png (default runs/lens_<model>_<task>).")
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """LayerLens on its own: score every layer on calibration batches, show the ranks a budget buys."""
    from sparselora.config import parse_overrides
    from sparselora.methods.layerlens import write_lens_outputs
    from sparselora.training.lens import lens_of

    keys = parse_overrides(overrides or []) | ({"data_dir": str(data_dir)} if data_dir is not None else {})
    result = lens_of(model, task, keys)
    scores, ranks, budget = result.scores, result.ranks, result.budget
    table = Table(title=f"LayerLens: {model} / {task} (budget {budget:,} adapter params)")
    for column in ("layer", "score", "share", "params per rank", "rank"):
        table.add_column(column, justify="right")
    total = sum(scores.scores)
    for layer, (score, cost) in enumerate(zip(scores.scores, scores.cost_per_rank, strict=True)):
        table.add_row(str(layer), f"{score:.3g}", f"{score / total:.1%}", f"{cost:,}", str(ranks.get(layer, "–")))
    console.print(table)
    folder = check_writable_folder(out or Path("runs") / f"lens_{Path(model).name}_{task}", "--out")
    write_lens_outputs(scores, ranks, budget, folder, title=f"LayerLens: {model} / {task}")
    console.print(f"scores and plot in {folder}")


@app.command()
def methods() -> None:
    """List the registered fine-tuning methods."""
    from sparselora.methods import get_method, method_names

    for name in method_names():
        console.print(f"{name:12s} {get_method(name).summary}")


@app.command()
def tasks() -> None:
    """List the available tasks."""
    from sparselora.data import get_task, task_names

    for name in task_names():
        spec = get_task(name)
        source = "your own files" if spec.dataset_id is None else spec.dataset_id
        console.print(
            f"{name:10s} {spec.kind:18s} {source}{' / ' + spec.dataset_config if spec.dataset_config else ''}"
        )


@app.command("config-keys")
def config_keys() -> None:
    """Every config key with its default and meaning."""
    from sparselora.config import describe_keys

    console.print(describe_keys(), highlight=False)
