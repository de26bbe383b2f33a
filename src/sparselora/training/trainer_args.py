"""The Trainer's own arguments: which ones a run config may pass through, and the HF names of its keys.

sparselora sets the arguments that decide what a run is (batch size, schedule, seed, checkpoints, the
training log) from its own keys, so a run folder's config.yaml says everything. Every other field of
``transformers.TrainingArguments`` (optimizer, trackers, dataloader workers, compilation, DDP/FSDP) passes
through ``training_args:`` unchanged, checked by name against the installed transformers.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Any

from transformers import TrainingArguments

# TrainingArguments fields with a sparselora key of the same meaning: accepted as aliases at the top level.
HF_ALIASES = {
    "per_device_train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "num_train_epochs": "epochs",
    "lr_scheduler_type": "lr_scheduler",
    "learning_rate": "learning_rate",
    "weight_decay": "weight_decay",
    "warmup_steps": "warmup_steps",
    "warmup_ratio": "warmup_ratio",
    "max_steps": "max_steps",
    "max_grad_norm": "max_grad_norm",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "gradient_checkpointing": "gradient_checkpointing",
    "logging_steps": "logging_steps",
    "save_steps": "save_steps",
    "eval_steps": "eval_steps",
    "seed": "seed",
}
# Fields sparselora sets from other keys, or fixes because the run folder depends on them.
SET_BY_SPARSELORA = {
    "bf16": "set `precision: bf16`",
    "fp16": "set `precision: fp16`",
    "data_seed": "set `seed`",
    "disable_tqdm": "set `progress`",
    "use_cpu": "the device is chosen by what is available (CUDA, else CPU)",
    "eval_strategy": "set `eval_steps`",
    "save_strategy": "set `save_steps` (0: no checkpoints)",
    "output_dir": "set `output_dir`: checkpoints go to the run's partial folder",
    "save_total_limit": "resuming needs the two newest checkpoints",
    "label_names": "the tasks name their labels",
    "remove_unused_columns": "the tasks prepare exactly the model's inputs",
    "include_num_input_tokens_seen": "metrics.json counts tokens",
    "logging_nan_inf_filter": "a diverged run must show NaN",
    "gradient_checkpointing_kwargs": "set `gradient_checkpointing: true` (non-reentrant, which frozen inputs need)",
    "resume_from_checkpoint": "a killed run resumes with the same command",
    "ddp_backend": "gloo on CPU, NCCL on CUDA, chosen by the device",
}


@functools.cache
def trainer_fields() -> frozenset[str]:
    return frozenset(field.name for field in dataclasses.fields(TrainingArguments) if field.init)


def check_training_args(value: dict[str, Any]) -> dict[str, Any]:
    """Refuse unknown fields (naming the closest one) and the fields sparselora sets (naming its key)."""
    problems = []
    for key in value:
        if not isinstance(key, str):
            problems.append(f"{key!r} is not a field name")
        elif key in HF_ALIASES:
            problems.append(f"'{key}' is the run key `{HF_ALIASES[key]}`; set that instead")
        elif key in SET_BY_SPARSELORA:
            problems.append(f"'{key}' is set by sparselora: {SET_BY_SPARSELORA[key]}")
        elif key not in trainer_fields():
            match = difflib.get_close_matches(key, sorted(trainer_fields()), n=1)
            hint = f"; did you mean '{match[0]}'?" if match else ""
            problems.append(f"'{key}' is not a field of transformers.TrainingArguments{hint}")
    if problems:
        raise ValueError("; ".join(problems))
    return value


def apply_aliases(raw: dict[str, Any]) -> dict[str, Any]:
    """Top-level HF names (``per_device_train_batch_size: 8``) → sparselora's keys; both at once is an error."""
    renamed = dict(raw)
    for hf_name, key in HF_ALIASES.items():
        if hf_name in renamed and hf_name != key:
            if key in renamed:
                raise ValueError(f"'{hf_name}' and '{key}' are the same setting; keep only '{key}'")
            renamed[key] = renamed.pop(hf_name)
    return renamed
