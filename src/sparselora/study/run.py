"""The SVD-vs-random study as one call: the plan of each phase (full or quick), recorded, then run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from sparselora.files.atomic import atomic_write_json
from sparselora.files.paths import check_writable_folder
from sparselora.study.finetune import FinetunePlan, run_phase_c
from sparselora.study.report import write_report
from sparselora.study.synthetic import SyntheticPlan, run_phase_a
from sparselora.study.weights import WeightsPlan, run_phase_b

PHASES = ("a", "b", "c")


def plans(quick: bool, models: tuple[str, ...] | None, finetune_model: str) -> dict[str, object]:
    """Each phase's plan: full sizes, or the minutes-long ``quick`` sizes the tests use."""
    weights = WeightsPlan(
        models=models or (("minilm",) if quick else ("minilm", "smollm2")),
        **({"analysis_batches": 1, "random_draws": 10} if quick else {}),
    )
    return {
        "a": SyntheticPlan.quick() if quick else SyntheticPlan(),
        "b": weights,
        "c": FinetunePlan.quick(finetune_model) if quick else FinetunePlan(model=finetune_model),
    }


def run_study(
    out: Path, phases: set[str], quick: bool, models: tuple[str, ...] | None = None, finetune_model: str = "minilm"
) -> Path:
    """Run the chosen phases into ``out`` and rebuild its report; plan.json keeps what each phase ran with."""
    unknown = phases - set(PHASES)
    if unknown:
        raise ValueError(f"--phase must be a, b, c or all, got {sorted(unknown)}")
    check_writable_folder(out, "--out")
    chosen = plans(quick, models, finetune_model)
    plan_path = out / "plan.json"
    plan = (json.loads(plan_path.read_text()) if plan_path.is_file() else {}) | {"quick": quick}
    plan |= {f"phase_{name}": dataclasses.asdict(chosen[name]) for name in PHASES if name in phases}
    atomic_write_json(plan_path, plan)
    runners = {"a": run_phase_a, "b": run_phase_b, "c": run_phase_c}
    for name in PHASES:
        if name in phases:
            runners[name](out, chosen[name])
    return write_report(out)
