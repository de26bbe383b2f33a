"""Every method's training step timed side by side: one process, the same batches, rotating order.

A comparison's cells train one after another, often hours apart and next to other work, so the
Trainer's ms/step of two cells does not compare. This pass builds every method of one task (its
cells' run config for one seed) and runs rounds in which each method trains one step on the same
batch, the order rotating each round, after untimed warm-up rounds. Each method's callbacks see the
step of the real run that a round stands for — round r of R is step (r + ½)·max_steps/R — so
schedules (SparseLoRA's dense warm-up and cool-down, pruning, AdaLoRA's budget) run in the
proportion they had in training: the mean is the run's time per step under its schedule, the
median its typical step. A step is what the Trainer does: forward, backward, gradient clipping,
optimiser step and the method's callbacks (gradient accumulation not modelled: one batch a step).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.profiler import record_function
from tqdm.auto import tqdm
from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments, set_seed

from sparselora.compare.plan import Cell, CompareConfig, TimingConfig, plan_cells
from sparselora.compare.runner import cell_finished, failure_path
from sparselora.config import ConfigError, RunConfig
from sparselora.files.atomic import atomic_write_json
from sparselora.training.arguments import planned_steps, training_arguments
from sparselora.training.environment import describe_environment
from sparselora.training.inputs import load_inputs
from sparselora.training.precision import autocast

logger = logging.getLogger(__name__)

TIMING_DIR = "timing"


@dataclass
class Contender:
    """One method, built as its run builds it, with what its Trainer callbacks are called with."""

    label: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    callbacks: list
    args: TrainingArguments
    state: TrainerState
    batches: Iterator[dict[str, torch.Tensor]]
    device: torch.device
    precision: str
    max_grad_norm: float


def build_contender(label: str, config: RunConfig, scratch: Path) -> Contender:
    set_seed(config.seed)
    inputs = load_inputs(config)
    setup = inputs.build_method()
    model = setup.model.to(inputs.device).train()
    if config.gradient_checkpointing:  # as the Trainer enables it (training/loop.py)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    args = training_arguments(config, str(scratch / label), distributed=False)
    state = TrainerState(max_steps=planned_steps(config, len(inputs.data.train)))
    # the Trainer's optimiser for these arguments (fused AdamW on CPU by default), at the peak learning rate
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = optimizer_cls([{"params": trainable, "weight_decay": config.weight_decay}], **optimizer_kwargs)
    for callback in setup.callbacks:
        callback.on_train_begin(args, state, TrainerControl(), model=model, optimizer=optimizer)

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        for batch in itertools.cycle(inputs.train_loader()):
            yield {key: value.to(inputs.device) for key, value in batch.items()}

    return Contender(
        label, model, optimizer, setup.callbacks, args, state, batches(), inputs.device, inputs.precision,
        config.max_grad_norm,
    )  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(contender: Contender, step: int) -> float:
    """Seconds of one training step at global step ``step`` of the run's schedule.

    Its phases are labelled (``forward``, ``backward``, ``optimizer``) for torch.profiler; the labels cost
    nothing when no profiler runs.
    """
    c = contender
    c.state.global_step = step
    control = TrainerControl()
    batch = next(c.batches)
    _sync(c.device)
    start = time.perf_counter()
    for callback in c.callbacks:
        callback.on_step_begin(c.args, c.state, control, model=c.model)
    with record_function("forward"), autocast(c.device, c.precision):
        loss = c.model(**batch).loss
    with record_function("backward"):
        loss.backward()
    with record_function("optimizer"):
        if c.max_grad_norm:
            torch.nn.utils.clip_grad_norm_([p for p in c.model.parameters() if p.grad is not None], c.max_grad_norm)
        c.optimizer.step()
    for callback in c.callbacks:
        callback.on_optimizer_step(c.args, c.state, control, model=c.model, optimizer=c.optimizer)
    c.optimizer.zero_grad(set_to_none=True)
    for callback in c.callbacks:
        callback.on_step_end(c.args, c.state, control, model=c.model)
    _sync(c.device)
    return time.perf_counter() - start


def interleaved_step_times(
    configs: dict[str, RunConfig], rounds: int, warmup: int, progress: bool = True
) -> dict[str, list[float]]:
    """Milliseconds per step of each method, ``rounds`` values each (label → times)."""
    with tempfile.TemporaryDirectory(prefix="sparselora-timing-") as scratch:
        contenders = [build_contender(label, config, Path(scratch)) for label, config in configs.items()]
        times: dict[str, list[float]] = {c.label: [] for c in contenders}
        for r in tqdm(range(warmup + rounds), desc="interleaved timing", unit="round", disable=not progress):
            order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
            for contender in order:
                max_steps = contender.state.max_steps
                step = r if r < warmup else math.floor((r - warmup + 0.5) * max_steps / rounds)
                elapsed = timed_step(contender, step)
                if r >= warmup:
                    times[contender.label].append(1000 * elapsed)
    return times


def summarise(times: dict[str, list[float]], reference: str, rounds: int, warmup: int, seed: int) -> dict[str, Any]:
    """timing/<task>.json: per-method median and mean, and their ratio to the reference."""
    methods = {
        label: {"median_ms": statistics.median(values), "mean_ms": statistics.fmean(values), "times_ms": values}
        for label, values in times.items()
    }
    ref = methods.get(reference)
    for entry in methods.values():
        entry["median_ratio"] = entry["median_ms"] / ref["median_ms"] if ref else None
        entry["mean_ratio"] = entry["mean_ms"] / ref["mean_ms"] if ref else None
    return {
        "schedule": "interleaved: one step of each method per round on the same batch, order rotating",
        "rounds": rounds,
        "warmup_rounds": warmup,
        "seed": seed,
        "reference": reference,
        "methods": methods,
        "environment": describe_environment(),
    }


def timing_path(config: CompareConfig, task: str) -> Path:
    return Path(config.output_dir) / TIMING_DIR / f"{task}.json"


def read_timing(results_dir: Path, task: str) -> dict[str, Any] | None:
    path = Path(results_dir) / TIMING_DIR / f"{task}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def time_comparison(config: CompareConfig, retime: bool = False, progress: bool = True) -> list[Path]:
    """The interleaved pass for each task whose timing file is missing or lacks a method (``retime``: all).

    It runs once every cell has finished or failed, alone on the machine as the cells were.

    A method whose cell config is invalid is left out (its cells fail on their own); a pass that fails
    is logged and writes nothing, so the tables keep only the Trainer's figure.
    """
    timing = config.timing
    if timing is None:
        return []
    results_dir = Path(config.output_dir)
    if retime and not any(cell_finished(config, c) for c in plan_cells(config)):
        raise ConfigError(
            f"--retime: '{results_dir}' holds no finished cell of this comparison, so there is nothing to time; "
            "run the comparison without --retime first"
        )
    ran = [cell_finished(config, c) or failure_path(results_dir, c).is_file() for c in plan_cells(config)]
    pending = ran.count(False)
    if pending:  # timing next to a cell still training would measure the contention
        logger.info("interleaved timing waits until every cell has run (%d to go)", pending)
        return []
    written = []
    for task in config.tasks:
        path = timing_path(config, task)
        done = read_timing(results_dir, task)
        if done and not retime and set(done["methods"]) >= set(config.methods):
            continue
        try:
            summary = time_task(config, task, list(config.methods), progress)
        except Exception as err:  # the cells' results stand without it
            logger.error("interleaved timing of task %s failed: %s: %s", task, type(err).__name__, err)
            continue
        atomic_write_json(path, summary)
        written.append(path)
    return written


def time_task(config: CompareConfig, task: str, labels: list[str], progress: bool = True) -> dict[str, Any]:
    """The interleaved pass of the methods ``labels`` on ``task`` (the timing seed's configs): timing/<task>.json.

    A method whose cell config is invalid is left out (its cells fail on their own).
    """
    timing = config.timing or TimingConfig()
    seed = config.seeds[0] if timing.seed is None else timing.seed
    configs = {}
    for label in labels:
        try:
            configs[label] = Cell(label, task, seed).run_config(config)
        except ConfigError as err:
            logger.error("interleaved timing leaves out %s: %s", label, err)
    times = interleaved_step_times(configs, timing.rounds, timing.warmup, progress)
    return summarise(times, config.reference, timing.rounds, timing.warmup, seed)
