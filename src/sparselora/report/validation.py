"""validation.md: each method's ratio to the reference against the comparison's targets, PASS/FAIL."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from sparselora.compare.plan import CompareConfig, Target
from sparselora.report.markdown import table
from sparselora.report.results import is_noisy

NOT_MEASURED_NOTE = (
    "NOT MEASURED (spread): the speed column's spread over seeds is above 25% of its mean (the cells shared the"
    " machine), so no verdict is drawn from it; a target on `ms_per_step_interleaved` (the `timing:` pass) judges it."
)


@dataclass(frozen=True)
class Check:
    label: str
    target: Target
    reference: str
    ratio: float | None  # None: a value is missing (failed or absent runs)
    noisy: bool = False  # a speed ratio from a column whose spread says the machine was busy

    @property
    def verdict(self) -> str:
        if self.ratio is None:
            return "MISSING"
        if self.noisy:
            return "NOT MEASURED (spread)"
        low_ok = self.target.min_ratio is None or self.ratio >= self.target.min_ratio
        high_ok = self.target.max_ratio is None or self.ratio <= self.target.max_ratio
        return "PASS" if low_ok and high_ok else "FAIL"

    @property
    def bound(self) -> str:
        parts = []
        if self.target.min_ratio is not None:
            parts.append(f"≥ {self.target.min_ratio:g}")
        if self.target.max_ratio is not None:
            parts.append(f"≤ {self.target.max_ratio:g}")
        return " and ".join(parts)


def checks(summary: pd.DataFrame, config: CompareConfig) -> list[Check]:
    by_label = summary.set_index("label")
    results = []
    for target in config.targets:
        reference = target.reference or config.reference
        for label in target.methods or [m for m in config.methods if m != reference]:
            ratio, noisy = None, False
            column = f"{target.metric}_mean"
            if label in by_label.index and reference in by_label.index and column in by_label:
                value, ref = by_label.at[label, column], by_label.at[reference, column]
                if not (pd.isna(value) or pd.isna(ref) or ref == 0):
                    ratio = float(value / ref)
                spread = f"{target.metric}_std"
                noisy = spread in by_label and any(
                    is_noisy(by_label.at[name, column], by_label.at[name, spread], target.metric)
                    for name in (label, reference)
                )
            results.append(Check(label, target, reference, ratio, noisy))
    return results


def validation_markdown(task: str, summary: pd.DataFrame, config: CompareConfig) -> str:
    found = checks(summary, config)
    if not found:
        return f"## {task}\n\nNo targets in the comparison config.\n"
    rows = [
        [
            check.label,
            f"{check.target.metric} / {check.reference}",
            "–" if check.ratio is None or math.isnan(check.ratio) else f"{check.ratio:.3f}",
            check.bound,
            check.verdict,
        ]
        for check in found
    ]
    header = ["Method", "Metric", "Ratio to reference", "Target", "Result"]
    passed = sum(c.verdict == "PASS" for c in found)
    lines = [f"## {task}", "", table(header, rows), "", f"{passed} of {len(found)} checks pass."]
    if any(c.noisy for c in found):
        lines += ["", NOT_MEASURED_NOTE]
    return "\n".join([*lines, ""])
