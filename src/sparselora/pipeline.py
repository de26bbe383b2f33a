"""What a run loads before training or evaluating: model source, tokenizer, task data, head."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from safetensors import safe_open
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sparselora.config import ConfigError, RunConfig
from sparselora.data import TaskSpec, get_task
from sparselora.data.preprocess import Prepared, prepare
from sparselora.methods import BuildContext, MethodSetup, get_method
from sparselora.models import (
    ArchSpec,
    ModelSource,
    find_arch,
    is_decoder,
    load_config,
    load_model,
    load_tokenizer,
    resolve_model,
)
from sparselora.models.loading import HEAD_CLASSES, Head, head_for


@dataclass
class RunInputs:
    config: RunConfig
    source: ModelSource
    tokenizer: PreTrainedTokenizerBase
    task: TaskSpec
    head: Head
    causal: bool
    arch: ArchSpec | None
    num_labels: int | None
    label_names: list[str]
    data: Prepared

    def build_context(self, new_modules: list[str] | tuple[str, ...], config: RunConfig | None = None) -> BuildContext:
        """What a method's ``build`` learns about the run (``config``: another method's keys on the same inputs)."""
        return BuildContext(
            config=config or self.config,
            arch=self.arch,
            head=self.head,
            new_modules=tuple(new_modules),
            calibration_batches=self.first_batches,
        )

    def build_method(self) -> MethodSetup:
        """The run's base model, built into what its method trains (adapters, callbacks, engine)."""
        base, new_modules = self.load_base_model()
        return get_method(self.config.method).build(base, self.build_context(new_modules))

    def load_base_model(self) -> tuple[PreTrainedModel, list[str]]:
        """The base model as the run's method wants it loaded (QLoRA: 4-bit)."""
        method = get_method(self.config.method)
        extra = method.load_kwargs(self.config.method_options) if method.load_kwargs else {}
        model, new_modules = load_model(
            self.source, self.head, self.tokenizer, self.num_labels, self.label_names, **extra
        )
        if method.prepare_base:
            method.prepare_base(model)
        return model, new_modules

    def train_loader(self) -> DataLoader:
        """Shuffled, dynamically padded training batches, seeded by the run's seed (outside Trainer)."""
        return DataLoader(
            self.data.train,
            batch_size=self.config.batch_size,
            shuffle=True,
            collate_fn=self.data.train_collator,
            generator=torch.Generator().manual_seed(self.config.seed),
        )

    def first_batches(self, n: int) -> list[dict]:
        """The first ``n`` training batches: calibration data for outliers, LayerLens, recall."""
        return list(itertools.islice(self.train_loader(), n))


def check_max_length(config: RunConfig, model_config) -> None:
    """Longer inputs than the model has positions for fail deep in the model with a tensor-size mismatch."""
    positions = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    if positions and config.max_length > positions:
        raise ConfigError(
            f"config key 'max_length': {config.max_length} tokens, but model '{config.model}' has {positions} "
            f"positions; use max_length <= {positions}."
        )


def load_inputs(config: RunConfig) -> RunInputs:
    source = resolve_model(config.model, config.trust_remote_code)
    model_config = load_config(source)
    try:
        task = get_task(config.task)
    except KeyError as err:
        raise ValueError(f"config key 'task': {err.args[0]}") from None
    decoder = is_decoder(model_config)
    head = head_for(task.kind, decoder, config.model)
    check_max_length(config, model_config)
    tokenizer = load_tokenizer(source)
    raw = task.load(config)
    data = prepare(
        task.kind,
        raw.train,
        raw.eval,
        tokenizer,
        causal=head == "causal_lm",
        max_length=config.max_length,
        max_train_samples=config.max_train_samples,
        max_eval_samples=config.max_eval_samples,
    )
    return RunInputs(
        config=config,
        source=source,
        tokenizer=tokenizer,
        task=task,
        head=head,
        causal=head == "causal_lm",
        arch=find_arch(model_config.model_type),
        num_labels=len(raw.label_names) if task.kind == "classification" else None,
        label_names=raw.label_names,
        data=data,
    )


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
    try:
        if (run_dir / "adapter_config.json").is_file():
            base, _ = inputs.load_base_model()
            return PeftModel.from_pretrained(base, run_dir)
        return HEAD_CLASSES[inputs.head].from_pretrained(run_dir, use_safetensors=True)
    except (RuntimeError, ValueError, KeyError, TypeError, OSError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeRunFolderError(
            f"the weights in '{run_dir}' do not fit model '{inputs.config.model}' ({first_line}). "
            "Was the folder trained from another model, or its files replaced?"
        ) from err
