"""The `sparselora` command line."""

from __future__ import annotations

import errno
import functools
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from transformers.utils import logging as transformers_logging

from sparselora.files.atomic import atomic_write_json, atomic_write_text
from sparselora.files.paths import check_output_file, check_writable_folder

app = typer.Typer(
    help="Sparse fine-tuning of transformers, measured honestly.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # errors are one paragraph; --debug shows the traceback
)
console = Console()
error_console = Console(stderr=True)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: --set lora_r=16 (repeatable)."),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Folder with local dataset copies (default: $SPARSELORA_DATA_DIR or ../shared/data)."
    ),
]


BAD_INPUT_EXIT_CODE = 2
UNEXPECTED_EXIT_CODE = 1
# What the user can fix: a config, a path, a data file, a run folder, a missing optional package, a disk.
# sparselora's own errors derive from these (ConfigError is a ValueError, RunFolderError a FileExistsError, ...).
BAD_INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, ImportError)


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    from sparselora.compare.runner import StaleCellError
    from sparselora.training.loop import TrainingDivergedError

    return (*BAD_INPUT_ERRORS, TrainingDivergedError, StaleCellError)


def _error_paragraph(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror and err.filename and type(err).__module__ == "builtins":
        hint = " Free some disk space, or point `output_dir` at another disk." if err.errno == errno.ENOSPC else ""
        return f"{type(err).__name__}: {err.strerror}: '{err.filename}'.{hint}"
    return f"{type(err).__name__}: {err}"


_OPTIONS = {"debug": False}


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        libraries = ("torch", "transformers", "peft", "accelerate", "datasets")
        console.print(f"sparselora {version('sparselora')} ({', '.join(f'{n} {version(n)}' for n in libraries)})")
        raise typer.Exit()


@app.callback()
def _global_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the full Python traceback of an error.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the versions and exit.")
    ] = False,
) -> None:
    """Sparse fine-tuning of transformers, measured honestly."""
    _OPTIONS["debug"] = debug


def _reported(command: Callable) -> Callable:
    """A command whose errors end as one paragraph and the documented exit code (--debug: the traceback)."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, *_usage_errors()):
            raise
        except Exception as err:
            if _OPTIONS["debug"]:
                raise
            raise typer.Exit(code=_report_error(err)) from err

    return run


def _metrics_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in rows:
        table.add_row(key, value)
    return table


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
    console.print(_metrics_table(f"{metrics['run']['name']} → {run_dir}", rows))


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
    from transformers import AutoModel

    from sparselora.models import get_arch, load_config, resolve_model
    from sparselora.sparse.svd import default_cache_path, get_factors

    if out is not None:
        check_output_file(out, "--out")
    source = resolve_model(model)
    spec = get_arch(load_config(source).model_type)
    weights = AutoModel.from_pretrained(source.path, trust_remote_code=source.trust_remote_code)  # no head needed
    path = out or default_cache_path(model, rank)
    factors, stats = get_factors(weights, spec, rank, path, force=force)
    verb = "loaded from cache" if stats["cached"] else f"built in {stats['seconds']:.1f} s"
    console.print(f"{len(factors)} factor pairs, rank {rank}, {verb}: {path} ({stats['megabytes']:.2f} MB)")


sparse_app = typer.Typer(help="Inspect the SparseLoRA predictor.", no_args_is_help=True)
app.add_typer(sparse_app, name="sparse")


def _sparse_session(config: Path, overrides: list[str] | None, batches: int):
    """A sparselora config's model with SparseLoRA attached and calibrated, plus real batches."""
    from sparselora.config import load_config
    from sparselora.sparse.session import open_session

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
) -> None:
    """Run methods × tasks × seeds (finished cells are skipped), then write tables, plots, validation.md."""
    from sparselora.compare import load_compare_config, run_comparison
    from sparselora.compare.plan import parse_only, parse_seeds
    from sparselora.compare.timing import time_comparison
    from sparselora.config import ConfigError, parse_overrides
    from sparselora.report.comparison import build_report

    comparison = load_compare_config(config)
    comparison.shared.update(parse_overrides(overrides or []))
    if data_dir is not None:
        comparison.shared.setdefault("data_dir", str(data_dir))
    if output_dir is not None:
        comparison.output_dir = output_dir
    if seeds:
        comparison.seeds = parse_seeds(seeds)
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
    command = " ".join(["sparselora compare", str(config), *options])
    written = build_report(Path(comparison.output_dir), command=command)
    console.print(f"tables, plots and validation.md in {comparison.output_dir} ({len(written)} files)")
    if status.failed:
        raise typer.Exit(code=1)


