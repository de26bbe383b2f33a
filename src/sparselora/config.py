"""YAML → a validated run config.

One flat namespace (`lora_r`, `learning_rate`, `svd_rank` side by side):
shared keys are fields of :class:`RunConfig`; each method adds its own keys through its
options model in the method registry. Every key is documented once, in its ``Field``.
Errors name the key, what was given and what is allowed.
"""

from __future__ import annotations

import contextlib
import difflib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sparselora.files.paths import check_folder_name
from sparselora.files.yaml_input import YamlInputError, load_yaml
from sparselora.methods.registry import MethodOptions, get_method, method_names
from sparselora.trainer_args import apply_aliases, check_training_args, trainer_fields

Precision = Literal["auto", "fp32", "bf16", "fp16"]  # training/precision.py resolves "auto"
MetricName = Literal[  # what evaluation/metrics.py computes
    "accuracy", "f1", "f1_macro", "matthews_correlation", "pearson", "spearman", "perplexity", "exact_match"
]
DataFormat = Literal["auto", "classification", "messages", "prompt_completion", "text"]


class ConfigError(ValueError):
    """A config that cannot run: the message names the key and the fix."""


# Keys that say where files are or what is shown, not what is trained: a finished or half-finished
# run stays valid when only these change (resume, comparison cells).
NON_RESULT_KEYS = frozenset(
    {"output_dir", "data_dir", "progress", "save_steps", "eval_steps", "hub_model_id", "hub_private"}
)


