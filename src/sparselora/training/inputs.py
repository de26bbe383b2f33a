"""What a run loads before training or evaluating: model source, tokenizer, task data, head."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sparselora.config import ConfigError, RunConfig
from sparselora.data import TaskSpec, get_task
from sparselora.data.preprocess import Prepared, prepare
from sparselora.data.registry import TaskKind
from sparselora.evaluation.metrics import metric_names
from sparselora.methods import BuildContext, MethodSetup, get_method
from sparselora.models import (
    ArchSpec,
    ModelSource,
    find_arch,
    is_decoder,
    load_model,
    load_model_config,
    load_tokenizer,
    resolve_model,
)
from sparselora.models.loading import Head, head_for
from sparselora.training.precision import DTYPES, Resolved, resolve_precision, trainable_in_fp32, training_device


@dataclass
class RunInputs:
    config: RunConfig
    source: ModelSource
    tokenizer: PreTrainedTokenizerBase
    task: TaskSpec
    kind: TaskKind  # the task's, or for your own files what the data holds
    evaluation_kind: TaskKind  # what evaluation measures: `kind`, or regression under problem_type regression
    head: Head
    causal: bool
    arch: ArchSpec | None
    num_labels: int | None
    label_names: list[str]
    data: Prepared
    device: torch.device  # where the run trains or is evaluated
    precision: Resolved  # the config's precision on that device
    metrics: tuple[str, ...]  # task metrics reported besides eval_loss

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
        setup = get_method(self.config.method).build(base, self.build_context(new_modules))
        trainable_in_fp32(setup.model)  # a bf16/fp16 base: the optimiser steps fp32 weights
        return setup

    def load_base_model(self) -> tuple[PreTrainedModel, list[str]]:
        """The base model as the run's method wants it loaded (QLoRA: 4-bit), in the run's precision."""
        model, new_modules = load_run_base(
            self.config, self.source, self.head, self.tokenizer, self.label_names, DTYPES[self.precision]
        )
        if self.config.packing:  # with a cache the forward drops the per-example masks of packed rows
            model.config.use_cache = False
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


def head_outputs(config: RunConfig, head: Head, label_names: list[str]) -> int | None:
    """A sequence-classification head's outputs: one under ``problem_type: regression``, else one per class."""
    if head != "sequence_classification":
        return None
    return 1 if config.problem_type == "regression" else len(label_names)


def load_run_base(
    config: RunConfig, source: ModelSource, head: Head, tokenizer, label_names: list[str], dtype: torch.dtype
) -> tuple[PreTrainedModel, list[str]]:
    """The base model as the run's method wants it (QLoRA: 4-bit; regression: one output, MSE), in ``dtype``:
    what training builds on and what ``export --merge`` merges into."""
    method = get_method(config.method)
    extra = {"dtype": dtype} | (method.load_kwargs(config.method_options, dtype) if method.load_kwargs else {})
    if config.problem_type == "regression":
        extra["problem_type"] = "regression"  # transformers' convention for num_labels 1
    model, new_modules = load_model(
        source, head, tokenizer, head_outputs(config, head, label_names), label_names, **extra
    )
    if method.prepare_base:
        method.prepare_base(model)
    return model, new_modules


def load_inputs(config: RunConfig, device: torch.device | None = None) -> RunInputs:
    """Everything a run reads, for training (``device`` None: the Trainer's device) or evaluating on ``device``."""
    device = device or training_device()
    precision = resolve_precision(config.precision, device)
    source = resolve_model(config.model, config.trust_remote_code)
    model_config = load_model_config(source)
    try:
        task = get_task(config.task)
    except KeyError as err:
        raise ValueError(f"config key 'task': {err.args[0]}") from None
    regression = config.problem_type == "regression"
    if regression and task.dataset_id is not None:
        raise ConfigError(
            f"config key 'problem_type': regression needs numeric labels, which task '{config.task}' does not "
            "have; use it with a file task (csv, tsv, jsonl, parquet, arrow) or task: dataset"
        )
    check_max_length(config, model_config)
    tokenizer = load_tokenizer(source)
    raw = task.load(config)
    kind = raw.kind or task.kind  # your own files: what their columns hold (data/sft.py)
    evaluation_kind = "regression" if regression else kind
    metrics = metric_names(evaluation_kind, config.metrics)
    head = head_for(kind, is_decoder(model_config), config.model)
    data = prepare(
        kind,
        raw.train,
        raw.eval,
        tokenizer,
        causal=head == "causal_lm",
        max_length=config.max_length,
        max_train_samples=config.max_train_samples,
        max_eval_samples=config.max_eval_samples,
        chat_template=config.chat_template,
        packing=config.packing,
        bad_rows=config.bad_rows,
    )
    return RunInputs(
        config=config,
        source=source,
        tokenizer=tokenizer,
        task=task,
        head=head,
        causal=head == "causal_lm",
        arch=find_arch(model_config.model_type),
        kind=kind,
        evaluation_kind=evaluation_kind,
        num_labels=head_outputs(config, head, raw.label_names),
        label_names=raw.label_names,
        data=data,
        device=device,
        precision=precision,
        metrics=metrics,
    )
