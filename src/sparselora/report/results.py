"""Results tables of a comparison: one row per method, mean ± std over seeds, best value marked.

Reads only finished run folders (and ``failed/*.json``), so ``sparselora report`` can rebuild
everything without training. Numbers are whatever the runs measured; nothing is filled in.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from scipy import stats

from sparselora.files.atomic import atomic_write_csv, atomic_write_text
from sparselora.report.markdown import table
from sparselora.run_folder.layout import METRICS_FILE, read_run


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    better: Literal["max", "min"]
    fmt: str  # format of the mean and std


COLUMNS = [
    Column("accuracy", "Accuracy", "max", "{:.4f}"),
    Column("f1", "F1", "max", "{:.4f}"),
    Column("f1_macro", "F1 (macro)", "max", "{:.4f}"),
    Column("matthews_correlation", "MCC", "max", "{:.4f}"),
    Column("pearson", "Pearson", "max", "{:.4f}"),
    Column("spearman", "Spearman", "max", "{:.4f}"),
    Column("exact_match", "Exact match", "max", "{:.4f}"),
    Column("perplexity", "Perplexity", "min", "{:.2f}"),
    Column("eval_loss", "Loss", "min", "{:.4f}"),
    Column("sparsity", "Adapter zeros", "max", "{:.3f}"),
    Column("kept_fraction", "Frozen FFN channels computed", "min", "{:.3f}"),
    Column("trainable_params", "Trainable params", "min", "{:,.0f}"),
    Column("nonzero_params", "Nonzero params", "min", "{:,.0f}"),
    Column("peak_mb", "Peak memory (MB)", "min", "{:,.0f}"),
    Column("ms_per_step", "ms/step (Trainer)", "min", "{:,.0f}"),
    Column("ms_per_step_interleaved", "ms/step (interleaved)", "min", "{:,.0f}"),
    Column("train_s", "Train time (s)", "min", "{:,.0f}"),
    Column("latency_ms", "Inference latency (ms/batch)", "min", "{:,.1f}"),
    Column("flops_per_token", "Train GFLOPs/token", "min", "{:.4f}"),
]
PRIMARY_METRICS = ("accuracy", "matthews_correlation", "pearson", "exact_match", "perplexity", "eval_loss")
TASK_METRICS = (
    "accuracy",
    "f1",
    "f1_macro",
    "matthews_correlation",
    "pearson",
    "spearman",
    "exact_match",
    "perplexity",
)
ALPHA = 0.05
# A speed column whose spread over seeds exceeds this share of its mean measured a busy machine, not the method.
NOISY_SPREAD = 0.25
SPEED_COLUMNS = ("ms_per_step", "train_s")
NOISY_NOTE = (
    "⚠: spread over seeds above 25% of the mean: the cells did not run alone on the machine, so this column is"
    " not a speed measurement (read the interleaved column)."
)


def split_run_name(name: str) -> tuple[str, str, int] | None:
    """``sst2__lora__s0`` → (task, label, seed); None for folders that are not cells."""
    parts = name.split("__")
    if len(parts) != 3 or not parts[2].startswith("s") or not parts[2][1:].isdigit():
        return None
    return parts[0], parts[1], int(parts[2][1:])


def run_row(run_dir: Path) -> dict[str, Any]:
    """The flat measurements of one finished run."""
    config, metrics = read_run(run_dir)
    task_metrics, method = metrics["task_metrics"], metrics.get("method", {})
    params = metrics["params"]
    row: dict[str, Any] = {key: task_metrics.get(key) for key in TASK_METRICS}
    row |= {
        "eval_loss": task_metrics.get("eval_loss"),
        "sparsity": method.get("adapter_sparsity", params.get("trainable_sparsity")),
        "kept_fraction": (method.get("realised") or {}).get("ffn_kept_fraction_mean"),
        "trainable_params": params["trainable"],
        "nonzero_params": params["nonzero_trainable"],
        "peak_mb": metrics["memory"]["peak_mb"],
        "ms_per_step": metrics["train"]["median_step_ms"],
        "train_s": metrics["train"]["wall_time_s"],
        "latency_ms": metrics["inference"]["median_batch_latency_ms"],
        "flops_per_token": _train_flops_per_token(config, metrics),
        "method": metrics["run"]["method"],
    }
    return row


def _train_flops_per_token(config: dict[str, Any], metrics: dict[str, Any]) -> float | None:
    """Training-step GFLOPs per token from the FLOPs calculator, for the run's model and method."""
    from sparselora.flops import run_flops_per_token

    try:
        return run_flops_per_token(config, metrics) / 1e9
    except (ValueError, KeyError, OSError):
        return None  # architecture outside the map: the column stays empty


