"""Phase A: rank-k SVD vs random projection, and column selection by SVD vs magnitude vs chance.

Matrices with controlled spectra, each drawn ``instances`` times (paired design: every method sees
the same matrix; the random baselines draw afresh for each one, so there are as many random
repeats as instances):

- ``planted``: rank-8 signal (singular values 8..1, scaled ×10) plus small Gaussian noise;
- ``power_law``: σ_i = i⁻¹ with random singular vectors;
- ``gaussian``: i.i.d. N(0, 1) entries (Marchenko–Pastur spectrum);
- ``flat``: all singular values equal (a random partial isometry): no direction matters more.

Equal stored-scalar budgets: a rank-k factorisation stores k(m + n) + k scalars (U, V and σ). A
column-pruned matrix stores the kept columns densely plus one integer index per kept column
(column-compressed layout: m values + 1 index each), so it keeps ⌊(k(m + n) + k) / (m + 1)⌋ columns.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from sparselora.files.atomic import atomic_write_csv
from sparselora.study.linalg import one_thread
from sparselora.study.stats import paired

SPECTRA = ("planted", "power_law", "gaussian", "flat")


@dataclass(frozen=True)
class SyntheticPlan:
    shapes: tuple[tuple[int, int], ...] = ((256, 256), (512, 128), (128, 512))
    ranks: tuple[int, ...] = (4, 8, 16, 32)
    instances: int = 30
    seed: int = 0

    @classmethod
    def quick(cls) -> SyntheticPlan:
        return cls(shapes=((96, 64),), ranks=(8,), instances=30)


def _orthonormal(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # Haar-distributed columns


def make_matrix(spectrum: str, m: int, n: int, generator: torch.Generator) -> torch.Tensor:
    p = min(m, n)
    if spectrum == "gaussian":
        return torch.randn(m, n, generator=generator, dtype=torch.float64)
    if spectrum == "planted":
        signal_rank = min(8, p)
        sigma = 10.0 * torch.arange(signal_rank, 0, -1, dtype=torch.float64)
        u, v = _orthonormal(m, signal_rank, generator), _orthonormal(n, signal_rank, generator)
        noise = torch.randn(m, n, generator=generator, dtype=torch.float64) / (m * n) ** 0.25
        return u @ torch.diag(sigma) @ v.T + noise
    if spectrum == "power_law":
        sigma = 1.0 / torch.arange(1, p + 1, dtype=torch.float64)
    elif spectrum == "flat":
        sigma = torch.ones(p, dtype=torch.float64)
    else:
        raise ValueError(f"unknown spectrum '{spectrum}'; choose from {', '.join(SPECTRA)}")
    return _orthonormal(m, p, generator) @ torch.diag(sigma) @ _orthonormal(n, p, generator).T


def relative_errors(matrix: torch.Tensor, approximation: torch.Tensor) -> tuple[float, float]:
    residual = matrix - approximation
    frobenius = float(torch.linalg.norm(residual) / torch.linalg.norm(matrix))
    spectral = float(torch.linalg.matrix_norm(residual, ord=2) / torch.linalg.matrix_norm(matrix, ord=2))
    return frobenius, spectral


def rank_k_approximations(matrix: torch.Tensor, k: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    omega = torch.randn(matrix.shape[1], k, generator=generator, dtype=matrix.dtype)
    q, _ = torch.linalg.qr(matrix @ omega)  # randomized range finder, no oversampling: same storage
    return {"svd": u[:, :k] * s[:k] @ vh[:k], "random": q @ (q.T @ matrix)}


def column_budget(m: int, n: int, k: int) -> int:
    return min(n, (k * (m + n) + k) // (m + 1))


def column_selections(matrix: torch.Tensor, k: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Kept-column indices per selector, at the stored-scalar budget of a rank-k factorisation."""
    m, n = matrix.shape
    keep = column_budget(m, n, k)
    _, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    leverage = vh[:k].pow(2).sum(dim=0)
    return {
        "svd": leverage.topk(keep).indices,
        "magnitude": matrix.norm(dim=0).topk(keep).indices,
        "random": torch.randperm(n, generator=generator)[:keep],
    }


def _keep_columns(matrix: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    pruned = torch.zeros_like(matrix)
    pruned[:, columns] = matrix[:, columns]
    return pruned


def _settings(plan: SyntheticPlan) -> Iterator[tuple[str, tuple[int, int], int]]:
    for spectrum in SPECTRA:
        for shape in plan.shapes:
            for instance in range(plan.instances):
                yield spectrum, shape, instance


def _matrix_rows(plan: SyntheticPlan, spectrum: str, shape: tuple[int, int], instance: int) -> list[dict]:
    m, n = shape
    generator = torch.Generator().manual_seed(zlib.crc32(f"{plan.seed}/{spectrum}/{m}x{n}/{instance}".encode()))
    matrix = make_matrix(spectrum, m, n, generator)
    rows = []
    for k in plan.ranks:
        base = {"spectrum": spectrum, "shape": f"{m}x{n}", "k": k, "instance": instance}
        for method, approximation in rank_k_approximations(matrix, k, generator).items():
            frobenius, spectral = relative_errors(matrix, approximation)
            rows.append(base | {"comparison": "rank_k", "method": method, "frobenius": frobenius, "spectral": spectral})
        for method, columns in column_selections(matrix, k, generator).items():
            frobenius, spectral = relative_errors(matrix, _keep_columns(matrix, columns))
            rows.append(
                base | {"comparison": "columns", "method": method, "frobenius": frobenius, "spectral": spectral}
            )
    return rows


def run_phase_a(out: Path, plan: SyntheticPlan, progress: bool = True) -> pd.DataFrame:
    """Write phase_a/results.csv (one row per matrix, k, method), stats.csv and the two figures."""
    from sparselora.study.plots import plot_phase_a

    folder = out / "phase_a"
    folder.mkdir(parents=True, exist_ok=True)
    settings = list(_settings(plan))
    with one_thread():
        rows = [
            row
            for setting in tqdm(settings, desc="phase A (synthetic)", disable=not progress)
            for row in _matrix_rows(plan, *setting)
        ]
    results = pd.DataFrame(rows)
    atomic_write_csv(results, folder / "results.csv")
    summary = phase_a_stats(results)
    atomic_write_csv(summary, folder / "stats.csv")
    plot_phase_a(results, folder)
    return summary


def phase_a_stats(results: pd.DataFrame) -> pd.DataFrame:
    """SVD vs each baseline, paired over matrix instances, for both error norms."""
    rows = []
    for (comparison, spectrum, shape, k), group in results.groupby(["comparison", "spectrum", "shape", "k"]):
        by_method = group.pivot(index="instance", columns="method")
        for baseline in [m for m in ("random", "magnitude") if ("frobenius", m) in by_method]:
            for norm in ("frobenius", "spectral"):
                test = paired(by_method[(norm, "svd")], by_method[(norm, baseline)])
                rows.append(
                    {"comparison": comparison, "spectrum": spectrum, "shape": shape, "k": k, "baseline": baseline}
                    | {"norm": norm, **test.as_dict()}
                )
    return pd.DataFrame(rows)
