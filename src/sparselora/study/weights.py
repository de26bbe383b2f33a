"""Phase B: real weights and the real predictor on real activations.

1. Every frozen projection of every layer: relative Frobenius error of its best rank-k
   approximation for k ∈ {4, 8, 16, 32} (from its singular values), and the spectra.
2. Every FFN block, on real batches of the task's training data: which channels each selector
   keeps, compared with the oracle (top-k by the true ‖h_c‖ over the batch's tokens):
   - ``svd``: the SparseLoRA estimator (rank-r SVD factors of up/gate, activation applied);
   - ``random``: k channels at random (``random_draws`` draws per batch, averaged);
   - ``input_magnitude``: Wanda-style Σᵢ |W_ci|·‖xᵢ‖ of the up (and gate) rows: data-aware, no SVD;
   each with and without the outlier channels calibrated on the first batches. Measures: recall
   of the oracle set and the relative error of the block's output ‖down(h) − down(h ⊙ m)‖ / ‖down(h)‖.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from sparselora.config import build_config
from sparselora.files.atomic import atomic_write_csv
from sparselora.study.linalg import one_thread
from sparselora.study.stats import paired

RANKS = (4, 8, 16, 32)
ERROR_TOKENS = 512


@dataclass(frozen=True)
class WeightsPlan:
    models: tuple[str, ...] = ("minilm", "smollm2")
    ranks: tuple[int, ...] = RANKS
    svd_rank: int = 8
    ffn_sparsity: float = 0.5
    calibration_batches: int = 2
    analysis_batches: int = 4
    random_draws: int = 30
    seed: int = 0


def run_config_for(model: str, plan: WeightsPlan) -> dict:
    """A SparseLoRA run config on the model's natural task: SST-2 for encoders, WikiText-2 for decoders."""
    from sparselora.models import is_decoder, load_model_config, resolve_model

    decoder = is_decoder(load_model_config(resolve_model(model)))
    data = {"task": "wikitext2", "batch_size": 4, "max_length": 256} if decoder else {"task": "sst2", "batch_size": 32}
    return {
        "model": model,
        "method": "sparselora",
        "svd_rank": plan.svd_rank,
        "ffn_sparsity": plan.ffn_sparsity,
        "calibration_steps": plan.calibration_batches,
        "seed": plan.seed,
        "progress": False,
        "max_train_samples": 2000,
        "max_eval_samples": 8,
        **data,
    }


@torch.no_grad()
def reconstruction_errors(model_name: str, model: torch.nn.Module, ranks: tuple[int, ...]):
    """Rows of (layer, role, shape, k, error) and the singular values per role and layer."""
    from sparselora.models import get_arch, iter_projections
    from sparselora.sparse.ffn import linear_parts

    arch = get_arch(model.config.model_type)
    rows, spectra = [], {}
    for projection in iter_projections(model, arch):
        weight = linear_parts(projection.module)[0].weight.float()
        with one_thread():
            sigma = torch.linalg.svdvals(weight).double()
        energy = sigma.pow(2)
        total = energy.sum()
        for k in ranks:
            error = float((energy[k:].sum() / total).sqrt()) if k < len(sigma) else 0.0
            rows.append(
                {
                    "model": model_name,
                    "layer": projection.layer,
                    "role": projection.role,
                    "shape": f"{weight.shape[0]}x{weight.shape[1]}",
                    "k": k,
                    "relative_frobenius_error": error,
                }
            )
        spectra.setdefault(projection.role, []).append(sigma.tolist())
    return rows, spectra