class RunConfig(BaseModel):
    """Everything one training run needs. Method-specific keys live in ``method_options``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    name: str | None = Field(
        None, description="Run folder name under output_dir; default <task>_<model>_<method>_s<seed>."
    )
    model: str = Field("minilm", description="Alias (minilm, smollm2), local folder or Hub id.")
    trust_remote_code: bool = Field(
        False, description="Let a model folder or Hub repo run its own Python code. Only for sources you trust."
    )
    task: str = Field(
        "sst2",
        description="sst2, imdb, mrpc, wikitext2, gsm8k; csv/tsv/jsonl/parquet/arrow for your own files; "
        "dataset for any dataset load_dataset opens (keys dataset, dataset_config, *_split). Own data is "
        "classification, or SFT/chat/text for causal LMs (data_format).",
    )
    method: str = Field("lora", description="A registered method name (see `sparselora methods`).")
    seed: int = Field(0, description="Seeds model init, dropout and data order.")
    output_dir: Path = Field(Path("runs"), description="Parent folder of run folders.")

    # data
    data_dir: Path | None = Field(
        None, description="Folder with local copies of the datasets; default $SPARSELORA_DATA_DIR or ../shared/data."
    )
    max_length: int = Field(
        128, gt=0, description="Truncate (classification) or block size (language modelling), in tokens."
    )
    max_train_samples: int | None = Field(None, gt=0, description="Use only the first N training examples.")
    max_eval_samples: int | None = Field(None, gt=0, description="Use only the first N evaluation examples.")
    dataset: str | None = Field(
        None, description="task 'dataset': a Hub dataset id or a local folder, opened by datasets.load_dataset."
    )
    dataset_config: str | None = Field(None, description="task 'dataset': its configuration (GLUE's 'cola').")
    train_split: str = Field("train", description="task 'dataset': the split to train on.")
    eval_split: str = Field("validation", description="task 'dataset': the split to evaluate on.")
    train_file: Path | None = Field(None, description="file tasks (csv/tsv/jsonl/parquet/arrow): training file.")
    eval_file: Path | None = Field(None, description="file tasks (csv/tsv/jsonl/parquet/arrow): evaluation file.")
    text_column: str = Field("text", description="file and dataset tasks: column with the input text.")
    text_pair_column: str | None = Field(
        None, description="file and dataset tasks: optional second text column (sentence pairs)."
    )
    label_column: str = Field("label", description="file and dataset tasks: column with the label.")
    data_format: DataFormat = Field(
        "auto",
        description="file and dataset tasks: classification; messages (chat turns, the chat template, assistant "
        "turns trained); prompt_completion (the completion trained); text (language modelling); auto picks by "
        "columns: label → classification, chat turns → messages, prompt + completion, then text.",
    )
    messages_column: str = Field("messages", description="data_format messages: column of {role, content} turns.")
    prompt_column: str = Field("prompt", description="data_format prompt_completion: the prompt column.")
    completion_column: str = Field("completion", description="data_format prompt_completion: the trained column.")
    packing: bool = Field(
        False,
        description="SFT and text data: pack examples into rows of max_length (position ids restart per example, "
        "so attention stays within each example), instead of one padded example per row.",
    )
    bad_rows: Literal["error", "skip"] = Field(
        "error",
        description="SFT and text data: a row that cannot be trained on (a missing role, an empty assistant turn, "
        "a prompt longer than max_length) stops with its row number ('error') or is counted and skipped ('skip').",
    )
    problem_type: Literal["single_label_classification", "regression"] = Field(
        "single_label_classification",
        description="file and dataset tasks: 'regression' trains a one-output head on numeric labels (MSE, "
        "as transformers does for num_labels 1) and reports Pearson and Spearman correlation (STS-B-like data).",
    )
    label_names: list[str] | None = Field(
        None,
        description="file and dataset tasks: class names in class-id order; default: the training file's labels, "
        "numbers in numeric order, other labels sorted. Recorded in every run (metrics.json, the model's id2label).",
    )

    # optimisation
    epochs: float = Field(1.0, gt=0, description="Training epochs (fractions allowed).")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimiser steps (overrides epochs).")
    batch_size: int = Field(32, gt=0, description="Training batch size per device.")
    eval_batch_size: int = Field(64, gt=0, description="Evaluation batch size.")
    gradient_accumulation_steps: int = Field(1, gt=0)
    learning_rate: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps of the learning rate.")
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="Warm-up as a fraction of total steps (used when warmup_steps is 0)."
    )
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    max_grad_norm: float = Field(1.0, gt=0)
    precision: Precision = Field(
        "auto",
        description="fp32, bf16 or fp16 (CUDA only): the frozen base is loaded in it and autocast computes in it; "
        "trainable weights stay fp32. auto: bf16 on a CUDA device that supports it, else fp32.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward instead of storing them (non-reentrant)."
    )
    training_args: dict[str, Any] = Field(
        default_factory=dict,
        description="More transformers TrainingArguments, passed through: optim, report_to, logging_dir, "
        "dataloader_num_workers, torch_compile, ddp_*, fsdp, ... (the ones set from keys above are refused).",
    )

    # measurement and output
    logging_steps: int = Field(10, gt=0, description="Write a train_log.jsonl line every N steps.")
    save_steps: int = Field(
        100, ge=0, description="Write a resumable checkpoint every N steps (0: never); removed once the run finishes."
    )
    eval_steps: int | None = Field(
        None,
        gt=0,
        description="Also evaluate the eval split's loss every N steps during training (train_log.jsonl, "
        "report_to trackers); the final evaluation runs either way.",
    )
    early_stopping_patience: int | None = Field(
        None,
        gt=0,
        description="Stop when eval_loss (measured every eval_steps) has not improved for this many evaluations "
        "(transformers' EarlyStoppingCallback); needs eval_steps. The run keeps the weights of the step it stopped at.",
    )
    metrics: list[MetricName] | None = Field(
        None,
        description="Task metrics to report besides eval_loss: accuracy, f1, f1_macro, matthews_correlation "
        "(classification), perplexity, exact_match (gsm8k); default: accuracy+f1 / perplexity / +exact_match.",
    )
    timing_warmup_steps: int = Field(5, ge=0, description="Steps excluded from the median ms/step.")
    max_new_tokens: int = Field(256, gt=0, description="gsm8k: generation length at evaluation.")
    few_shot: int = Field(
        0,
        ge=0,
        description="gsm8k: solved problems from the end of the training split written before every question "
        "(a k-shot prompt, the same k for every row; only the row's own answer is trained and scored).",
    )
    chat_template: bool = Field(
        True,
        description="gsm8k (SFT): build prompts with the tokenizer's chat template when it has one "
        "(instruction-tuned decoders); false: plain 'Question: ... Answer:' text.",
    )
    progress: bool = Field(True, description="Show progress bars.")
    hub_model_id: str | None = Field(
        None,
        description="Upload the finished run (adapter, tokenizer, model card) to this Hub model repo, e.g. "
        "'you/sst2-lora'; needs a token (`hf auth login` or HF_TOKEN). Off by default.",
    )
    hub_private: bool = Field(False, description="hub_model_id: create the repo private.")

    method_options: MethodOptions = Field(default_factory=MethodOptions, exclude=True)

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        get_method(value)
        return value

    @field_validator("training_args")
    @classmethod
    def _passed_through_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_training_args(value)

    @model_validator(mode="after")
    def _early_stopping_needs_evaluations(self) -> RunConfig:
        if self.early_stopping_patience is not None and self.eval_steps is None:
            raise ValueError(
                "early_stopping_patience needs evaluations during training to compare: set eval_steps too "
                "(e.g. eval_steps: 50)"
            )
        return self

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, value: str | None) -> str | None:
        return None if value is None else check_folder_name(value, "name")

    @property
    def run_name(self) -> str:
        """``name``, or <task>[_<train file stem>]_<model>_<method>_s<seed> (file tasks: two files never collide)."""
        if self.name:
            return self.name
        model_tag = Path(self.model).resolve().name if Path(self.model).is_dir() else self.model.replace("/", "-")
        task_tag = f"{self.task}_{Path(self.train_file).stem}" if self.train_file else self.task
        return _folder_safe(f"{task_tag}_{model_tag}_{self.method}_s{self.seed}")

    def option(self, key: str) -> Any:
        return getattr(self.method_options, key)

    def to_flat_dict(self) -> dict[str, Any]:
        """The fully resolved config, in the same flat form a user writes."""
        flat = self.model_dump(mode="json")
        flat.update(self.method_options.model_dump(mode="json"))
        return flat


def _folder_safe(text: str) -> str:
    """A default run name built from paths and ids, made a single folder name."""
    cleaned = "".join(ch if ch.isprintable() and ch not in "/\\" else "-" for ch in text)
    return cleaned.lstrip(".") or "run"


def _closest(key: str, allowed: list[str]) -> str:
    match = difflib.get_close_matches(key, allowed, n=1)
    return f" Did you mean '{match[0]}'?" if match else ""


def _owner_hint(key: str) -> str:
    owners = [name for name in method_names() if key in get_method(name).options.model_fields]
    if owners:
        return f" (a key of method(s) {', '.join(owners)})"
    if key in trainer_fields():
        return f" (a transformers TrainingArguments field: write it under `training_args:`, as {{{key}: ...}})"
    return ""


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for problem in err.errors():
        key = ".".join(str(p) for p in problem["loc"]) or "(config)"
        given = problem.get("input")
        lines.append(f"  {key}: {problem['msg']} (got {given!r})")
    return f"invalid config {source}".rstrip() + ":\n" + "\n".join(lines)


def build_config(raw: dict[str, Any], source: str = "") -> RunConfig:
    """Validate a flat dict: shared keys → RunConfig, the rest → the method's options."""
    try:
        raw = apply_aliases(raw)
    except ValueError as err:
        raise ConfigError(f"config {source}: {err}") from None
    method_name = raw.get("method", RunConfig.model_fields["method"].default)
    try:
        spec = get_method(method_name)
    except KeyError as err:
        raise ConfigError(f"config key 'method': {err.args[0]}") from None
    shared_keys = set(RunConfig.model_fields) - {"method_options"}
    option_keys = set(spec.options.model_fields)
    unknown = sorted(set(raw) - shared_keys - option_keys)
    if unknown:
        allowed = sorted(shared_keys | option_keys)
        details = "; ".join(f"'{k}'{_owner_hint(k) or _closest(k, allowed)}" for k in unknown)
        raise ConfigError(
            f"unknown config key(s) {source}for method '{method_name}': {details}. Allowed keys: {', '.join(allowed)}."
        )
    try:
        options = spec.options(**{k: v for k, v in raw.items() if k in option_keys})
        return RunConfig(**{k: v for k, v in raw.items() if k in shared_keys}, method_options=options)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["lora_r=16", "target_modules=[query,value]"]`` → typed values (YAML parsing)."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got '{pair}'")
        try:
            overrides[key.strip()] = load_yaml(value, f"--set {key.strip()}") if value.strip() else None
        except YamlInputError as err:
            hint = "a value with quotes, brackets or ':' must be YAML, e.g. --set \"name='my run'\""
            raise ConfigError(f"{err}\n({hint})") from None
    return overrides


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    source = ""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: '{path.resolve()}'")
        source = f"in '{path}' "
        try:
            loaded = load_yaml(path.read_text(encoding="utf-8"), f"'{path}'")
        except (YamlInputError, UnicodeDecodeError) as err:
            raise ConfigError(str(err) if isinstance(err, YamlInputError) else f"'{path}' is not UTF-8 text") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"'{path}' must hold a mapping of config keys, got {type(loaded).__name__}")
        if loaded is None:
            raise ConfigError(
                f"config file '{path}' is empty: write at least `model`, `task` and `method`, "
                "or omit the file to train with the defaults"
            )
        raw = loaded
    raw.update(parse_overrides(overrides or []))
    return build_config(raw, source)


def config_changes(saved: dict[str, Any], wanted: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Result-relevant keys whose value differs between a saved flat config and a wanted one.

    The saved config is resolved again first, so a key added to sparselora since it was written
    counts with its default instead of as a change.
    """
    with contextlib.suppress(ConfigError):  # otherwise compare as written: the differing keys are reported
        saved = build_config(saved).to_flat_dict()
    keys = (set(saved) | set(wanted)) - NON_RESULT_KEYS
    return {key: (saved.get(key), wanted.get(key)) for key in sorted(keys) if saved.get(key) != wanted.get(key)}


def describe_keys() -> str:
    """Every shared key with its description, then each method's keys: the config reference."""
    lines = ["Shared keys:"]
    for key, field in RunConfig.model_fields.items():
        if key != "method_options":
            lines.append(f"  {key} (default {field.default!r}): {field.description or ''}")
    for name in method_names():
        options = get_method(name).options.model_fields
        if options:
            lines.append(f"Method '{name}':")
            lines += [f"  {k} (default {f.default!r}): {f.description or ''}" for k, f in options.items()]
    return "\n".join(lines)
