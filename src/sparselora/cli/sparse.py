"""SparseLoRA's own tools: the SVD estimator's cache, predictor recall, and layer-map calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sparselora.cli.core import SetOption, app, console
from sparselora.files.atomic import atomic_write_text
from sparselora.files.paths import check_output_file

svd_app = typer.Typer(help="The SparseLoRA SVD estimator's cached factors.", no_args_is_help=True)
app.add_typer(svd_app, name="svd")


@svd_app.command("build")
def svd_build(
    model: Annotated[str, typer.Argument(help="Alias (minilm, smollm2), local folder or Hub id.")],
    rank: Annotated[int, typer.Option(min=1, help="Estimator rank r.")] = 8,
    out: Annotated[
        Path | None, typer.Option(help="Cache file (default ~/.cache/sparselora/svd/<model>-r<rank>.safetensors).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if a cache file exists.")] = False,
) -> None:
    """Compute the rank-r SVD factors of every FFN up/gate and attention q/k/v projection once, and cache them."""
    from sparselora.sparse.svd import build_model_cache

    if out is not None:
        check_output_file(out, "--out")
    factors, stats, path = build_model_cache(model, rank, out, force=force)
    verb = "loaded from cache" if stats["cached"] else f"built in {stats['seconds']:.1f} s"
    console.print(f"{len(factors)} factor pairs, rank {rank}, {verb}: {path} ({stats['megabytes']:.2f} MB)")


sparse_app = typer.Typer(help="Inspect the SparseLoRA predictor.", no_args_is_help=True)
app.add_typer(sparse_app, name="sparse")


def _sparse_session(config: Path, overrides: list[str] | None, batches: int):
    """A sparselora config's model with SparseLoRA attached and calibrated, plus real batches."""
    from sparselora.config import load_config
    from sparselora.training.sparse_session import open_session

    return open_session(load_config(config, [*(overrides or []), "progress=false"]), batches)


@sparse_app.command("recall")
def sparse_recall(
    config: Annotated[Path, typer.Argument(help="A sparselora run config (model, task, sparsity).")],
    overrides: SetOption = None,
    batches: Annotated[int, typer.Option(min=1, help="Real training batches to measure on.")] = 4,
) -> None:
    """Per layer: share of the oracle top-k channels the predictor picks (random = kept/width); then how far
    the sparse network's output is from the dense one with the SVD, oracle and random channels."""
    from sparselora.sparse.output_error import predictor_errors
    from sparselora.sparse.recall import measure_recall

    session = _sparse_session(config, overrides, batches)
    table = Table(title=f"predictor recall of the oracle top-k ({batches} batches)")
    for column in ("layer", "part", "kept / width", "recall", "random", "outliers kept"):
        table.add_column(column, justify="right")
    for row in measure_recall(session.model, session.engine, session.batches):
        table.add_row(
            str(row.layer),
            row.part,
            f"{row.kept}/{row.width}",
            f"{row.recall:.3f}",
            f"{row.random:.3f}",
            str(row.outliers),
        )
    console.print(table)
    errors = Table(title="sparse vs dense network: relative error of the final hidden states")
    for column in ("channels picked by", "error"):
        errors.add_column(column, justify="right")
    for predictor, error in predictor_errors(session.model, session.engine, session.batches).items():
        errors.add_row(predictor, f"{error:.3f}")
    console.print(errors)


@app.command()
def calibrate(
    config: Annotated[
        Path, typer.Argument(help="A sparselora run config; set attn_sparsity > 0 to include attention.")
    ],
    target: Annotated[
        float,
        typer.Option(min=0, max=1, help="Share of the sparsifiable projections' FLOPs to remove."),
    ] = 0.4,
    overrides: SetOption = None,
    batches: Annotated[int, typer.Option(min=1, help="Calibration batches from the training split.")] = 4,
    out: Annotated[Path | None, typer.Option(help="Write the layer_sparsity map (YAML) here.")] = None,
) -> None:
    """Measure per-layer sensitivity and write the layer_sparsity map that meets a FLOPs target."""
    import yaml

    from sparselora.sparse.calibrate import calibrate as run_calibration

    if out is not None:
        check_output_file(out, "--out")
    session = _sparse_session(config, overrides, batches)
    result = run_calibration(session.model, session.engine, session.batches, target)
    table = Table(title=f"sensitivity: relative error of the final hidden states ({batches} batches)")
    levels = sorted({level for _, _, level in result.damage})
    for column in ("block", *[f"s={lvl:g}" for lvl in levels], "chosen"):
        table.add_column(column, justify="right")
    for block in result.blocks:
        key = f"layers.{block.layer}.{block.part}"
        errors = [f"{result.damage[(block.layer, block.part, lvl)]:.4f}" for lvl in levels]
        table.add_row(key, *errors, f"{result.layer_sparsity[key]:g}")
    console.print(table)
    text = yaml.safe_dump({"layer_sparsity": result.layer_sparsity}, sort_keys=False)
    console.print(
        f"FLOPs reduction of the sparsifiable projections: {result.flops_reduction:.3f}\n{text}", soft_wrap=True
    )
    if out is not None:
        atomic_write_text(out, text)
        console.print(f"written to {out}")