@app.command()
def report(
    results_dir: Annotated[Path, typer.Argument(help="A comparison's results folder (holds compare.yaml).")],
) -> None:
    """Rebuild tables, plots and validation.md from finished runs, without training."""
    from sparselora.report.comparison import build_report

    written = build_report(results_dir, command=f"sparselora report {results_dir}")
    for path in written:
        console.print(str(path))


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
    from transformers import set_seed

    from sparselora.config import build_config, parse_overrides
    from sparselora.methods.layerlens import lens as run_lens
    from sparselora.methods.layerlens import write_lens_outputs
    from sparselora.training.inputs import load_inputs

    raw = {"model": model, "task": task, "method": "layerlens", **parse_overrides(overrides or [])}
    if data_dir is not None:
        raw["data_dir"] = str(data_dir)
    config = build_config(raw)
    set_seed(config.seed)
    inputs = load_inputs(config)
    base, new_modules = inputs.load_base_model()
    result = run_lens(base, inputs.build_context(new_modules))
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


def _report_errors_of(group: typer.Typer) -> None:
    """Every command of ``group`` and its sub-groups reports errors through ``_reported``: one mechanism."""
    for info in group.registered_commands:
        info.callback = _reported(info.callback)
    for sub in group.registered_groups:
        _report_errors_of(sub.typer_instance)


_report_errors_of(app)


def main(argv: list[str] | None = None) -> int:
    """The console entry point: every error ends as one paragraph and a non-zero exit code."""
    import sys

    import click

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Fresh heads are reported in the run's model card; transformers' per-load report is noise here.
    transformers_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    args = ["--debug"] * debug + [arg for arg in args if arg != "--debug"]  # accepted anywhere on the line
    try:
        code = app(args=args, prog_name="sparselora", standalone_mode=False)
    except _usage_errors() as err:  # unknown option, missing argument, value out of range
        err.show()
        return err.exit_code
    except (click.Abort, typer.Abort, KeyboardInterrupt):
        error_console.print("interrupted")
        return 130
    except Exception as err:
        if debug:
            raise
        return _report_error(err)
    return code if isinstance(code, int) else 0


def _usage_errors() -> tuple[type[Exception], ...]:
    """click's usage errors, and typer's own copies of them (typer >= 0.2x vendors click)."""
    import click

    vendored = next(base for base in typer.BadParameter.__mro__ if base.__name__ == "ClickException")
    return (click.ClickException, vendored)


def _report_error(err: Exception) -> int:
    """One paragraph and the documented exit code: 2 bad input, 3 run busy, 1 anything unexpected."""
    from sparselora.files.locks import BUSY_EXIT_CODE, LockBusyError

    if isinstance(err, LockBusyError):
        code = BUSY_EXIT_CODE
    elif isinstance(err, _bad_input_errors()):
        code = BAD_INPUT_EXIT_CODE
    else:
        code = UNEXPECTED_EXIT_CODE
    error_console.print(
        f"[bold red]error:[/] {_error_paragraph(err)}\n(run with --debug for the Python traceback)",
        highlight=False,
        soft_wrap=True,
    )
    return code


if __name__ == "__main__":
    raise SystemExit(main())
