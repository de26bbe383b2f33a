"""Measurements taken during training: step times, the training log, peak memory."""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path

import psutil
import torch
from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    """Wall time of every optimiser step, and a JSONL line per logging step.

    The step time covers data collation, forward, backward and the optimiser: what a user waits for.
    """

    def __init__(self, log_path: Path, warmup_steps: int):
        self.log_path = log_path
        log_path.touch()
        self.warmup_steps = warmup_steps
        self.step_seconds: list[float] = []
        self._start = 0.0
        self._window: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        elapsed = time.perf_counter() - self._start
        self.step_seconds.append(elapsed)
        self._window.append(elapsed)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "eval_loss" in logs:  # evaluation during training (eval_steps)
            epoch = round(state.epoch or 0.0, 4)
            self._write({"step": state.global_step, "epoch": epoch, "eval_loss": logs["eval_loss"]})
        if "loss" not in logs:
            return
        record = {
            "step": state.global_step,
            "epoch": round(state.epoch or 0.0, 4),
            "loss": logs["loss"],
            "learning_rate": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "step_ms": 1000 * statistics.mean(self._window) if self._window else None,
        }
        record |= {key: value for key, value in logs.items() if key.startswith("sparselora/")}  # the method's own
        self._window = []
        self._write(record)

    def _write(self, record: dict) -> None:
        with self.log_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def median_step_ms(self) -> float:
        timed = self.step_seconds[self.warmup_steps :] or self.step_seconds
        return 1000 * statistics.median(timed) if timed else 0.0


class PeakMemory:
    """Peak memory over a block: CUDA max-allocated on GPU, sampled process RSS on CPU.

    RSS is sampled every 10 ms by a thread (cheap) so the peak belongs to this block, not to
    whatever ran earlier in the process.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.01):
        self.device = device
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def kind(self) -> str:
        return "cuda_max_allocated" if self.device.type == "cuda" else "cpu_peak_rss"

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, psutil.Process().memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20
