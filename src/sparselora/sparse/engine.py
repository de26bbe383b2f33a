"""The engine `apply_sparselora` returns (``apply.py``): the step-wise schedule and the Trainer callback.

Usable without the rest of sparselora, in a user's own Trainer script::

    model = get_peft_model(base, LoraConfig(...))
    engine = apply_sparselora(model, SparseLoRAConfig(ffn_sparsity=0.7), model_name="minilm")
    trainer = Trainer(model=model, ..., callbacks=[engine.callback()])

In a loop of your own (no callback), the engine counts training forwards as steps: the first
``calibration_steps`` run dense to find outlier channels, every later one sparse (the warm-up and
cool-down ratios need the Trainer's ``max_steps`` and apply only with the callback). It logs this
at the first training forward; ``engine.start_sparse_now()`` skips the calibration.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import TrainerCallback

from sparselora.sparse.attention import SparseAttention
from sparselora.sparse.backward import BackwardSparseAttention, BackwardSparseFFN
from sparselora.sparse.ffn import SparseFFN
from sparselora.sparse.settings import SparseLoRAConfig
from sparselora.sparse.tokens import TokenSplit

logger = logging.getLogger(__name__)


@dataclass
class SparseLoRAEngine:
    """All sparsified blocks of one model, and the step-wise schedule (calibrate → warm-up → sparse)."""

    config: SparseLoRAConfig
    ffn: list[SparseFFN | BackwardSparseFFN]
    attention: list[SparseAttention | BackwardSparseAttention] = field(default_factory=list)
    svd_stats: dict[str, float] = field(default_factory=dict)
    step: int = 0
    sparse_from_step: int = 0
    sparse_until_step: int | None = None  # dense cool-down from this step on
    calibrating: bool = True
    enabled: bool = True
    output_tokens: TokenSplit | None = None  # decoders: this batch's output / context positions
    driven_by_callback: bool = False  # the callback (begin_step) sets the step; otherwise training forwards count
    forwards_counted: int = 0
    realised: list[tuple[float, float]] = field(default_factory=list)  # per step: FFN and attention kept shares
    selection_seconds: float = 0.0  # host time spent choosing channels (the estimator), all steps so far
    _model_hook: object = None
    _model: nn.Module | None = None
    _first_token: TokenSplit | None = None
    _step_hook: object = None

    def sparse_now(self, sparsity: float, training: bool) -> bool:
        if not self.enabled or self.calibrating or sparsity == 0.0:
            return False
        if not training and not self.config.sparse_eval:
            return False  # evaluation and inference run dense unless asked
        return self.step >= self.sparse_from_step and (
            self.sparse_until_step is None or self.step < self.sparse_until_step
        )

    def begin_step(self, step: int, max_steps: int) -> None:
        """Called before each optimiser step (by the callback); from then on the caller drives the schedule."""
        self.driven_by_callback = True
        self._advance(step, max_steps)
        self._record_step()

    def _advance(self, step: int, max_steps: int) -> None:
        """Set the step; ends calibration once its steps are done."""
        self.step = step
        warmup = math.ceil(self.config.sparse_warmup_ratio * max_steps) if max_steps > 0 else 0
        self.sparse_from_step = max(self.config.calibration_steps, warmup)
        if max_steps > 0 and self.config.sparse_cooldown_ratio > 0:
            self.sparse_until_step = max_steps - math.ceil(self.config.sparse_cooldown_ratio * max_steps)
        if self.calibrating and step >= self.config.calibration_steps:
            for layer in self.ffn:
                layer.fix_outliers(self.config.outlier_factor, self.config.max_outlier_fraction)
            self.calibrating = False

    @torch.no_grad()
    def calibrate_outliers(self, model: nn.Module, batches: list[dict]) -> None:
        """Outside a Trainer: run ``batches`` dense (train mode, no grad) and fix the outlier channels."""
        self.calibrating = True
        was_training = model.training
        model.train()
        for batch in batches:
            model(**{k: v for k, v in batch.items() if k != "labels"})
        for layer in self.ffn:
            layer.fix_outliers(self.config.outlier_factor, self.config.max_outlier_fraction)
        self.calibrating = False
        model.train(was_training)

    def start_sparse_now(self) -> None:
        """Skip calibration and warm-up (benchmarks, tests): sparse from the next forward."""
        self.calibrating, self.sparse_from_step = False, 0

    def count_training_forward(self, module: nn.Module, _args, _kwargs) -> None:
        """Model pre-hook: without the callback, each training forward with gradients is one step."""
        if self.driven_by_callback or not module.training or not torch.is_grad_enabled():
            return
        if self.forwards_counted == 0 and self.calibrating:
            logger.warning(
                "SparseLoRA without its Trainer callback: training forwards count as steps; the first %d run "
                "dense to calibrate outlier channels, then every one runs sparse (sparse_warmup_ratio and "
                "sparse_cooldown_ratio need the callback). engine.start_sparse_now() skips the calibration.",
                self.config.calibration_steps,
            )
        if self.calibrating:
            self._advance(self.forwards_counted, max_steps=0)
        self.forwards_counted += 1
        self._record_step()

    def capture_output_tokens(self, _module, args, kwargs) -> None:
        """Model pre-hook: position t is an output token when labels[t + 1] is trained (causal LM shift)."""
        labels = kwargs.get("labels")
        if labels is None or labels.dim() != 2:
            self.output_tokens = None
            return
        self.output_tokens = TokenSplit.output_tokens(labels, self.config.dense_span)

    def first_token_split(self, batch: int, seq: int, device: torch.device) -> TokenSplit:
        """Encoders: the first token dense; one split per batch shape, shared by every layer."""
        split = self._first_token
        if split is None or split.mask.shape != (batch, seq) or split.mask.device != device:
            split = self._first_token = TokenSplit.first_token(batch, seq, device)
        return split

    def detach(self) -> None:
        for block in [*self.ffn, *self.attention]:
            block.detach()
        for hook in (self._model_hook, self._step_hook):
            if hook is not None:
                hook.remove()
        if self._model is not None and getattr(self._model, "_sparselora_engine", None) is self:
            del self._model._sparselora_engine

    def callback(self) -> TrainerCallback:
        """The Trainer callback that drives the schedule by the global step (warm-up, cool-down)."""
        self.driven_by_callback = True
        return SparseLoRACallback(self)

    @contextmanager
    def timing_selection(self) -> Iterator[None]:
        """Adds the host time of one channel selection to ``selection_seconds`` (on a GPU: launch time only)."""
        start = time.perf_counter()
        yield
        self.selection_seconds += time.perf_counter() - start

    def kept_fraction(self) -> float:
        """Share of FFN channels the current training step computes, averaged over layers: 1.0 on a dense step
        (calibration, warm-up, cool-down, or the engine disabled)."""
        return _mean([_kept_share(layer) if self.sparse_now(layer.sparsity, True) else 1.0 for layer in self.ffn])

    def attention_kept_fraction(self) -> float:
        """Share of attention's q/k/v/o channels the current training step computes (forward mode), 1.0 when dense;
        in backward mode the share of layers whose frozen q/k/v pass an input gradient."""
        shares = [1.0] * (len(self.ffn) - len(self.attention))
        for block in self.attention:
            sparse = self.sparse_now(block.sparsity, True)
            shares.append((block.num_kept / block.head_dim if hasattr(block, "head_dim") else 0.0) if sparse else 1.0)
        return _mean(shares)

    def configured_kept_fraction(self) -> float:
        """Share of FFN channels a sparse step computes, averaged over layers (the configuration)."""
        return _mean([_kept_share(layer) for layer in self.ffn])

    def _record_step(self) -> None:
        """The realised sparsity of the step about to run (metrics.json's summary and the Trainer's logs)."""
        self.realised.append((self.kept_fraction(), self.attention_kept_fraction()))

    def measurements(self) -> dict:
        """What metrics.json records for a SparseLoRA run: the configuration and what the steps realised."""
        steps = len(self.realised)
        return {
            "ffn_kept_fraction": self.configured_kept_fraction(),
            "realised": {
                "steps": steps,
                "sparse_steps": sum(ffn < 1.0 or attn < 1.0 for ffn, attn in self.realised),
                "ffn_kept_fraction_mean": _mean([ffn for ffn, _ in self.realised]) if steps else None,
                "attn_kept_fraction_mean": _mean([attn for _, attn in self.realised]) if steps else None,
            },
            "ffn_sparsity_per_layer": [layer.sparsity for layer in self.ffn],
            "attn_sparsity_per_layer": [block.sparsity for block in self.attention] or [0.0] * len(self.ffn),
            "outlier_channels_per_layer": [int(layer.outliers.numel()) for layer in self.ffn],
            "sparse_from_step": self.sparse_from_step,
            "sparse_until_step": self.sparse_until_step,
            "sparse_pass": self.config.sparse_pass,
            "backward_rule": self.config.backward_rule,
            "svd_rank": self.config.svd_rank,
            "predictor": self.config.predictor,
            "mean_compensation": self.config.mean_compensation,
            "selection_seconds": self.selection_seconds,
            "svd_build_seconds": self.svd_stats.get("seconds", 0.0),
            "svd_cache_megabytes": self.svd_stats.get("megabytes", 0.0),
        }


class SparseLoRACallback(TrainerCallback):
    """Feeds the global step to the engine so that warm-up and calibration follow training."""

    def __init__(self, engine: SparseLoRAEngine):
        self.engine = engine
        self._since = (time.perf_counter(), 0.0)  # wall clock and selection seconds at the last log

    def on_step_begin(self, args, state, control, **kwargs):
        self.engine.begin_step(state.global_step, state.max_steps)

    def on_log(self, args, state, control, logs=None, **kwargs):
        """The step's realised sparsity, phase and the selection's share of the time since the last log, next to
        its loss, for the trackers (TensorBoard, W&B) and the log: callbacks after this one see it (sparselora's
        own runs put this callback first)."""
        if logs is None or "loss" not in logs:
            return
        engine = self.engine
        now, selected = time.perf_counter(), engine.selection_seconds
        wall = now - self._since[0]
        ffn, attention = engine.kept_fraction(), engine.attention_kept_fraction()
        values = {
            "sparselora/ffn_kept_fraction": ffn,
            "sparselora/attn_kept_fraction": attention,
            "sparselora/sparse_step": float(ffn < 1.0 or attention < 1.0),
            "sparselora/selection_share": (selected - self._since[1]) / wall if wall > 0 else 0.0,
        }
        self._since = (now, selected)
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)


def _kept_share(block) -> float:
    return block.num_kept / block.width


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 1.0


def engine_of(model: nn.Module) -> SparseLoRAEngine:
    """The engine ``apply_sparselora`` attached to ``model`` (the analysis commands and benchmarks use it)."""
    engine = getattr(model, "_sparselora_engine", None)
    if engine is None:
        raise ValueError("this model has no SparseLoRA engine: build it with method sparselora or apply_sparselora")
    return engine
