"""Phase C: LoRA prune → (recover →) evaluate, with SVD, magnitude and random importance.

For each LoRA setting (targets × rank) one adapter is trained on SST-2 with the ordinary training
loop. Its adapter is then pruned again and again from the same trained weights — rank components
or input columns, at several keep fractions, by each importance — and evaluated on SST-2
validation. Random importance is drawn ``random_repeats`` times in the main setting and
``other_random_repeats`` times elsewhere, so SVD and magnitude (deterministic) are tested against
the distribution of random draws. A subset is also recovered for a few steps with the pruning
mask held fixed, timing each step.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

from sparselora.config import build_config
from sparselora.files.atomic import atomic_write_csv
from sparselora.methods.lora_prune import apply_masks
from sparselora.study.stats import against_distribution

TARGETS = {"attn_qv": ("q", "v"), "ffn": ("up", "down")}


class HoldMasks(TrainerCallback):
    """Keep a fixed pruning mask through training: re-applied after every optimiser step."""

    def __init__(self, weights: list[torch.Tensor], masks: list[torch.Tensor]):
        self.weights, self.masks = weights, masks

    def on_optimizer_step(self, args, state, control, **kwargs):
        apply_masks(self.weights, self.masks)


@dataclass(frozen=True)
class FinetunePlan:
    model: str = "minilm"
    ranks: tuple[int, ...] = (4, 8, 16)
    keeps: tuple[float, ...] = (0.25, 0.5, 0.75)
    main_rank: int = 8
    main_structure: str = "rank"
    column_ranks: tuple[int, ...] = (8,)  # column pruning is run at these ranks
    ablation_targets: tuple[str, ...] = ("ffn",)  # besides attn_qv, at main_rank, rank structure
    random_repeats: int = 30
    other_random_repeats: int = 3
    recovery_steps: int = 10
    recovery_random_repeats: int = 5
    train_keys: dict[str, Any] = field(
        default_factory=lambda: {
            "task": "sst2",
            "max_train_samples": 2000,
            "max_steps": 100,
            "batch_size": 32,
            "learning_rate": 1e-3,
            "warmup_ratio": 0.06,
            "weight_decay": 0.01,
            "max_eval_samples": 300,
            "eval_batch_size": 64,
            "progress": False,
        }
    )
    seed: int = 0

    @classmethod
    def quick(cls, model: str) -> FinetunePlan:
        keys = cls().train_keys | {"max_train_samples": 64, "max_steps": 4, "max_eval_samples": 32, "batch_size": 16}
        return cls(
            model=model,
            ranks=(4,),
            keeps=(0.5,),
            main_rank=4,
            column_ranks=(4,),
            ablation_targets=(),
            random_repeats=5,
            other_random_repeats=3,
            recovery_steps=2,
            recovery_random_repeats=2,
            train_keys=keys,
        )


@dataclass(frozen=True)
class Setting:
    targets: str
    rank: int
    structure: str
    recover: bool

    def random_repeats(self, plan: FinetunePlan) -> int:
        if self.recover:
            return plan.recovery_random_repeats
        main = self.targets == "attn_qv" and self.rank == plan.main_rank and self.structure == plan.main_structure
        return plan.random_repeats if main else plan.other_random_repeats


def settings(plan: FinetunePlan) -> list[Setting]:
    grid = [Setting("attn_qv", r, "rank", False) for r in plan.ranks]
    grid += [Setting("attn_qv", r, "column", False) for r in plan.column_ranks]
    grid += [Setting(t, plan.main_rank, "rank", False) for t in plan.ablation_targets]
    grid.append(Setting("attn_qv", plan.main_rank, plan.main_structure, True))
    return grid


def _target_names(model_name: str, roles: tuple[str, ...]) -> list[str]:
    from sparselora.models import find_arch, load_model, load_tokenizer, resolve_model, target_module_names

    source = resolve_model(model_name)
    model, _ = load_model(source, "sequence_classification", load_tokenizer(source), num_labels=2)
    return target_module_names(model, find_arch(model.config.model_type), roles)


def train_adapter(plan: FinetunePlan, targets: str, rank: int, runs: Path) -> Path:
    """The LoRA run every pruning of this setting starts from (reused when already trained)."""
    from sparselora.training.loop import train

    name = f"{targets}_r{rank}"
    if (runs / name / "metrics.json").is_file():
        return runs / name
    keys = plan.train_keys | {"model": plan.model, "method": "lora", "lora_r": rank, "lora_alpha": 2 * rank}
    keys |= {"seed": plan.seed, "name": name, "output_dir": str(runs)}
    if targets != "attn_qv":
        keys["target_modules"] = _target_names(plan.model, TARGETS[targets])
    return train(build_config(keys))


class PrunableAdapter:
    """A trained adapter that can be pruned, recovered and evaluated repeatedly from the same weights."""

    def __init__(self, run_dir: Path):
        from sparselora.evaluation.rerun import load_trained
        from sparselora.run_folder.layout import read_run
        from sparselora.training.inputs import load_inputs

        self.config = build_config(read_run(run_dir)[0])
        self.inputs = load_inputs(self.config)
        self.model = load_trained(run_dir, self.inputs)
        self.trained = {k: v.detach().clone() for k, v in self.model.state_dict().items() if "lora_" in k}

    def reset(self) -> None:
        self.model.load_state_dict(self.trained, strict=False)

    def evaluate(self) -> dict[str, float]:
        from sparselora.training.loop import run_evaluation

        return run_evaluation(self.model, self.inputs).metrics

    def recover(self, weights: list[torch.Tensor], masks: list[torch.Tensor], steps: int, seed: int) -> float:
        """Fine-tune the pruned adapter ``steps`` steps with the mask held (the HF Trainer, as `lora_prune`'s
        recovery runs), at 0.3 × the run's learning rate, constant; returns the median ms/step."""
        from transformers import PrinterCallback, Trainer, TrainingArguments

        from sparselora.training.measure import StepTimer

        for name, param in self.model.named_parameters():
            param.requires_grad_("lora_" in name)
        with tempfile.TemporaryDirectory() as scratch:
            args = TrainingArguments(
                output_dir=scratch,
                max_steps=steps,
                per_device_train_batch_size=self.config.batch_size,
                learning_rate=self.config.learning_rate * 0.3,
                lr_scheduler_type="constant",
                seed=seed,
                save_strategy="no",
                report_to="none",
                disable_tqdm=True,
                use_cpu=not torch.cuda.is_available(),
                remove_unused_columns=False,
                label_names=["labels"],
            )
            timer = StepTimer(Path(scratch) / "steps.jsonl", warmup_steps=0)
            trainer = Trainer(
                model=self.model,
                args=args,
                train_dataset=self.inputs.data.train,
                data_collator=self.inputs.data.train_collator,
                callbacks=[HoldMasks(weights, masks), timer],
            )
            trainer.remove_callback(PrinterCallback)  # one recovery among many: no summary line each
            trainer.train()
        self.model.eval()
        return timer.median_step_ms()