def collect(results_dir: Path) -> pd.DataFrame:
    """One row per finished or failed cell: task, label, seed, status, error and measurements."""
    rows = []
    runs = results_dir / "runs"
    for run_dir in sorted(runs.iterdir()) if runs.is_dir() else []:
        cell = split_run_name(run_dir.name)
        if cell and (run_dir / METRICS_FILE).is_file():
            rows.append({"task": cell[0], "label": cell[1], "seed": cell[2], "status": "finished", **run_row(run_dir)})
    finished = {(r["task"], r["label"], r["seed"]) for r in rows}
    for failure in sorted((results_dir / "failed").glob("*.json")):
        record = json.loads(failure.read_text())
        if (record["task"], record["label"], record["seed"]) not in finished:
            rows.append(
                {k: record[k] for k in ("task", "label", "seed")} | {"status": "failed", "error": record["error"]}
            )
    return pd.DataFrame(rows)


def _mean_std(values: pd.Series) -> tuple[float, float]:
    values = values.dropna().astype(float)
    if values.empty:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def aggregate(frame: pd.DataFrame, order: list[str], timing: dict[str, Any] | None = None) -> pd.DataFrame:
    """Mean and std per label over finished seeds, in the comparison's method order.

    ``timing``: the interleaved pass (compare.timing), one median per method rather than one per seed.
    """
    records = []
    for label in [label for label in order if label in set(frame["label"])]:
        group = frame[frame["label"] == label]
        done = group[group["status"] == "finished"]
        record: dict[str, Any] = {
            "label": label,
            "seeds": len(done),
            "failed": int((group["status"] == "failed").sum()),
        }
        record["method"] = done["method"].iloc[0] if len(done) else None
        if record["failed"]:
            record["error"] = group.loc[group["status"] == "failed", "error"].iloc[0]
        for column in COLUMNS:
            if column.key in done:
                record[f"{column.key}_mean"], record[f"{column.key}_std"] = _mean_std(done[column.key])
        measured = (timing or {}).get("methods", {}).get(label)
        if measured and len(done):
            record["ms_per_step_interleaved_mean"] = measured["median_ms"]
            record["ms_per_step_interleaved_std"] = math.nan
        records.append(record)
    return pd.DataFrame(records)


def present_columns(summary: pd.DataFrame) -> list[Column]:
    return [c for c in COLUMNS if f"{c.key}_mean" in summary and summary[f"{c.key}_mean"].notna().any()]


def primary_metric(summary: pd.DataFrame) -> str:
    return next(key for key in PRIMARY_METRICS if f"{key}_mean" in summary and summary[f"{key}_mean"].notna().any())


@dataclass(frozen=True)
class PairedTest:
    label: str
    metric: str
    n: int
    mean_difference: float
    ci95: tuple[float, float]
    p_value: float | None  # None: fewer than 3 paired seeds

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA


def paired_test(frame: pd.DataFrame, label: str, reference: str, metric: str) -> PairedTest | None:
    """Paired t-test over the seed values both methods finished (difference = method − reference)."""
    done = frame[(frame["status"] == "finished") & frame[metric].notna()]
    pairs = (
        done[done["label"] == label]
        .set_index("seed")[metric]
        .to_frame("method")
        .join(done[done["label"] == reference].set_index("seed")[metric].to_frame("reference"), how="inner")
        .astype(float)
    )
    if pairs.empty:
        return None
    differences = (pairs["method"] - pairs["reference"]).to_numpy()
    n, mean = len(differences), float(differences.mean())
    if n < 3:
        return PairedTest(label, metric, n, mean, (math.nan, math.nan), None)
    if float(differences.std(ddof=1)) == 0:  # identical differences: no spread to test against
        return PairedTest(label, metric, n, mean, (mean, mean), 1.0 if mean == 0 else 0.0)
    result = stats.ttest_rel(pairs["method"], pairs["reference"])
    interval = result.confidence_interval(confidence_level=0.95)
    return PairedTest(label, metric, n, mean, (float(interval.low), float(interval.high)), float(result.pvalue))


def _best(summary: pd.DataFrame, column: Column) -> float | None:
    values = summary[f"{column.key}_mean"].dropna()
    if values.empty:
        return None
    return float(values.max() if column.better == "max" else values.min())


def is_noisy(mean: float | None, std: float | None, key: str) -> bool:
    """A speed column's spread over seeds too large for it to measure the method (see NOISY_SPREAD)."""
    if key not in SPEED_COLUMNS or mean is None or std is None or math.isnan(mean) or math.isnan(std) or mean <= 0:
        return False
    return std / mean > NOISY_SPREAD


