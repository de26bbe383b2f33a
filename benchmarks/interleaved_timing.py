"""Some methods of a comparison timed interleaved, without training its cells first.

The same pass as a comparison's ``timing:`` key (``sparselora.compare.timing``: every method's real training
step, one per round on the same batch, order rotating, schedule-aware, after warm-up), for the methods named,
so that a few re-run cells can be timed next to methods whose cells were run before. Run it alone on the
machine. Writes the comparison's timing JSON format.

    python benchmarks/interleaved_timing.py configs/compare_gsm8k_smollm2.yaml \\
        --methods lora,sparselora,sparselora_bwd75 --out docs/results/decoders_smollm2/gsm8k_token_rule/timing.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sparselora.compare.plan import load_compare_config
from sparselora.compare.timing import time_task


def build_parser() -> argparse.ArgumentParser:
    """The command line (the docs' command blocks are checked against it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a comparison YAML")
    parser.add_argument("--methods", required=True, help="comma-separated method labels of the comparison")
    parser.add_argument("--task", help="default: the comparison's first task")
    parser.add_argument("--out", type=Path, required=True)
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    config = load_compare_config(args.config)
    labels = args.methods.split(",")
    unknown = [label for label in labels if label not in config.methods]
    if unknown:
        parser.error(f"--methods: {', '.join(unknown)} not in {args.config} (methods: {', '.join(config.methods)})")
    summary = time_task(config, args.task or config.tasks[0], labels)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    for label, entry in summary["methods"].items():
        print(f"{label}: median {entry['median_ms']:.0f} ms ({entry['median_ratio']:.3f} of {config.reference}), "
              f"mean ratio {entry['mean_ratio']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
