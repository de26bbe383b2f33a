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
import typing
from typing import Any

import pydantic
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
        else:
            problems += type_problems(key, value[key])
    if "report_to" in value:
        problems += report_to_problems(value["report_to"])
    if problems:
        raise ValueError("; ".join(problems))
    return value


# pip names of the integrations whose package name differs from transformers' report_to name
_TRACKER_PACKAGES = {"azure_ml": "azureml-core", "comet_ml": "comet-ml", "neptune": "neptune", "flyte": "flytekit"}


def report_to_problems(value: Any) -> list[str]:
    """``report_to`` names trackers transformers knows and that are installed here: a missing one fails before
    the model loads, not in the Trainer after it."""
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        return [f"'report_to' must be a tracker name or a list of them, got {value!r}"]
    known, available = sorted(INTEGRATION_TO_CALLBACK), get_available_reporting_integrations()
    problems = []
    for name in names:
        if name in ("all", "none"):
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            problems.append(
                f"report_to '{name}' is not a tracker transformers knows (one of: all, none, {', '.join(known)})"
            )
        elif name not in available:
            package = _TRACKER_PACKAGES.get(name, name)
            installed = ", ".join(available) or "none"
            problems.append(
                f"report_to '{name}' needs the package {package}, which is not installed (pip install {package}); "
                f"installed trackers: {installed}"
            )
    return problems


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainingArguments)


@functools.cache
def _adapter(key: str) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(_field_types()[key])


def type_problems(key: str, value: Any) -> list[str]:
    """A field's value checked against its TrainingArguments annotation (``optim_args: 3`` is not a string)."""
    try:
        _adapter(key).validate_python(value)
    except pydantic.ValidationError as err:
        hint = _field_types()[key]
        expected = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
        reason = err.errors()[0]["msg"]
        return [f"'{key}' must be {expected} ({reason}), got {value!r}"]
    except pydantic.PydanticSchemaGenerationError:  # a type pydantic cannot check: transformers checks it
        pass
    return []


def apply_aliases(raw: dict[str, Any]) -> dict[str, Any]:
    """Top-level HF names (``per_device_train_batch_size: 8``) → sparselora's keys; both at once is an error."""
    renamed = dict(raw)
    for hf_name, key in HF_ALIASES.items():
        if hf_name in renamed and hf_name != key:
            if key in renamed:
                raise ValueError(f"'{hf_name}' and '{key}' are the same setting; keep only '{key}'")
            renamed[key] = renamed.pop(hf_name)
    return renamed
