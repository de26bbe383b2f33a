"""The training loop: HF ``Trainer`` plus the measurements and outputs of a run folder.

Methods plug in through the registry (model + callbacks); nothing here is method-specific.
Works under ``accelerate launch --num_processes N`` (CPU: gloo): every process trains,
process 0 holds the run's lock, evaluates and writes the run folder. The Trainer's own
checkpoints (every ``save_steps``, in the partial folder) make a killed run resumable: see
:mod:`sparselora.run_folder.resume` and :mod:`sparselora.run_folder.layout` for the folder's states.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments, set_seed

from sparselora.config import RunConfig
from sparselora.evaluation.loop import EvalResult, evaluate
from sparselora.files.atomic import atomic_write_json
from sparselora.files.disk import disk_full_error, is_disk_full
from sparselora.files.locks import exclusive_lock
from sparselora.files.paths import check_writable_folder
from sparselora.methods import MethodSetup
from sparselora.run_folder.layout import (
    CHECKPOINTS_DIR,
    METRICS_FILE,
    METRICS_SCHEMA_VERSION,
    TRAIN_LOG_FILE,
    check_run_folder,
    lock_path,
    mark_failed,
    partial_dir,
    publish,
    write_config,
    write_status,
)
from sparselora.run_folder.model_card import write_model_card
from sparselora.run_folder.resume import checkpoint_step, last_checkpoint, prepare_work_folder
from sparselora.training.arguments import check_training_length, training_arguments
from sparselora.training.environment import describe_environment
from sparselora.training.inputs import RunInputs, load_inputs
from sparselora.training.measure import PeakMemory, StepTimer
from sparselora.training.params import count_parameters
from sparselora.training.precision import autocast

logger = logging.getLogger(__name__)


def run_evaluation(model, inputs: RunInputs) -> EvalResult:
    """The timed final evaluation, on the run's device and in its precision."""
    config = inputs.config
    with autocast(inputs.device, inputs.precision):
        return evaluate(
            model,
            inputs.data,
            kind=inputs.evaluation_kind,
            causal=inputs.causal,
            num_labels=inputs.num_labels,
            batch_size=config.eval_batch_size,
            tokenizer=inputs.tokenizer,
            max_new_tokens=config.max_new_tokens,
            progress=config.progress,
            metrics=inputs.metrics,
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
            "label_names": inputs.label_names,
        },
        "task_metrics": eval_result.metrics,
        "params": count_parameters(trainer.model),
        "method": method_report,
        "train": {
            "steps": state.global_step,
            "epochs": state.epoch,
            "train_examples": len(inputs.data.train),
            "world_size": trainer.args.world_size,
            "precision": inputs.precision,
            "device": str(inputs.device),
            "gradient_checkpointing": config.gradient_checkpointing,
            "optim": str(getattr(trainer.args.optim, "value", trainer.args.optim)),
            "final_logged_loss": losses[-1] if losses else None,
            "stopped_early": bool(config.early_stopping_patience) and state.global_step < state.max_steps,
            "best_eval_loss": state.best_metric,
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
    """The training loss or the weights became NaN or infinite."""


class NonFiniteGuard(TrainerCallback):
    """Stops training at the first NaN/inf loss and never lets non-finite weights reach a checkpoint.

    The loss is checked whenever it is logged; the trainable weights (NaN stays NaN under every
    optimiser) just before each checkpoint is written, so the checkpoints on disk are all good.
    """

    def __init__(self, model: torch.nn.Module):
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.problem: str | None = None

    def _stop(self, control, problem: str) -> None:
        self.problem = self.problem or problem
        control.should_save = False
        control.should_training_stop = True

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save and not all(bool(torch.isfinite(p).all()) for p in self.parameters):
            self._stop(control, f"the weights became non-finite by step {state.global_step}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self._stop(control, f"training loss became {loss} at step {state.global_step}")


def diverged_error(problem: str, work: Path) -> TrainingDivergedError:
    checkpoint = last_checkpoint(work)
    kept = (
        f"the last good checkpoint (step {checkpoint_step(checkpoint)}) is kept in '{checkpoint}'"
        if checkpoint
        else "no checkpoint had been written yet"
    )
    return TrainingDivergedError(
        f"{problem}: lower `learning_rate` (or raise `warmup_ratio`) and rerun with --overwrite; {kept}."
    )


def train(config: RunConfig, overwrite: bool = False, resume: bool = False) -> Path | None:
    """Train one run (resuming an unfinished one) and publish its folder. None on non-zero ranks."""
    set_seed(config.seed)
    check_writable_folder(Path(config.output_dir), "output_dir")
    final_dir = Path(config.output_dir) / config.run_name
    work = partial_dir(final_dir)
    args = training_arguments(config, str(work / CHECKPOINTS_DIR), distributed=_world_size() > 1)
    is_main = args.process_index == 0
    with ExitStack() as claims:
        if is_main:
            claims.enter_context(exclusive_lock(lock_path(final_dir), f"run '{final_dir}'"))
            check_run_folder(final_dir, overwrite)
        inputs = load_inputs(config)  # bad data fails here, before the run folder is touched
        check_training_length(config, len(inputs.data.train))
        with args.main_process_first(local=False, desc="preparing the run folder"):
            checkpoint = prepare_work_folder(final_dir, config.to_flat_dict(), overwrite, resume, is_main)
        try:
            return _train_and_publish(inputs, args, work, final_dir, checkpoint)
        except BaseException as err:
            if is_main and work.is_dir():
                state = "interrupted" if isinstance(err, KeyboardInterrupt) else f"{type(err).__name__}: {err}"
                last = last_checkpoint(work)
                mark_failed(work, error=state, last_checkpoint=str(last) if last else None)
            raise


def _train_and_publish(
    inputs: RunInputs, args: TrainingArguments, work: Path, final_dir: Path, checkpoint: Path | None
) -> Path | None:
    config = inputs.config
    is_main = args.process_index == 0
    resumed_from_step = checkpoint_step(checkpoint) if checkpoint else None  # read now: rotation deletes it
    if checkpoint is not None and is_main:
        logger.info("resuming %s from %s", config.run_name, checkpoint)
    setup = inputs.build_method()
    try:
        return _train_method(inputs, setup, args, work, final_dir, resumed_from_step, checkpoint)
    except Exception as err:
        if is_disk_full(err):
            raise disk_full_error(work, disk_space_needed(setup.model), err) from err
        raise


def disk_space_needed(model: torch.nn.Module) -> int:
    """Bytes a run writes at most: two checkpoints of fp32 trainable weights with AdamW's two moments each,
    and the final weights."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) * 4
    return 7 * trainable


def _train_method(
    inputs: RunInputs,
    setup: MethodSetup,
    args: TrainingArguments,
    work: Path,
    final_dir: Path,
    resumed_from_step: int | None,
    checkpoint: Path | None,
) -> Path | None:
    config = inputs.config
    is_main = args.process_index == 0
    timer = StepTimer(work / TRAIN_LOG_FILE, config.timing_warmup_steps)
    guard = NonFiniteGuard(setup.model)
    with _tensorboard_logs_in(work / "tensorboard"):
        trainer = Trainer(
            model=setup.model,
            args=args,
            train_dataset=inputs.data.train,
            # eval_steps: the eval split's loss during training (masked LM: masks drawn as in training)
            eval_dataset=inputs.data.eval if config.eval_steps else None,
            data_collator=inputs.data.train_collator,
            callbacks=[timer, *setup.callbacks, guard, *_early_stopping(config)],
        )
    _run_first(trainer, setup.callbacks)
    with PeakMemory(args.device) as memory:
        start = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        wall_s = time.perf_counter() - start
    if guard.problem:
        raise diverged_error(guard.problem, work)
    if not is_main:
        return None

    model = trainer.model
    eval_result = run_evaluation(model, inputs)
    trainer.log({f"final/{name}": value for name, value in eval_result.metrics.items()})  # to the trackers too
    method_report = setup.measurements() if setup.measurements else {}
    metrics = assemble_metrics(inputs, eval_result, trainer, timer, memory, wall_s, method_report)
    metrics["train"]["resumed_from_step"] = resumed_from_step
    model.save_pretrained(work)
    inputs.tokenizer.save_pretrained(work)
    if setup.write_artifacts:
        setup.write_artifacts(work)
    write_config(work, config.to_flat_dict())
    write_model_card(work, config, inputs, metrics)
    atomic_write_json(work / METRICS_FILE, metrics)
    shutil.rmtree(work / CHECKPOINTS_DIR, ignore_errors=True)  # resumable state is not a result
    write_status(work, "finished", steps=trainer.state.global_step)
    publish(work, final_dir)
    logger.info("run written to %s", final_dir)
    if config.hub_model_id:
        from sparselora.hub import push_run

        logger.info("uploaded to %s", push_run(final_dir, config.hub_model_id, private=config.hub_private))
    return final_dir


def _early_stopping(config: RunConfig) -> list[TrainerCallback]:
    if config.early_stopping_patience is None:
        return []
    return [EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience)]


def _run_first(trainer: Trainer, callbacks: list[TrainerCallback]) -> None:
    """The method's callbacks before the Trainer's own and the trackers': what they add to a step's logs
    (SparseLoRA's realised sparsity) reaches TensorBoard, W&B and train_log.jsonl."""
    handler = trainer.callback_handler
    for callback in reversed(callbacks):
        handler.callbacks.remove(callback)
        handler.callbacks.insert(0, callback)


@contextmanager
def _tensorboard_logs_in(folder: Path) -> Iterator[None]:
    """``report_to: tensorboard`` writes into the run folder (the Trainer's default, the checkpoint folder, is
    deleted when the run finishes); ``TENSORBOARD_LOGGING_DIR`` set by the user wins. Its callback reads it once."""
    if "TENSORBOARD_LOGGING_DIR" in os.environ:
        yield
        return
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(folder)
    try:
        yield
    finally:
        del os.environ["TENSORBOARD_LOGGING_DIR"]


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))
