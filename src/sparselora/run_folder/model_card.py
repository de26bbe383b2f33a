"""The model card (README.md) of a run folder, filled from the run's own config and metrics."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from sparselora.files.atomic import atomic_write_text
from sparselora.methods import MethodSpec, get_method
from sparselora.models import ModelSource, hub_id
from sparselora.models.loading import ALIAS_HUB_IDS

if TYPE_CHECKING:
    from sparselora.config import RunConfig
    from sparselora.training.inputs import RunInputs

_PIPELINE_TAGS = {
    "sequence_classification": "text-classification",
    "causal_lm": "text-generation",
    "masked_lm": "fill-mask",
}
_AUTO_CLASS = {
    "sequence_classification": "AutoModelForSequenceClassification",
    "causal_lm": "AutoModelForCausalLM",
    "masked_lm": "AutoModelForMaskedLM",
}


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# Licence and language of the packaged bases' public cards, for folders that carry no README (SmolLM2 is
# converted from GGUF); any other base model's own README.md front matter is read instead.
KNOWN_BASE_CARDS: dict[str, dict[str, Any]] = {
    "sentence-transformers/all-MiniLM-L6-v2": {"license": "apache-2.0", "language": ["en"]},
    "HuggingFaceTB/SmolLM2-135M-Instruct": {"license": "apache-2.0", "language": ["en"]},
}


def base_card_metadata(source: ModelSource) -> dict[str, Any]:
    """``license`` and ``language`` of the base model, from its folder's model card where it has one."""
    readme = Path(source.path) / "README.md"
    if readme.is_file():
        try:
            data = ModelCard.load(readme, ignore_metadata_errors=True).data
        except (ValueError, OSError):
            data = None
        if data is not None and (data.license or data.language):
            return {"license": data.license, "language": data.language}
    return KNOWN_BASE_CARDS.get(hub_id(source), {})


def card_base_model(source: ModelSource) -> str | None:
    """The base model's Hub id for ``base_model:`` (the Hub rejects a local path): an alias's id, a Hub id as
    given, or what a local folder's config names as its origin when that is a Hub id; else None."""
    if source.name in ALIAS_HUB_IDS or not Path(source.name).exists():
        return hub_id(source)
    config_file = Path(source.path) / "config.json"
    origin = json.loads(config_file.read_text()).get("_name_or_path", "") if config_file.is_file() else ""
    return origin if _looks_like_hub_id(origin) else None


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def eval_split_name(config: RunConfig, inputs: RunInputs) -> str:
    """The split evaluated, as a reader names it: the dataset's split, or the evaluation file's name."""
    if config.task == "dataset":
        return config.eval_split
    if inputs.task.dataset_id is None:
        return Path(config.eval_file).name if config.eval_file else "eval_file"
    return inputs.task.eval_split


def card_data(config: RunConfig, inputs: RunInputs, metrics: dict, is_adapter: bool) -> ModelCardData:
    """The Hub metadata: base model, licence, dataset ids, and every task metric as a ``model-index`` result."""
    base = card_base_model(inputs.source)
    task = inputs.task
    dataset_id = task.dataset_id or (config.dataset if config.dataset and not Path(config.dataset).exists() else None)
    dataset_config = task.dataset_config or (config.dataset_config if dataset_id else None)
    adapter_tags = ["lora", *([f"base_model:adapter:{base}"] if base else [])] if is_adapter else []
    results = [
        EvalResult(
            task_type=_PIPELINE_TAGS[inputs.head],
            dataset_type=dataset_id or config.task,
            dataset_name=dataset_id or Path(config.eval_file or config.dataset or "eval").name,
            dataset_config=dataset_config,
            dataset_split=eval_split_name(config, inputs),
            metric_type="loss" if name == "eval_loss" else name,
            metric_value=value,
        )
        for name, value in metrics["task_metrics"].items()
    ]
    return ModelCardData(
        model_name=config.run_name,
        base_model=base,
        library_name="peft" if is_adapter else "transformers",
        pipeline_tag=_PIPELINE_TAGS[inputs.head],
        tags=list(dict.fromkeys(["sparselora", config.method, config.task, *adapter_tags])),
        datasets=[dataset_id] if dataset_id else None,
        metrics=[("loss" if name == "eval_loss" else name) for name in metrics["task_metrics"]],
        eval_results=results,
        **{key: value for key, value in base_card_metadata(inputs.source).items() if value},
    )


