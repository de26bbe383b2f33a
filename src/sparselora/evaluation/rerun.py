"""`sparselora eval`: reload a run's saved adapter (or model) and measure it again."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import PreTrainedModel, set_seed

from sparselora.config import RunConfig, build_config
from sparselora.methods import get_method, method_names
from sparselora.models.loading import HEAD_CLASSES
from sparselora.run_folder.layout import read_run
from sparselora.training.inputs import RunInputs, load_inputs
from sparselora.training.loop import run_evaluation

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class UnsafeRunFolderError(ValueError):
    """A run folder whose weights are not safetensors, or whose files are malformed."""


def check_saved_weights(run_dir: Path) -> None:
    """Weights are read only from safetensors: unpickling a file can run any code in it."""
    pickles = sorted(p.name for p in run_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UnsafeRunFolderError(
            f"'{run_dir}' contains pickle file(s) {', '.join(pickles)}; sparselora loads weights only from "
            ".safetensors (a pickle can execute code when loaded). Remove them, or convert a file you trust "
            "with safetensors.torch.save_file."
        )
    adapter_config = run_dir / "adapter_config.json"
    if adapter_config.is_file():
        try:
            json.loads(adapter_config.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            message = f"'{adapter_config}' is not valid JSON ({err}); cannot read the adapter."
            raise UnsafeRunFolderError(message) from None
    weights = "adapter_model.safetensors" if adapter_config.is_file() else "model.safetensors"
    if not (run_dir / weights).is_file():
        raise UnsafeRunFolderError(f"'{run_dir}' has no {weights}: it is not a finished sparselora run folder.")
    try:
        with safe_open(run_dir / weights, "pt") as handle:
            handle.keys()
    except Exception as err:  # safetensors' own error type derives from Exception only
        raise UnsafeRunFolderError(
            f"'{run_dir / weights}' is not a readable safetensors file ({err}): it was cut short or damaged. "
            "Copy it again from where the run was trained, or train the run again."
        ) from None


def load_trained(run_dir: Path, inputs: RunInputs) -> PreTrainedModel:
    """The model a run saved: base + PEFT adapter, or the full fine-tuned weights (safetensors only)."""
    check_saved_weights(run_dir)
    with weights_that_fit(run_dir, inputs.config.model):
        if (run_dir / "adapter_config.json").is_file():
            base, _ = inputs.load_base_model()
            return PeftModel.from_pretrained(base, run_dir)
        return HEAD_CLASSES[inputs.head].from_pretrained(run_dir, use_safetensors=True)


@contextmanager
def weights_that_fit(run_dir: Path, model_name: str) -> Iterator[None]:
    """Loading a run's weights into its base: a mismatch becomes one error naming the folder and the model."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError, TypeError, OSError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeRunFolderError(
            f"the weights in '{run_dir}' do not fit model '{model_name}' ({first_line}). "
            "Was the folder trained from another model, or its files replaced?"
        ) from err


def saved_run(run_dir: Path, overrides: dict[str, Any] | None = None) -> tuple[RunConfig, dict[str, Any]]:
    """A finished run's config (with ``overrides``) and recorded metrics; its class mapping comes from the
    metrics, so the training file is not needed again."""
    raw_config, recorded = read_run(run_dir)
    label_names = recorded.get("run", {}).get("label_names")
    if raw_config.get("label_names") is None and label_names:
        raw_config = {**raw_config, "label_names": label_names}
    return build_config({**raw_config, **(overrides or {})}, source=f"in '{run_dir}/config.yaml' "), recorded


def evaluate_run(
    run_dir: Path, overrides: dict[str, Any] | None = None, sparse: bool = False, device: torch.device | None = None
) -> tuple[dict[str, float], dict[str, float]]:
    """(metrics recorded at training time, metrics measured now from the saved files).

    ``sparse``: evaluate a SparseLoRA run with its training-time sparsity instead of dense. ``device``: where
    (default: the training device), in the run's precision there.
    """
    config, recorded = saved_run(run_dir, overrides)
    sparse_evaluation = get_method(config.method).sparse_evaluation
    if sparse and sparse_evaluation is None:
        with_it = ", ".join(name for name in method_names() if get_method(name).sparse_evaluation) or "none"
        raise ValueError(
            f"--sparse: '{run_dir}' was trained with method '{config.method}', which has no sparse evaluation "
            f"(methods with one: {with_it}); evaluate it without --sparse"
        )
    set_seed(config.seed)
    inputs = load_inputs(config, device)
    model = load_trained(Path(run_dir), inputs)
    if next(model.parameters()).device != inputs.device:
        model.to(inputs.device)
    if sparse:
        sparse_evaluation(model, config, lambda n: list(itertools.islice(inputs.train_loader(), n)))
    result = run_evaluation(model, inputs)
    return recorded["task_metrics"], result.metrics
