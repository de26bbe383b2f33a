"""Tasks: a name, a kind (which decides head, preprocessing and metrics) and a loader."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from datasets import Dataset

if TYPE_CHECKING:
    from sparselora.config import RunConfig

TaskKind = Literal["classification", "regression", "language_modeling", "generation", "sft"]  # regression:
# a classification task with `problem_type: regression` (a one-output head, MSE), evaluated as such


@dataclass
class TaskData:
    """Raw splits in standard columns.

    classification: ``text`` (+ ``text_pair``), ``label`` (int); language_modeling: ``text``;
    generation: ``prompt``, ``target``, ``answer`` (the reference final answer); sft (your own data):
    ``prompt``/``completion`` or ``messages``/``trained_from`` (data/sft.py).
    """

    train: Dataset
    eval: Dataset
    label_names: list[str] = field(default_factory=list)
    kind: TaskKind | None = None  # set by tasks whose kind follows the data (your own files): else the spec's
    data_format: str | None = None  # your own files: the format read (data/sft.py)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: TaskKind
    dataset_id: str | None  # the Hub dataset it reads (model card, Hub fallback); None: the user's own files
    load: Callable[[RunConfig], TaskData]
    eval_split: str = "validation"
    dataset_config: str | None = None  # the Hub dataset's configuration (GLUE's "sst2")


_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    _TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    import sparselora.data  # noqa: F401  (registers the built-in tasks)

    if name not in _TASKS:
        raise KeyError(f"unknown task '{name}'; available tasks: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]


def task_names() -> list[str]:
    import sparselora.data  # noqa: F401

    return sorted(_TASKS)


def first_n(dataset: Dataset, n: int | None) -> Dataset:
    """The documented subsetting rule: the first N rows, as in transformers' run_glue."""
    return dataset if n is None or n >= len(dataset) else dataset.select(range(n))