def format_cell(mean: float, std: float, column: Column, best: float | None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    text = column.fmt.format(mean)
    if std is not None and not math.isnan(std):
        text += " ± " + column.fmt.format(std)
    if is_noisy(mean, std, column.key):
        return f"{text} ⚠"
    return f"**{text}**" if best is not None and math.isclose(mean, best, rel_tol=1e-12) else text


def markdown_table(summary: pd.DataFrame) -> str:
    columns = present_columns(summary)
    best = {c.key: _best(summary, c) for c in columns}
    rows = []
    for _, row in summary.iterrows():
        seeds = f"{row['seeds']}" + (f" ({row['failed']} failed)" if row["failed"] else "")
        if row["seeds"] == 0:
            cells = [f"failed: {_short(row.get('error', ''))}"] + ["–"] * (len(columns) - 1)
        else:
            cells = [format_cell(row[f"{c.key}_mean"], row[f"{c.key}_std"], c, best[c.key]) for c in columns]
        rows.append([row["label"], seeds, *cells])
    text = table(["Method", "Seeds", *[c.header for c in columns]], rows)
    noisy = any(
        is_noisy(row.get(f"{c.key}_mean"), row.get(f"{c.key}_std"), c.key)
        for _, row in summary.iterrows()
        for c in columns
    )
    return f"{text}\n\n{NOISY_NOTE}" if noisy else text


def _short(error: str, limit: int = 90) -> str:
    first = str(error).splitlines()[0] if error else ""
    return (first[: limit - 1] + "…" if len(first) > limit else first).replace("|", "/")


def summary_sentences(frame: pd.DataFrame, summary: pd.DataFrame, reference: str) -> list[str]:
    """Differences vs the reference, with the paired test where ≥ 3 seeds exist."""
    finished = summary.set_index("label")["seeds"] if "seeds" in summary else pd.Series(dtype=int)
    if finished.get(reference, 0) == 0:
        return [f"The reference method '{reference}' has no finished runs: no comparison."]
    metric = primary_metric(summary)
    ref = summary.set_index("label").loc[reference]
    sentences = []
    for _, row in summary.iterrows():
        if row["label"] == reference or row["seeds"] == 0:
            continue
        test = paired_test(frame, row["label"], reference, metric)
        if test is None:
            sentences.append(f"- **{row['label']}**: no seed in common with {reference}.")
            continue
        scale, unit = (100, " pt") if metric in ("accuracy", "exact_match") else (1, "")
        text = f"- **{row['label']}**: {metric} {test.mean_difference * scale:+.2f}{unit} vs {reference}"
        if test.p_value is None:
            text += f" ({test.n} paired seed(s): too few for a test)"
        else:
            low, high = (v * scale for v in test.ci95)
            verdict = "significant" if test.significant else "not significant"
            text += f" (95% CI {low:+.2f} to {high:+.2f}; paired t-test over {test.n} seeds p = {test.p_value:.3f}, "
            text += f"{verdict} at {ALPHA})"
        ratios = []
        interleaved = _measured(ref, "ms_per_step_interleaved") and _measured(row, "ms_per_step_interleaved")
        speed = ("ms_per_step_interleaved", "time/step (interleaved)") if interleaved else ("ms_per_step", "time/step")
        others = (("train_s", "train time"), ("peak_mb", "peak memory"), ("trainable_params", "trainable"))
        for key, name in (speed, *others):
            if _measured(ref, key) and _measured(row, key):
                ratios.append(f"{name} ×{row[f'{key}_mean'] / ref[f'{key}_mean']:.2f}")
        sentences.append(text + "; " + ", ".join(ratios) + ".")
    return sentences


def _measured(row: pd.Series, key: str) -> bool:
    value = row.get(f"{key}_mean")
    return value is not None and not pd.isna(value) and value != 0


def write_task_results(
    frame: pd.DataFrame,
    order: list[str],
    reference: str,
    folder: Path,
    title: str,
    timing: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """results.md, results.csv (per seed) and results.json (aggregated) for one task."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = aggregate(frame, order, timing)
    atomic_write_csv(frame.sort_values(["label", "seed"]), folder / "results.csv")
    atomic_write_text(folder / "results.json", summary.to_json(orient="records", indent=2) + "\n")
    notes = "Mean ± std over seeds; best value per column in bold. ms/step (Trainer): median step of each run, "
    notes += "cells trained one after another."
    if timing:
        notes += (
            f" ms/step (interleaved): median of {timing['rounds']} rounds in one process, every method one step "
            f"per round on the same batch (seed {timing['seed']}'s configs, timing/)."
        )
    lines = [f"# {title}", "", markdown_table(summary), "", notes, ""]
    lines += ["## Differences vs the reference", "", *summary_sentences(frame, summary, reference), ""]
    atomic_write_text(folder / "results.md", "\n".join(lines))
    return summary