def _wanda_scores(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Σᵢ |W_ci|·‖xᵢ‖ over input features i: output channel c's expected magnitude without an estimator."""
    return weight.abs() @ x.reshape(-1, x.shape[-1]).float().norm(dim=0)


def _mask(width: int, indices: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(width, dtype=torch.bool)
    mask[indices] = True
    return mask


def _with_outliers(scores: torch.Tensor, outliers: torch.Tensor | None) -> torch.Tensor:
    scores = scores.clone()
    if outliers is not None and outliers.numel():
        scores[outliers] = float("inf")
    return scores


@torch.no_grad()
def analyse_ffn_batch(block, x: torch.Tensor, h: torch.Tensor, draws: int, generator: torch.Generator) -> list[dict]:
    """Recall and output error of every selector on one batch of one FFN block."""
    from sparselora.sparse.ffn import linear_parts

    width, kept = block.width, block.num_kept
    h = h.reshape(-1, width).float()
    down = linear_parts(block.down)[0].weight.float()
    oracle = _mask(width, h.norm(dim=0).topk(kept).indices)  # the true scores use every token
    # The output error is measured on at most ERROR_TOKENS evenly spaced tokens (bounds the cost of
    # the random draws); what is dropped is exactly the dropped channels' contribution.
    sample = h[:: max(1, h.shape[0] // ERROR_TOKENS)]
    reference_norm = (sample @ down.T).norm()

    def measure(keep: torch.Tensor) -> tuple[float, float]:
        recall = float((keep & oracle).sum()) / kept
        error = float((sample[:, ~keep] @ down[:, ~keep].T).norm() / reference_norm)
        return recall, error

    up = linear_parts(block.up)[0].weight.float()
    magnitude = _wanda_scores(up, x)
    if block.gate is not None:
        magnitude = magnitude * _wanda_scores(linear_parts(block.gate)[0].weight.float(), x)
    svd = block.estimate(x).float().norm(dim=0)
    rows = []
    for outliers in (False, True):
        protected = block.outliers if outliers else None
        for selector, scores in (("svd", svd), ("input_magnitude", magnitude)):
            recall, error = measure(_mask(width, _with_outliers(scores, protected).topk(kept).indices))
            rows.append({"selector": selector, "outliers": outliers, "recall": recall, "output_error": error})
        results = []
        for _ in range(draws):
            scores = torch.rand(width, generator=generator)
            results.append(measure(_mask(width, _with_outliers(scores, protected).topk(kept).indices)))
        recall = sum(r for r, _ in results) / draws
        error = sum(e for _, e in results) / draws
        rows.append({"selector": "random", "outliers": outliers, "recall": recall, "output_error": error})
    oracle_error = measure(oracle)[1]
    rows.append({"selector": "oracle", "outliers": False, "recall": 1.0, "output_error": oracle_error})
    return rows


def predictor_rows(model_name: str, plan: WeightsPlan, progress: bool) -> tuple[list[dict], list[dict], dict]:
    """Attach SparseLoRA to a model on real data and measure every FFN block on the analysis batches."""
    from sparselora.training.sparse_session import open_session

    config = build_config(run_config_for(model_name, plan))
    session = open_session(config, plan.calibration_batches + plan.analysis_batches)
    model, engine = session.model, session.engine
    base = model.get_base_model()
    recon, spectra = reconstruction_errors(model_name, base, plan.ranks)
    generator = torch.Generator().manual_seed(plan.seed)
    rows: list[dict] = []
    inputs: dict[int, torch.Tensor] = {}
    batch_index = 0

    def keep_input(block):
        def hook(_module, args, kwargs):
            inputs[block.layer] = args[0] if args else kwargs["hidden_states"]

        return hook

    def analyse(block):
        def hook(_module, args, kwargs):
            h = args[0] if args else next(iter(kwargs.values()))
            for row in analyse_ffn_batch(block, inputs.pop(block.layer), h, plan.random_draws, generator):
                rows.append({"model": model_name, "layer": block.layer, "batch": batch_index, **row})

        return hook

    handles = []
    for block in engine.ffn:
        handles.append(block.block.register_forward_pre_hook(keep_input(block), with_kwargs=True))
        handles.append(block.down.register_forward_pre_hook(analyse(block), with_kwargs=True))
    engine.enabled = False  # dense forwards: the hooks see the true activations
    model.eval()
    try:
        analysis = session.batches[plan.calibration_batches :]
        for index, batch in enumerate(tqdm(analysis, desc=f"phase B ({model_name})", disable=not progress)):
            batch_index = index
            with torch.no_grad():
                model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        for handle in handles:
            handle.remove()
    outliers = {block.layer: int(block.outliers.numel()) for block in engine.ffn}
    return recon, rows, {"spectra": spectra, "outliers": outliers}


def run_phase_b(out: Path, plan: WeightsPlan, progress: bool = True) -> pd.DataFrame:
    """Write phase_b/reconstruction.csv, predictor.csv, stats.csv and the figures."""
    from sparselora.study.plots import plot_selector_metric, plot_spectra

    folder = out / "phase_b"
    folder.mkdir(parents=True, exist_ok=True)
    recon_rows, predictor, spectra = [], [], {}
    for model_name in plan.models:
        recon, rows, extra = predictor_rows(model_name, plan, progress)
        recon_rows += recon
        predictor += rows
        spectra[model_name] = extra["spectra"]
    reconstruction = pd.DataFrame(recon_rows)
    atomic_write_csv(reconstruction, folder / "reconstruction.csv")
    frame = pd.DataFrame(predictor)
    atomic_write_csv(frame, folder / "predictor.csv")
    summary = phase_b_stats(frame)
    atomic_write_csv(summary, folder / "stats.csv")
    plot_spectra(spectra, folder)
    selectors = frame[frame["selector"] != "oracle"]
    plot_selector_metric(
        selectors, "recall", "recall of oracle top-k", "FFN channel recall per layer", folder / "recall_per_layer"
    )
    plot_selector_metric(
        selectors,
        "output_error",
        "relative output error",
        "FFN output error per layer",
        folder / "output_error_per_layer",
    )
    return summary


def phase_b_stats(frame: pd.DataFrame) -> pd.DataFrame:
    """SVD vs each baseline, paired over (layer, batch), per model, outlier setting and measure."""
    rows = []
    for (model, outliers), group in frame[frame["selector"] != "oracle"].groupby(["model", "outliers"]):
        wide = group.pivot_table(index=["layer", "batch"], columns="selector", values=["recall", "output_error"])
        for baseline in ("random", "input_magnitude"):
            for measure in ("recall", "output_error"):
                test = paired(wide[(measure, "svd")], wide[(measure, baseline)])
                rows.append(
                    {"model": model, "outliers": outliers, "baseline": baseline, "measure": measure, **test.as_dict()}
                )
    return pd.DataFrame(rows)
