"""`sparselora export RUN --merge OUT`: a run's adapter merged into its base, as a plain transformers folder.

What serving stacks and ``pipeline()`` load without PEFT: safetensors weights, the config (with the run's
label names), the tokenizer, a model card. Merging runs in fp32 on the CPU (the folder reproduces the run's
metrics); ``--dtype`` casts the merged weights afterwards.
"""

from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub import ModelCard
from peft import PeftModel

from sparselora.evaluation.rerun import check_saved_weights, saved_run, weights_that_fit
from sparselora.files.atomic import atomic_write_text
from sparselora.files.paths import check_writable_folder
from sparselora.files.staging import staged_folder
from sparselora.methods import get_method
from sparselora.models import ModelSource, load_tokenizer, resolve_model
from sparselora.run_folder.layout import is_run_folder
from sparselora.run_folder.model_card import card_base_model
from sparselora.training.inputs import load_run_base


class CannotMergeError(ValueError):
    """The run's weights do not merge into a plain model of what was trained and evaluated."""


def check_outside_run_folders(out: Path, run_dir: Path) -> None:
    """A finished (or unfinished) run folder is never written into: OUT may not be the run, inside a run or
    above it."""
    resolved, run = out.resolve(), run_dir.resolve()
    if resolved == run or run.is_relative_to(resolved):
        raise FileExistsError(
            f"--merge '{out}' is the run folder '{run_dir}' or holds it; give a new folder outside it"
        )
    inside = next((folder for folder in resolved.parents if is_run_folder(folder)), None)
    if inside is not None:
        raise FileExistsError(
            f"--merge '{out}' is inside the run folder '{inside}', which is never changed; give a folder outside it"
        )


MERGE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def merge_run(run_dir: Path, out: Path, dtype: str = "fp32") -> Path:
    """Merge the run's adapter into its base model (in fp32) and write ``out`` in ``dtype`` with a model card;
    refuses an existing ``out``. Reads only the run folder and the base model: no dataset is loaded."""
    run_dir, out = Path(run_dir), Path(out)
    if dtype not in MERGE_DTYPES:
        raise ValueError(f"--dtype '{dtype}': choose one of {list(MERGE_DTYPES)}")
    config, recorded = saved_run(run_dir, {"precision": "fp32"})
    refusal = get_method(config.method).cannot_merge
    if refusal:
        raise CannotMergeError(f"'{run_dir}' (method {config.method}) cannot be merged: {refusal}")
    check_saved_weights(run_dir)
    if not (run_dir / "adapter_config.json").is_file():
        raise CannotMergeError(
            f"'{run_dir}' holds a fully fine-tuned model, not an adapter: load it directly with from_pretrained"
        )
    check_outside_run_folders(out, run_dir)
    if out.exists():
        raise FileExistsError(f"--merge '{out.resolve()}' already exists; give a new folder (nothing is replaced)")
    check_writable_folder(out.parent if str(out.parent) else Path("."), "--merge")
    source = resolve_model(config.model, config.trust_remote_code)
    tokenizer = load_tokenizer(source)
    run = recorded["run"]
    merged = _merged_model(run_dir, config, source, tokenizer, run["head"], run.get("label_names") or [])
    merged = merged.to(MERGE_DTYPES[dtype])
    with staged_folder(out) as staging:
        merged.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        write_merged_card(staging, run_dir, config, recorded, source, dtype)
    return out


def _merged_model(run_dir: Path, config, source: ModelSource, tokenizer, head: str, label_names: list[str]):
    """The base as the run loaded it (fp32, the run's head and labels), its adapter merged in."""
    with weights_that_fit(run_dir, config.model):
        base, _ = load_run_base(config, source, head, tokenizer, label_names, torch.float32)
        model = PeftModel.from_pretrained(base, run_dir)
    return model.merge_and_unload()


def write_merged_card(folder: Path, run_dir: Path, config, recorded: dict, source: ModelSource, dtype: str) -> None:
    """The merged model's card: the run's Hub metadata and results, as a plain transformers model."""
    card = ModelCard.load(run_dir / "README.md") if (run_dir / "README.md").is_file() else ModelCard("")
    data = card.data
    data.library_name = "transformers"
    data.tags = [t for t in (data.tags or []) if not t.startswith("base_model:adapter:")] + ["merged"]
    base = card_base_model(source)
    if base:
        data.base_model = base
        data.tags.append(f"base_model:finetune:{base}")
    results = "\n".join(f"| {name} | {value:.4f} |" for name, value in recorded["task_metrics"].items())
    text = f"""---
{data.to_yaml()}
---
# {config.run_name} (merged)

The `{config.method}` adapter of the sparselora run `{config.run_name}` merged into its base model
(`{base or config.model}`) in fp32 and saved in {dtype}: a plain transformers model, no PEFT needed.

## Results (recorded by the run, fp32)

| metric | value |
|---|---|
{results}

## Usage

```python
from transformers import pipeline

model = pipeline(model="{folder.name}")
```
"""
    atomic_write_text(folder / "README.md", text)
