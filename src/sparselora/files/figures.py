"""Figures written as files: matplotlib on the Agg backend (loaded on first import, with the extra to install
when it is missing), each figure as PNG and SVG side by side (PNG to look at, SVG for papers)."""

from __future__ import annotations

from pathlib import Path

try:
    import matplotlib
except ImportError:  # pragma: no cover - exercised with the module blocked
    raise ImportError(
        "plots (compare, report, lens, the study) need matplotlib: pip install 'sparselora[plots]'"
    ) from None

matplotlib.use("Agg")  # files only: no display on servers or in CI
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from sparselora.files.atomic import atomic_path


def save_figure(figure: Figure, path_stem: Path) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.svg`` and close the figure."""
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [path_stem.with_suffix(".png"), path_stem.with_suffix(".svg")]
    figure.tight_layout()
    for path in paths:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=150)
    plt.close(figure)
    return paths
