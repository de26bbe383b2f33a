"""How far a sparse network's output is from the dense one's: relative L2 error of the final hidden states.

Head-independent (a freshly initialised classifier does not matter). ``calibrate`` scores one
block at a time with it; :func:`predictor_errors` scores the whole configured network once per
predictor, which tells whether a better channel predictor could help at all: when even the
oracle's channels leave a large error, the model's activations are not contextually sparse at
this sparsity, and no estimator will close the gap.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import get_args

import torch
from torch import nn

from sparselora.sparse.engine import SparseLoRAEngine
from sparselora.sparse.settings import Predictor


def final_hidden(model: nn.Module, batches: list[dict]) -> list[torch.Tensor]:
    outputs = []
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        # no KV cache: sparse attention refuses to fill one, and nothing is generated here
        outputs.append(model(**inputs, output_hidden_states=True, use_cache=False).hidden_states[-1])
    return outputs


def relative_error(outputs: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    num = sum(float((o - r).float().pow(2).sum()) for o, r in zip(outputs, reference, strict=True))
    den = sum(float(r.float().pow(2).sum()) for r in reference)
    return (num / den) ** 0.5


@contextmanager
def sparse_evaluation(model: nn.Module, engine: SparseLoRAEngine) -> Iterator[None]:
    """Eval-mode forwards run sparse from the first one (no calibration, no warm-up); all restored after."""
    saved = model.training, engine.config.sparse_eval, engine.calibrating, engine.sparse_from_step
    model.eval()
    engine.config.sparse_eval = True
    engine.start_sparse_now()
    try:
        yield
    finally:
        model.train(saved[0])
        engine.config.sparse_eval, engine.calibrating, engine.sparse_from_step = saved[1:]


@torch.no_grad()
def predictor_errors(model: nn.Module, engine: SparseLoRAEngine, batches: list[dict]) -> dict[Predictor, float]:
    """Final-hidden-state error of the configured sparsity with each predictor picking the channels.

    The blocks' predictors are restored after.
    """
    blocks = [*engine.ffn, *engine.attention]
    saved_predictors = [block.predictor for block in blocks]
    with sparse_evaluation(model, engine):
        try:
            engine.enabled = False
            reference = final_hidden(model, batches)
            engine.enabled = True
            errors = {}
            for predictor in get_args(Predictor):
                for block in blocks:
                    block.predictor = predictor
                errors[predictor] = relative_error(final_hidden(model, batches), reference)
            return errors
        finally:
            engine.enabled = True
            for block, predictor in zip(blocks, saved_predictors, strict=True):
                block.predictor = predictor
