"""The training loop: HF ``Trainer`` plus the measurements and outputs of a run folder.

Methods plug in through the registry (model + callbacks); nothing here is method-specific.
Works under ``accelerate launch --num_processes N`` (CPU: gloo): every process trains,
process 0 evaluates and writes the run folder.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments, set_seed

from sparselora.config import RunConfig
from sparselora.environment import describe_environment
from sparselora.evaluate import EvalResult, evaluate
from sparselora.measure import PeakMemory, StepTimer
from sparselora.methods import BuildContext, get_method
from sparselora.params import count_parameters
from sparselora.pipeline import RunInputs, load_inputs
from sparselora.report.model_card import write_model_card
from sparselora.runs import (
    METRICS_FILE,
    METRICS_SCHEMA_VERSION,
    TRAIN_LOG_FILE,
    check_run_folder,
    publish,
    start_run_folder,
    write_config,
    write_json,
)

logger = logging.getLogger(__name__)


def training_arguments(config: RunConfig, scratch: str, distributed: bool) -> TrainingArguments:
    return TrainingArguments(
        output_dir=scratch,
        per_device_train_batch_size=config.batch_size,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_steps or config.warmup_ratio,
        weight_decay=config.weight_decay,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_grad_norm=config.max_grad_norm,
        logging_steps=config.logging_steps,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
        disable_tqdm=not config.progress,
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if distributed and not torch.cuda.is_available() else None,
        ddp_find_unused_parameters=False,  # every trainable parameter takes part in every step
        logging_nan_inf_filter=False,  # a diverged run must show NaN, not a filtered average
        label_names=["labels"],
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
    )


def run_evaluation(model, inputs: RunInputs) -> EvalResult:
    config = inputs.config
    return evaluate(
        model,
        inputs.data,
        kind=inputs.task.kind,
        causal=inputs.causal,
        num_labels=inputs.num_labels,
        batch_size=config.eval_batch_size,
        tokenizer=inputs.tokenizer,
        max_new_tokens=config.max_new_tokens,
        progress=config.progress,
    )


def assemble_metrics(
    inputs: RunInputs,
    eval_result: EvalResult,
    trainer: Trainer,
    timer: StepTimer,
    memory: PeakMemory,
    wall_s: float,
    method_report: dict[str, Any],
) -> dict[str, Any]:
    """metrics.json (schema in docs/metrics.md)."""
    config = inputs.config
    state = trainer.state
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    return {
        "schema_version": METRICS_SCHEMA_VERSION,
        "run": {
            "name": config.run_name,
            "model": config.model,
            "task": config.task,
            "method": config.method,
            "seed": config.seed,
            "head": inputs.head,
        },
        "task_metrics": eval_result.metrics,
        "params": count_parameters(trainer.model),
        "method": method_report,
        "train": {
            "steps": state.global_step,
            "epochs": state.epoch,
            "train_examples": len(inputs.data.train),
            "world_size": trainer.args.world_size,
            "final_logged_loss": losses[-1] if losses else None,
            "wall_time_s": wall_s,
            "median_step_ms": timer.median_step_ms(),
            "timing_warmup_steps": config.timing_warmup_steps,
            "tokens_seen": int(state.num_input_tokens_seen),
            "tokens_per_s": state.num_input_tokens_seen / wall_s if wall_s else 0.0,
        },
        "memory": {"peak_mb": memory.peak_mb, "kind": memory.kind},
        "inference": {
            "median_batch_latency_ms": eval_result.latency_ms_median,
            "eval_batch_size": config.eval_batch_size,
            "tokens_per_s": eval_result.eval_tokens_per_s,
            "eval_examples": eval_result.num_examples,
        },
        "environment": describe_environment(),
    }


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite: nothing is written."""


def check_finite_loss(log_history: list[dict[str, Any]]) -> None:
    for entry in log_history:
        loss = entry.get("loss")
        if loss is not None and not math.isfinite(loss):
            raise TrainingDivergedError(
                f"training loss became {loss} at step {entry.get('step')}: lower `learning_rate` "
                "(or raise `warmup_ratio`); no run folder was written."
            )


def train(config: RunConfig, overwrite: bool = False) -> Path | None:
    """Train one run and write its folder. Returns the folder (None on non-zero ranks)."""
    set_seed(config.seed)
    final_dir = Path(config.output_dir) / config.run_name
    with tempfile.TemporaryDirectory(prefix="sparselora-trainer-") as scratch:
        args = training_arguments(config, scratch, distributed=_world_size() > 1)
        is_main = args.process_index == 0
        if is_main:
            check_run_folder(final_dir, overwrite)  # fail before training, not after

        inputs = load_inputs(config)
        base, new_modules = inputs.load_base_model()
        context = BuildContext(
            config=config,
            arch=inputs.arch,
            head=inputs.head,
            new_modules=tuple(new_modules),
            calibration_batches=inputs.first_batches,
        )
        setup = get_method(config.method).build(base, context)

        log_path = Path(scratch) / TRAIN_LOG_FILE
        timer = StepTimer(log_path, config.timing_warmup_steps)
        trainer = Trainer(
            model=setup.model,
            args=args,
            train_dataset=inputs.data.train,
            data_collator=inputs.data.train_collator,
            callbacks=[timer, *setup.callbacks],
        )
        with PeakMemory(args.device) as memory:
            start = time.perf_counter()
            trainer.train()
            wall_s = time.perf_counter() - start
        check_finite_loss(trainer.state.log_history)
        if not is_main:
            return None

        model = trainer.model
        eval_result = run_evaluation(model, inputs)
        method_report = setup.report() if setup.report else {}
        metrics = assemble_metrics(inputs, eval_result, trainer, timer, memory, wall_s, method_report)
        run_dir = start_run_folder(final_dir)
        model.save_pretrained(run_dir)
        inputs.tokenizer.save_pretrained(run_dir)
        shutil.copy(log_path, run_dir / TRAIN_LOG_FILE)
        if setup.write_artifacts:
            setup.write_artifacts(run_dir)
        write_config(run_dir, config.to_flat_dict())
        write_json(run_dir / METRICS_FILE, metrics)
        write_model_card(run_dir, config, inputs, metrics)
        publish(run_dir, final_dir)
    logger.info("run written to %s", final_dir)
    return final_dir


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))
