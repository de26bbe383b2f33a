"""The SVD estimator's factors: W ≈ (A·B)ᵀ for each frozen projection whose outputs we select.

``x @ A @ B`` costs r·(d_in + d_out) multiply-adds per token instead of d_in·d_out, which is
what makes a per-batch channel prediction cheap. Factors are computed once per (model, rank)
and cached on disk as safetensors, with a fingerprint of the weights so a cache built for
another model is refused instead of silently used.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from sparselora.files.atomic import atomic_path
from sparselora.models import ArchSpec, iter_projections
from sparselora.models.loading import cache_dir

SELECTABLE_ROLES = ("up", "gate", "q", "k", "v")  # projections whose output channels are selected
_IDENTITY_ROLES = ("up", "gate")  # the weights the cache fingerprint is computed from


class SVDCacheError(ValueError):
    """A cache file that belongs to another model or rank, or a rank the weights cannot support."""


@dataclass(frozen=True)
class LowRank:
    """``x @ a @ b`` approximates ``x @ weight.T`` (a: d_in × r, b: r × d_out)."""

    a: torch.Tensor
    b: torch.Tensor

    def to(self, like: torch.Tensor) -> LowRank:
        """These factors on ``like``'s device and dtype: the model may move or change dtype after attach."""
        if self.a.device == like.device and self.a.dtype == like.dtype:
            return self
        return LowRank(a=self.a.to(like), b=self.b.to(like))


def base_weight(module: nn.Module) -> torch.Tensor:
    """The frozen weight of a projection, whether or not PEFT wrapped it."""
    return getattr(module, "base_layer", module).weight


def low_rank(weight: torch.Tensor, rank: int) -> LowRank:
    """Truncated SVD of ``weight`` (d_out × d_in), singular values folded into ``a``."""
    max_rank = min(weight.shape)
    if not 0 < rank < max_rank:
        raise SVDCacheError(
            f"svd_rank must be between 1 and {max_rank - 1} for a {tuple(weight.shape)} weight, got {rank}"
        )
    u, s, vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
    return LowRank(a=(vh[:rank].T * s[:rank]).contiguous(), b=u[:, :rank].T.contiguous())


def fingerprint(model: nn.Module, spec: ArchSpec) -> str:
    """A short hash of every selectable weight's shape and a few values: detects a stale cache."""
    digest = hashlib.sha256()
    for proj in iter_projections(model, spec):
        if proj.role in _IDENTITY_ROLES:
            weight = base_weight(proj.module).detach()
            digest.update(f"{proj.layer}.{proj.role}{tuple(weight.shape)}".encode())
            digest.update(weight.flatten()[:: max(1, weight.numel() // 64)].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


_DTYPE_SUFFIX = {torch.float32: "", torch.bfloat16: "-bf16", torch.float16: "-fp16"}


def default_cache_path(model_name: str, rank: int, dtype: torch.dtype = torch.float32) -> Path:
    """One cache per model, rank and weight dtype: a bf16 model's weights (and fingerprint) differ from fp32's."""
    safe = model_name.strip("/").replace("/", "--")
    suffix = _DTYPE_SUFFIX.get(dtype, f"-{str(dtype).removeprefix('torch.')}")
    return cache_dir() / "svd" / f"{safe}-r{rank}{suffix}.safetensors"


def weights_dtype(model: nn.Module, spec: ArchSpec) -> torch.dtype:
    """The dtype of the weights the factors are computed from."""
    proj = next(p for p in iter_projections(model, spec) if p.role in SELECTABLE_ROLES)
    return base_weight(proj.module).dtype


def _key(layer: int, role: str) -> str:
    return f"layers.{layer}.{role}"


def build_factors(model: nn.Module, spec: ArchSpec, rank: int, progress: bool = True) -> dict[str, LowRank]:
    targets = [p for p in iter_projections(model, spec) if p.role in SELECTABLE_ROLES]
    return {
        _key(p.layer, p.role): low_rank(base_weight(p.module), rank)
        for p in tqdm(targets, desc=f"SVD rank {rank}", disable=not progress)
    }


def save_factors(path: Path, factors: dict[str, LowRank], print_: str, rank: int) -> None:
    tensors = {}
    for key, factor in factors.items():
        tensors[f"{key}.a"], tensors[f"{key}.b"] = factor.a, factor.b
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:  # a killed build must not leave a truncated cache behind
        save_file(tensors, str(temporary), metadata={"fingerprint": print_, "rank": str(rank)})


def load_factors(path: Path, expected_print: str, rank: int) -> dict[str, LowRank]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata() or {}
    if meta.get("fingerprint") != expected_print or meta.get("rank") != str(rank):
        raise SVDCacheError(
            f"SVD cache '{path}' was built for other weights or rank (fingerprint {meta.get('fingerprint')}, "
            f"rank {meta.get('rank')}; this model: {expected_print}, rank {rank}). Delete it or rebuild with "
            "`sparselora svd build MODEL --rank R --force`."
        )
    tensors = load_file(str(path))
    keys = {name.rsplit(".", 1)[0] for name in tensors}
    return {key: LowRank(a=tensors[f"{key}.a"], b=tensors[f"{key}.b"]) for key in keys}


def get_factors(
    model: nn.Module, spec: ArchSpec, rank: int, path: Path | None, progress: bool = True, force: bool = False
) -> tuple[dict[str, LowRank], dict[str, float]]:
    """Load cached factors or build and cache them. Returns (factors, {'seconds', 'megabytes', 'cached'})."""
    print_ = fingerprint(model, spec)
    if path is not None and path.is_file() and not force:
        factors = load_factors(path, print_, rank)
        wanted = {_key(p.layer, p.role) for p in iter_projections(model, spec) if p.role in SELECTABLE_ROLES}
        if wanted <= set(factors):  # else: same model, a cache from before some roles were selectable
            return factors, {"seconds": 0.0, "megabytes": path.stat().st_size / 2**20, "cached": 1.0}
    start = time.perf_counter()
    factors = build_factors(model, spec, rank, progress)
    seconds = time.perf_counter() - start
    if path is not None:
        save_factors(path, factors, print_, rank)
    size = path.stat().st_size / 2**20 if path is not None else 0.0
    return factors, {"seconds": seconds, "megabytes": size, "cached": 0.0}


def factor_for(factors: dict[str, LowRank], layer: int, role: str) -> LowRank:
    return factors[_key(layer, role)]


def build_model_cache(
    model: str, rank: int, out: Path | None = None, force: bool = False
) -> tuple[dict[str, LowRank], dict[str, float], Path]:
    """The factors of a model named by alias, folder or Hub id, built or loaded, and the cache file's path."""
    from transformers import AutoModel

    from sparselora.models import get_arch, load_model_config, resolve_model

    source = resolve_model(model)
    spec = get_arch(load_model_config(source).model_type)
    weights = AutoModel.from_pretrained(source.path, trust_remote_code=source.trust_remote_code)  # no head needed
    path = out or default_cache_path(model, rank)
    factors, stats = get_factors(weights, spec, rank, path, force=force)
    return factors, stats, path