def run_phase_c(out: Path, plan: FinetunePlan, progress: bool = True) -> pd.DataFrame:
    """Write phase_c/results.csv (one row per pruned evaluation), stats.csv, training.csv and figures."""
    from sparselora.methods.lora_prune import prune_adapters
    from sparselora.study.plots import plot_phase_c

    folder = out / "phase_c"
    runs = folder / "runs"
    grid = settings(plan)
    adapters = sorted({(s.targets, s.rank) for s in grid})
    training = []
    for targets, rank in tqdm(adapters, desc="phase C: train adapters", disable=not progress):
        run = train_adapter(plan, targets, rank, runs)
        training.append({"targets": targets, "lora_r": rank, "run": str(run), **_run_summary(run)})
    atomic_write_csv(pd.DataFrame(training), folder / "training.csv")

    jobs = [
        (setting, keep, importance, repeat)
        for setting in grid
        for keep in plan.keeps
        for importance in ("svd", "magnitude", "random")
        for repeat in range(setting.random_repeats(plan) if importance == "random" else 1)
    ]
    rows = []
    loaded: dict[tuple[str, int], PrunableAdapter] = {}
    for setting, keep, importance, repeat in tqdm(jobs, desc="phase C: prune and evaluate", disable=not progress):
        key = (setting.targets, setting.rank)
        if key not in loaded:
            loaded.clear()  # one model in memory at a time
            loaded[key] = PrunableAdapter(runs / f"{setting.targets}_r{setting.rank}")
            unpruned = loaded[key].evaluate()
            rows.append(_row(setting, 1.0, "none", 0, unpruned, 0.0))
        adapter = loaded[key]
        adapter.reset()
        generator = torch.Generator().manual_seed(plan.seed * 1000 + repeat)
        weights, masks = prune_adapters(adapter.model, 1 - keep, setting.structure, importance, generator=generator)
        step_ms = adapter.recover(weights, masks, plan.recovery_steps, plan.seed + repeat) if setting.recover else 0.0
        rows.append(_row(setting, keep, importance, repeat, adapter.evaluate(), step_ms))
        if len(rows) % 25 == 0:  # an interrupted phase keeps what it measured
            atomic_write_csv(pd.DataFrame(rows), folder / "results.partial.csv")
    results = pd.DataFrame(rows)
    atomic_write_csv(results, folder / "results.csv")
    summary = phase_c_stats(results)
    atomic_write_csv(summary, folder / "stats.csv")
    pruned = results[results["importance"] != "none"]
    for recover, name in ((False, "accuracy"), (True, "accuracy_recovered")):
        subset = pruned[pruned["recovered"] == recover]
        if not subset.empty:
            plot_phase_c(subset.rename(columns={"accuracy": name}), name, folder)
    return summary


def _row(setting: Setting, keep: float, importance: str, repeat: int, metrics: dict, step_ms: float) -> dict:
    return {
        "targets": setting.targets,
        "lora_r": setting.rank,
        "structure": setting.structure,
        "recovered": setting.recover,
        "keep": keep,
        "importance": importance,
        "repeat": repeat,
        "accuracy": metrics["accuracy"],
        "eval_loss": metrics["eval_loss"],
        "recovery_ms_per_step": step_ms,
    }


def _run_summary(run: Path) -> dict[str, float]:
    from sparselora.run_folder.layout import read_run

    metrics = read_run(run)[1]
    return {
        "accuracy": metrics["task_metrics"]["accuracy"],
        "ms_per_step": metrics["train"]["median_step_ms"],
        "steps": metrics["train"]["steps"],
        "trainable_params": metrics["params"]["trainable"],
    }


def phase_c_stats(results: pd.DataFrame) -> pd.DataFrame:
    """SVD and magnitude vs the distribution of random draws, per setting and keep fraction."""
    rows = []
    keys = ["targets", "lora_r", "structure", "recovered", "keep"]
    for values, group in results[results["importance"] != "none"].groupby(keys):
        random = group[group["importance"] == "random"]
        for importance in ("svd", "magnitude"):
            chosen = group[group["importance"] == importance]
            if chosen.empty or random.empty:
                continue
            for measure in ("accuracy", "eval_loss"):
                test = against_distribution(float(chosen[measure].iloc[0]), random[measure])
                rows.append(
                    dict(zip(keys, values, strict=True)) | {"importance": importance, "measure": measure, **test}
                )
    return pd.DataFrame(rows)
