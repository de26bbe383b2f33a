"""`sparselora export RUN --merge OUT`: a run's adapter merged into its base, as a plain transformers folder.

What serving stacks and ``pipeline()`` load without PEFT: safetensors weights, the config (with the run's
label names), the tokenizer. Merging runs in fp32 on the CPU, so the folder reproduces the run's metrics.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel

from sparselora.evaluation.rerun import check_saved_weights, load_trained, saved_run
from sparselora.files.paths import check_writable_folder
from sparselora.files.staging import staged_folder
from sparselora.methods import get_method
from sparselora.run_folder.layout import is_run_folder
from sparselora.training.inputs import load_inputs


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


def merge_run(run_dir: Path, out: Path) -> Path:
    """Merge the run's adapter into its base model and write ``out``; refuses an existing ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    config, _ = saved_run(run_dir, {"precision": "fp32"})
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
    inputs = load_inputs(config, torch.device("cpu"))
    model = load_trained(run_dir, inputs)
    assert isinstance(model, PeftModel)
    merged = model.merge_and_unload()
    with staged_folder(out) as staging:
        merged.save_pretrained(staging, safe_serialization=True)
        inputs.tokenizer.save_pretrained(staging)
    return out
