"""What the Trainer is told: ``TrainingArguments`` from a run config, and the steps a run will take."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import TrainingArguments

from sparselora.config import ConfigError, RunConfig
from sparselora.training.precision import resolve_precision, training_device


def training_arguments(config: RunConfig, checkpoints: str, distributed: bool) -> TrainingArguments:
    """The Trainer's arguments: sparselora's keys, then the config's ``training_args`` passed through."""
    precision = resolve_precision(config.precision, training_device())
    arguments: dict[str, Any] = {
        "output_dir": checkpoints,
        "per_device_train_batch_size": config.batch_size,
        "per_device_eval_batch_size": config.eval_batch_size,
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps or -1,
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": config.lr_scheduler,
        "warmup_steps": config.warmup_steps or config.warmup_ratio,
        "weight_decay": config.weight_decay,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "max_grad_norm": config.max_grad_norm,
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "gradient_checkpointing": config.gradient_checkpointing,
        # non-reentrant: the frozen embeddings' outputs need no requires_grad hack, and hooks run once
        "gradient_checkpointing_kwargs": {"use_reentrant": False} if config.gradient_checkpointing else None,
        "logging_steps": config.logging_steps,
        "save_strategy": "steps" if config.save_steps else "no",
        "save_steps": config.save_steps or 500,
        "save_total_limit": 2,  # the newest may be cut short by a kill; the one before is then complete
        "eval_strategy": "steps" if config.eval_steps else "no",
        "eval_steps": config.eval_steps,
        # early stopping compares eval_loss (lower is better); the weights stay those of the last step
        "metric_for_best_model": "eval_loss" if config.early_stopping_patience else None,
        "greater_is_better": False if config.early_stopping_patience else None,
        "report_to": "none",
        "seed": config.seed,
        "data_seed": config.seed,
        "disable_tqdm": not config.progress,
        "use_cpu": not torch.cuda.is_available(),
        "ddp_backend": "gloo" if distributed and not torch.cuda.is_available() else None,
        "ddp_find_unused_parameters": False,  # every trainable parameter takes part in every step
        "logging_nan_inf_filter": False,  # a diverged run must show NaN, not a filtered average
        "label_names": ["labels"],
        "remove_unused_columns": False,
        "include_num_input_tokens_seen": "non_padding",
        "dataloader_num_workers": 0,
    }
    try:
        return TrainingArguments(**(arguments | config.training_args))
    except (ValueError, TypeError, ImportError) as err:
        culprits = [key for key in config.training_args if _refused(arguments | {key: config.training_args[key]})]
        fields = f" ({', '.join(culprits)})" if culprits else ""
        raise ConfigError(f"config key 'training_args'{fields}: transformers refused them: {err}") from None


def _refused(arguments: dict[str, Any]) -> bool:
    try:
        TrainingArguments(**arguments)
    except (ValueError, TypeError, ImportError):
        return True
    return False


def optimiser_steps_per_epoch(config: RunConfig, train_examples: int) -> int:
    """The Trainer's arithmetic: batches per epoch over gradient accumulation, at least one."""
    return max(math.ceil(train_examples / config.batch_size) // config.gradient_accumulation_steps, 1)


def planned_steps(config: RunConfig, train_examples: int) -> int:
    """The optimiser steps the run takes."""
    if config.max_steps:
        return config.max_steps
    return max(math.ceil(config.epochs * optimiser_steps_per_epoch(config, train_examples)), 1)


def check_training_length(config: RunConfig, train_examples: int) -> None:
    """``epochs`` must cover at least one optimiser step (the Trainer would silently round it up to one)."""
    if train_examples == 0:
        where = f"'{config.train_file}'" if config.train_file else f"task '{config.task}'"
        raise ConfigError(f"the training split of {where} is empty (or the file is missing): nothing to train on")
    steps_per_epoch = optimiser_steps_per_epoch(config, train_examples)
    if config.max_steps is None and config.epochs * steps_per_epoch < 1:
        raise ConfigError(
            f"config key 'epochs': {config.epochs:g} epoch(s) is less than one optimiser step "
            f"({steps_per_epoch} step(s) per epoch); use epochs >= {1 / steps_per_epoch:.3g} or set `max_steps`."
        )