def _front_matter(config: RunConfig, inputs: RunInputs, metrics: dict, is_adapter: bool) -> str:
    return "---\n" + card_data(config, inputs, metrics, is_adapter).to_yaml() + "\n---\n"


def _adapter_section(run_dir: Path, spec: MethodSpec) -> list[str]:
    """The adapter as PEFT saved it; a method's ``card_adapter_rows`` replaces rows that read differently."""
    adapter = json.loads((run_dir / "adapter_config.json").read_text())
    targets = adapter.get("target_modules")
    targets = sorted(targets) if isinstance(targets, list) else targets
    rank = adapter.get("r")
    if adapter.get("rank_pattern"):
        pattern = adapter["rank_pattern"]
        rank = "per module: " + ", ".join(f"`{name}` {r}" for name, r in sorted(pattern.items()))
    rows = {
        "PEFT type": adapter.get("peft_type"),
        "Task type": adapter.get("task_type") or "none (generic PeftModel)",
        "Rank r": rank,
        "Alpha": adapter.get("lora_alpha", "–"),
        "Dropout": adapter.get("lora_dropout", "–"),
        "Target modules": ", ".join(f"`{t}`" for t in targets) if isinstance(targets, list) else f"`{targets}`",
        "Also trained and saved": ", ".join(f"`{m}`" for m in adapter.get("modules_to_save") or []) or "nothing else",
    }
    rows |= spec.card_adapter_rows(adapter) if spec.card_adapter_rows else {}
    return ["### Adapter", "", "| setting | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows.items()], ""]


def _id2label(inputs: RunInputs) -> dict[int, str]:
    return dict(enumerate(inputs.label_names))


def _labels_section(inputs: RunInputs) -> list[str]:
    """Class id → name, as the model's config records it (what pipeline() prints)."""
    if not inputs.num_labels or not inputs.label_names:
        return []
    rows = [f"| {i} | {name} |" for i, name in enumerate(inputs.label_names)]
    return ["## Labels", "", "| class id | label |", "|---|---|", *rows, ""]


def dataset_description(config: RunConfig, inputs: RunInputs) -> str:
    task = inputs.task
    if config.task == "dataset":
        named = f"`{config.dataset}`" + (f" / `{config.dataset_config}`" if config.dataset_config else "")
        return f"{named}, split `{config.train_split}`"
    if task.dataset_id is None:
        return f"`{config.train_file}`"
    return f"`{task.dataset_id}`" + (f" / `{task.dataset_config}`" if task.dataset_config else "")


def _evaluated(config: RunConfig, examples: int) -> str:
    """How many examples were evaluated, saying so when they are a subset (``max_eval_samples``)."""
    if config.max_eval_samples is not None and examples >= config.max_eval_samples:
        return f"the first {examples:,} examples only (max_eval_samples)"
    return f"{examples:,} examples"


def write_model_card(run_dir: Path, config: RunConfig, inputs: RunInputs, metrics: dict) -> None:
    spec = get_method(config.method)
    is_adapter = (run_dir / "adapter_config.json").is_file()
    base = hub_id(inputs.source)
    params, train, inference, memory = metrics["params"], metrics["train"], metrics["inference"], metrics["memory"]
    # Unset options (None) are resolved at build time; the Adapter section shows what was used.
    options = {k: v for k, v in config.method_options.model_dump(mode="json").items() if v is not None}
    lines = [
        _front_matter(config, inputs, metrics, is_adapter),
        f"# {config.run_name}",
        "",
        f"`{base}` fine-tuned on **{config.task}** ({dataset_description(config, inputs)}, "
        f"{train['train_examples']:,} training examples) with **{config.method}**, "
        f"trained with sparselora on {date.today().isoformat()}.",
        "",
        "## Training configuration",
        "",
        f"- Base model: `{base}` (loaded from `{config.model}`), head: {inputs.head.replace('_', ' ')}",
        f"- Method: `{config.method}`"
        + (f" with {', '.join(f'`{k}={v}`' for k, v in options.items())}" if options else ""),
        f"- Epochs {train.get('epochs') or config.epochs:.3g} ({train['steps']} steps), "
        f"batch size {config.batch_size}, "
        f"learning rate {config.learning_rate:g} ({config.lr_scheduler}), weight decay {config.weight_decay:g}, "
        f"warm-up {config.warmup_steps or config.warmup_ratio}, max length {config.max_length}, seed {config.seed}",
        f"- Optimiser: `{train.get('optim', 'adamw_torch')}`, precision {train.get('precision', 'fp32')}"
        + (", gradient checkpointing" if config.gradient_checkpointing else ""),
        "",
        *(_adapter_section(run_dir, spec) if is_adapter else []),
        f"## Results ({eval_split_name(config, inputs)}, {_evaluated(config, inference['eval_examples'])})",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {_fmt(v)} |" for k, v in metrics["task_metrics"].items()],
        "",
        *_labels_section(inputs),
        "## Cost",
        "",
        "| measure | value |",
        "|---|---|",
        f"| total parameters | {_fmt(params['total'])} |",
        f"| trainable parameters | {_fmt(params['trainable'])} ({params['trainable_pct']:.3f}%) |",
        f"| nonzero trainable parameters | {_fmt(params['nonzero_trainable'])} |",
        f"| median training step | {train['median_step_ms']:.1f} ms |",
        f"| training wall time | {train['wall_time_s']:.1f} s |",
        f"| training throughput | {train['tokens_per_s']:,.0f} tokens/s |",
        f"| peak memory ({memory['kind']}) | {memory['peak_mb']:,.0f} MB |",
        f"| median inference latency, batch {inference['eval_batch_size']} | "
        f"{inference['median_batch_latency_ms']:.1f} ms |",
        f"| device | {metrics['environment']['device']} ({metrics['environment']['torch_threads']} threads) |",
        "",
        "## Usage",
        "",
        "```python",
        f"from transformers import AutoTokenizer, {_AUTO_CLASS[inputs.head]}",
        *(["from peft import PeftModel", ""] if is_adapter else [""]),
        f'tokenizer = AutoTokenizer.from_pretrained("runs/{config.run_name}")',
        *(
            [
                f'base = {_AUTO_CLASS[inputs.head]}.from_pretrained("{base}"'
                + (f", num_labels={inputs.num_labels}, id2label={_id2label(inputs)})" if inputs.num_labels else ")"),
                f'model = PeftModel.from_pretrained(base, "runs/{config.run_name}")',
            ]
            if is_adapter
            else [f'model = {_AUTO_CLASS[inputs.head]}.from_pretrained("runs/{config.run_name}")']
        ),
        "```",
        "",
        *[line for note in (spec.card_notes(config) if spec.card_notes else []) for line in (note, "")],
        f"Re-evaluate with `sparselora eval {Path(config.output_dir) / config.run_name}`.",
        "",
        "## Framework versions",
        "",
        *[f"- {name} {ver}" for name, ver in metrics["environment"]["versions"].items() if ver],
        "",
        *(["## Citation", "", *[f"- {text}" for text in spec.citations], ""] if spec.citations else []),
    ]
    atomic_write_text(run_dir / "README.md", "\n".join(lines))
