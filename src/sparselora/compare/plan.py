"""A comparison config (YAML) and the cells it expands to.

```yaml
name: compare_sst2
output_dir: runs/compare_sst2
reference: lora                 # the row every other method is compared with
seeds: [0, 1, 2]
tasks: [sst2]
shared: {model: minilm, max_train_samples: 2000, ...}   # any run key
methods:                        # label → run keys; `method` defaults to the label
  lora: {}
  sparselora: {ffn_sparsity: 0.5}
  prune_svd: {method: lora_prune, prune_structure: rank, prune_importance: svd}
targets:                        # checked in validation.md, as ratios method / reference
  - {metric: accuracy, min_ratio: 0.95}
timing: {rounds: 20, warmup: 3} # optional: every method's step time measured side by side after training
executor: local                 # local | slurm (submitit) | ray: where the cells train (compare/executors.py)
executor_options: {}            # submitit parameters or Ray task options
```

A cell's run keys are ``shared`` < ``task_overrides[task]`` < ``methods[label]`` < task and seed.
Cells are not validated here: a cell with a bad key fails on its own and is recorded, the others run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sparselora.config import ConfigError, RunConfig, build_config, parse_overrides
from sparselora.files.paths import check_folder_name
from sparselora.files.yaml_input import YamlInputError, load_yaml


class Target(BaseModel):
    """One validation target: ``metric(method) / metric(reference)`` within [min_ratio, max_ratio]."""

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(description="A results column key, e.g. accuracy, trainable_params, ms_per_step.")
    min_ratio: float | None = None
    max_ratio: float | None = None
    methods: list[str] | None = Field(None, description="Labels the target applies to; default every method.")
    reference: str | None = Field(None, description="Compare with this label instead of the config's reference.")

    @model_validator(mode="after")
    def _has_a_bound(self) -> Target:
        if self.min_ratio is None and self.max_ratio is None:
            raise ValueError(f"target for '{self.metric}' needs min_ratio or max_ratio")
        return self


class TimingConfig(BaseModel):
    """``timing:`` of a comparison config: the interleaved step-time pass after training."""

    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(20, ge=3, description="Timed rounds; each method trains one step per round.")
    warmup: int = Field(3, ge=0, description="Untimed rounds first (the run's first steps: calibration).")
    seed: int | None = Field(None, description="Which seed's cell configs to build (default: the first seed).")


ExecutorName = Literal["local", "slurm", "ray"]


class CompareConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "comparison"
    output_dir: Path = Field(Path("runs/comparison"), description="Results folder: runs/, failed/, tables, plots.")
    reference: str = Field("lora", description="Method label the others are compared with.")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    tasks: list[str] = Field(default_factory=lambda: ["sst2"], min_length=1)
    shared: dict[str, Any] = Field(default_factory=dict, description="Run keys every cell gets.")
    task_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = Field(min_length=1)
    targets: list[Target] = Field(default_factory=list)
    timing: TimingConfig | None = Field(None, description="Interleaved step timing of the methods after training.")
    executor: ExecutorName = Field("local", description="Where cells train: here one after another, SLURM, Ray.")
    executor_options: dict[str, Any] = Field(
        default_factory=dict,
        description="submitit parameters for slurm (slurm_partition, timeout_min, cpus_per_task, ...); "
        "Ray task options for ray (num_cpus, memory, ...).",
    )

    @field_validator("methods", "tasks")
    @classmethod
    def _usable_in_folder_names(cls, value, info):
        # a cell's run folder is <task>__<label>__s<seed>: labels and tasks are folder-name parts
        for name in value:
            check_folder_name(name, f"{info.field_name} entry")
        return value

    @model_validator(mode="after")
    def _reference_is_a_method(self) -> CompareConfig:
        for key in ("method", "seed", "task", "name", "output_dir"):
            if key in self.shared:
                raise ValueError(f"shared must not set '{key}': the comparison sets it per cell")
        if self.reference not in self.methods:
            raise ValueError(f"reference '{self.reference}' is not one of the methods: {', '.join(self.methods)}")
        for target in self.targets:
            unknown = set(target.methods or []) - set(self.methods)
            if unknown:
                raise ValueError(f"target '{target.metric}' names unknown methods {sorted(unknown)}")
        return self


@dataclass(frozen=True)
class Cell:
    label: str
    task: str
    seed: int

    @property
    def run_name(self) -> str:
        return f"{self.task}__{self.label}__s{self.seed}"

    def run_keys(self, config: CompareConfig) -> dict[str, Any]:
        keys = {**config.shared, **config.task_overrides.get(self.task, {}), **config.methods[self.label]}
        keys.setdefault("method", self.label)
        return {
            **keys,
            "task": self.task,
            "seed": self.seed,
            "name": self.run_name,
            "output_dir": str(runs_dir(config)),
        }

    def run_config(self, config: CompareConfig) -> RunConfig:
        """The validated run config of this cell."""
        return build_config(self.run_keys(config))


def runs_dir(config: CompareConfig) -> Path:
    return Path(config.output_dir) / "runs"


def plan_cells(config: CompareConfig, only: dict[str, str] | None = None) -> list[Cell]:
    """Every cell, seed-major (an interrupted comparison has whole seeds done); ``only`` filters by key."""
    cells = [Cell(label, task, seed) for seed in config.seeds for task in config.tasks for label in config.methods]
    if not only:
        return cells
    selected = [
        cell
        for cell in cells
        if all(str(getattr(cell, "label" if key == "method" else key)) == value for key, value in only.items())
    ]
    if not selected:
        raise ConfigError(f"--only {only} matches no cell of this comparison (methods: {', '.join(config.methods)})")
    return selected


def parse_only(text: str | None) -> dict[str, str]:
    """``"method=lora,seed=1"`` → {"method": "lora", "seed": "1"}."""
    if not text:
        return {}
    selection = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in {"method", "task", "seed"}:
            raise ConfigError(f"--only expects method=…,task=…,seed=… (any of them), got '{part}'")
        selection[key.strip()] = value.strip()
    return selection


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` → [0, 1, 2]."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds expects comma-separated integers such as 0,1,2; got '{text}'") from None
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds lists a seed twice: '{text}'")
    return seeds


def with_flags(
    config: CompareConfig,
    overrides: list[str] | None = None,
    output_dir: Path | None = None,
    seeds: str | None = None,
    data_dir: Path | None = None,
    executor: str | None = None,
) -> CompareConfig:
    """The comparison as the command line changes it: ``--set`` keys for every cell, the results folder, the
    seeds, and ``--data-dir``, which (as in ``train``) beats a ``data_dir`` the config names."""
    config.shared.update(parse_overrides(overrides or []))
    if data_dir is not None:
        config.shared["data_dir"] = str(data_dir)
    if output_dir is not None:
        config.output_dir = output_dir
    if seeds:
        config.seeds = parse_seeds(seeds)
    if executor is not None:
        allowed = get_args(ExecutorName)
        if executor not in allowed:
            raise ConfigError(f"--executor must be one of {', '.join(allowed)}; got '{executor}'")
        config.executor = executor
    return config


def load_compare_config(path: str | Path) -> CompareConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"comparison config not found: '{path.resolve()}'")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"), f"'{path}'") or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"'{path}' must hold a mapping (name, methods, seeds, ...), got {type(raw).__name__}")
        return CompareConfig(**raw)
    except YamlInputError as err:
        raise ConfigError(str(err)) from None
    except ValidationError as err:
        lines = [f"  {'.'.join(map(str, e['loc'])) or '(config)'}: {e['msg']}" for e in err.errors()]
        raise ConfigError(f"invalid comparison config '{path}':\n" + "\n".join(lines)) from None
