"""report.html: one self-contained page per comparison (Plotly's JS inlined, nothing fetched at view time).

Per task: the primary metric against step time with one point per run (hover: the run's settings) and the
Pareto front of the method means, the mean training-loss curve per method, the results table (click a
header to sort) and the validation checks; task and method check boxes filter all of them at once.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import pandas as pd

try:
    import plotly.graph_objects as go
    from plotly.offline import get_plotlyjs
except ImportError:  # pragma: no cover - exercised with the module blocked
    raise ImportError("the HTML report needs plotly: pip install 'sparselora[plots]'") from None

from sparselora.compare.plan import CompareConfig
from sparselora.files.atomic import atomic_write_text
from sparselora.report.plots import Curves, pareto_front
from sparselora.report.results import COLUMNS, is_noisy, paired_test
from sparselora.report.validation import Check

HTML_FILE = "report.html"
TABLE_COLUMNS = ("ms_per_step", "ms_per_step_interleaved", "peak_mb", "kept_fraction", "flops_per_token")

# Filters and sorting only; every figure is drawn by Plotly.
_SCRIPT = """
function checked(kind) {
  return new Set([...document.querySelectorAll('input[data-filter="' + kind + '"]:checked')].map(b => b.value));
}
function applyFilters() {
  const tasks = checked('task'), methods = checked('method');
  const shown = m => m && tasks.has(m.task) && (m.method === null || methods.has(m.method));
  document.querySelectorAll('.js-plotly-plot').forEach(plot => {
    Plotly.restyle(plot, {visible: plot.data.map(trace => shown(trace.meta))});
  });
  document.querySelectorAll('[data-task]').forEach(el => {
    el.hidden = !(tasks.has(el.dataset.task) && (!el.dataset.method || methods.has(el.dataset.method)));
  });
}
function sortBy(header) {
  const table = header.closest('table'), body = table.tBodies[0], index = header.cellIndex;
  const ascending = header.dataset.order !== 'asc';
  table.querySelectorAll('th').forEach(th => delete th.dataset.order);
  header.dataset.order = ascending ? 'asc' : 'desc';
  const key = row => {
    const cell = row.cells[index], value = parseFloat(cell.dataset.value);
    return isNaN(value) ? cell.textContent : value;
  };
  const rows = [...body.rows].sort((a, b) => {
    const x = key(a), y = key(b);
    return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
  });
  rows.forEach(row => body.appendChild(row));
}
document.querySelectorAll('input[data-filter]').forEach(box => box.addEventListener('change', applyFilters));
document.querySelectorAll('th.sortable').forEach(th => th.addEventListener('click', () => sortBy(th)));
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; }
th { background: #f3f3f3; } th.sortable { cursor: pointer; }
th[data-order="asc"]::after { content: " ▲"; } th[data-order="desc"]::after { content: " ▼"; }
td:first-child, td:nth-child(2) { text-align: left; }
.PASS { color: #11772d; font-weight: bold; } .FAIL { color: #b00020; font-weight: bold; }
.filters label { margin-right: 0.8rem; } .plots { display: flex; flex-wrap: wrap; gap: 1rem; }
"""


def write_html_report(
    results_dir: Path,
    config: CompareConfig,
    frame: pd.DataFrame,
    tasks: dict[str, dict[str, Any]],
    provenance: str,
) -> Path:
    """``tasks``: per task with finished runs, its ``summary``, ``metric``, ``higher``, ``curves``, ``checks``."""
    sections = [_task_section(task, config, frame, **parts) for task, parts in tasks.items()]
    methods = [m for m in config.methods if any(m in set(p["summary"]["label"]) for p in tasks.values())]
    page = _PAGE.format(
        title=html.escape(config.name),
        style=_STYLE,
        plotly=get_plotlyjs(),
        provenance=html.escape(provenance),
        filters=_filters(list(tasks), methods),
        sections="\n".join(sections) or "<p>No finished runs yet.</p>",
        script=_SCRIPT,
    )
    path = Path(results_dir) / HTML_FILE
    atomic_write_text(path, page)
    return path


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{style}</style>
<script>{plotly}</script></head>
<body><h1>{title}</h1><p>{provenance}</p>
<div class="filters">{filters}</div>
{sections}
<script>{script}</script></body></html>
"""


def _filters(tasks: list[str], methods: list[str]) -> str:
    def boxes(kind: str, values: list[str]) -> str:
        return "".join(
            f'<label><input type="checkbox" data-filter="{kind}" value="{html.escape(v)}" checked> '
            f"{html.escape(v)}</label>"
            for v in values
        )

    return f"<p><b>Tasks</b> {boxes('task', tasks)}</p><p><b>Methods</b> {boxes('method', methods)}</p>"


def _task_section(
    task: str,
    config: CompareConfig,
    frame: pd.DataFrame,
    summary: pd.DataFrame,
    metric: str,
    higher: bool,
    curves: Curves,
    checks: list[Check],
) -> str:
    runs = frame[(frame["task"] == task) & (frame["status"] == "finished")]
    plots = [_scatter(task, config, runs, summary, metric, higher), _loss_curves(task, curves)]
    divs = "".join(
        f'<div data-task="{html.escape(task)}">'
        + figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"{kind}-{task}")
        + "</div>"
        for kind, figure in zip(("scatter", "loss"), plots, strict=True)
    )
    return (
        f'<section data-task="{html.escape(task)}"><h2>{html.escape(task)}</h2>'
        f'<div class="plots">{divs}</div>'
        f"<h3>Results</h3>{_results_table(task, config, frame, summary, metric)}"
        f"<h3>Validation</h3>{_validation_table(task, [c for c in checks if c.label in set(runs['label'])])}"
        "</section>"
    )


def _speed_axis(summary: pd.DataFrame) -> tuple[str, str]:
    done = summary[summary["seeds"] > 0]
    column = "ms_per_step_interleaved_mean"
    if column in done and done[column].notna().all():
        return "interleaved", "training ms/step (median, interleaved; one value per method)"
    return "trainer", "training ms/step (each run's median step)"


def _scatter(
    task: str, config: CompareConfig, runs: pd.DataFrame, summary: pd.DataFrame, metric: str, higher: bool
) -> go.Figure:
    speed, axis_title = _speed_axis(summary)
    by_label = summary.set_index("label")
    figure = go.Figure()
    for label in [m for m in config.methods if m in set(runs["label"])]:
        group = runs[runs["label"] == label].sort_values("seed")
        x = (
            [by_label.at[label, "ms_per_step_interleaved_mean"]] * len(group)
            if speed == "interleaved"
            else group["ms_per_step"].tolist()
        )
        settings = ", ".join(f"{k}: {v}" for k, v in config.methods[label].items()) or "shared keys only"
        hover = [
            f"<b>{label}</b> seed {seed}<br>{metric} {value:.4f}<br>{ms:,.0f} ms/step<br>{html.escape(settings)}"
            for seed, value, ms in zip(group["seed"], group[metric], x, strict=True)
        ]
        figure.add_trace(
            go.Scatter(
                x=x,
                y=group[metric],
                mode="markers",
                name=label,
                hovertext=hover,
                hoverinfo="text",
                marker={"size": 9},
                meta={"task": task, "method": label},
            )
        )
    done = summary[summary["seeds"] > 0]
    means_x = done["ms_per_step_interleaved_mean" if speed == "interleaved" else "ms_per_step_mean"].tolist()
    points = list(zip(means_x, done[f"{metric}_mean"], strict=True))
    front = pareto_front(points, higher)
    figure.add_trace(
        go.Scatter(
            x=[points[i][0] for i in front],
            y=[points[i][1] for i in front],
            mode="lines",
            line={"dash": "dash", "color": "crimson"},
            name="Pareto front (method means)",
            hovertext=[done["label"].iloc[i] for i in front],
            hoverinfo="text",
            meta={"task": task, "method": None},
        )
    )
    figure.update_layout(
        title=f"{task}: {metric} vs step time", xaxis_title=axis_title, yaxis_title=metric, width=640, height=440
    )
    return figure


def _loss_curves(task: str, curves: Curves) -> go.Figure:
    figure = go.Figure()
    for label, (steps, losses) in curves.items():
        figure.add_trace(go.Scatter(x=steps, y=losses, mode="lines", name=label, meta={"task": task, "method": label}))
    figure.update_layout(
        title=f"{task}: training loss (mean over seeds)", xaxis_title="step", yaxis_title="loss", width=640, height=440
    )
    return figure


def _cell(value: float | None, fmt: str, mark: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<td data-value="">–</td>'
    return f'<td data-value="{value}">{fmt.format(value)}{mark}</td>'


def _results_table(task: str, config: CompareConfig, frame: pd.DataFrame, summary: pd.DataFrame, metric: str) -> str:
    columns = {c.key: c for c in COLUMNS}
    headers = ["Method", "Seeds", f"{columns[metric].header}", "± std", f"Δ vs {config.reference}", "p"]
    headers += [columns[key].header for key in TABLE_COLUMNS]
    scale = 100 if metric in ("accuracy", "exact_match") else 1
    rows = []
    for _, row in summary[summary["seeds"] > 0].iterrows():
        label = row["label"]
        test = paired_test(frame, label, config.reference, metric) if label != config.reference else None
        cells = [f"<td>{html.escape(label)}</td>", f'<td data-value="{row["seeds"]}">{row["seeds"]}</td>']
        cells += [_cell(row[f"{metric}_mean"], columns[metric].fmt), _cell(row[f"{metric}_std"], columns[metric].fmt)]
        cells += [
            _cell(None if test is None else test.mean_difference * scale, "{:+.2f}"),
            _cell(None if test is None else test.p_value, "{:.3f}"),
        ]
        for key in TABLE_COLUMNS:
            mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
            cells.append(_cell(mean, columns[key].fmt, " ⚠" if is_noisy(mean, std, key) else ""))
        rows.append(f'<tr data-task="{html.escape(task)}" data-method="{html.escape(label)}">{"".join(cells)}</tr>')
    head = "".join(f'<th class="sortable">{html.escape(h)}</th>' for h in headers)
    note = f"<p>Δ: mean paired difference over seeds{' in points' if scale == 100 else ''}; p: paired t-test.</p>"
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{note}"


def _validation_table(task: str, checks: list[Check]) -> str:
    if not checks:
        return "<p>No targets in the comparison config.</p>"
    rows = []
    for check in checks:
        ratio = "–" if check.ratio is None else f"{check.ratio:.3f}"
        verdict = check.verdict
        rows.append(
            f'<tr data-task="{html.escape(task)}" data-method="{html.escape(check.label)}">'
            f"<td>{html.escape(check.label)}</td><td>{html.escape(check.target.metric)} / "
            f"{html.escape(check.reference)}</td><td>{ratio}</td><td>{html.escape(check.bound)}</td>"
            f'<td class="{verdict.split()[0]}">{html.escape(verdict)}</td></tr>'
        )
    head = "".join(f"<th>{h}</th>" for h in ("Method", "Metric", "Ratio to reference", "Target", "Result"))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
