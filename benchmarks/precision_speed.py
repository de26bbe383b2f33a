"""Training-step time of one run config in two precisions (default fp32 vs bf16), alternating, in one process.

Each precision's model is built as ``sparselora train`` builds it (``precision`` key: the base loaded in that
dtype, trainable weights fp32, the step under autocast), from the same seed, and both train on the same
batches; one step of each per batch after warm-up, the order alternating, median of each. Writes JSON:

    python benchmarks/precision_speed.py --config configs/sst2_lora.yaml --steps 20 --out runs/benchmarks/prec.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import set_seed

from sparselora.config import load_config
from sparselora.training.environment import describe_environment
from sparselora.training.inputs import load_inputs
from sparselora.training.precision import autocast


def build(config_path: str, overrides: list[str], precision: str):
    """(model, optimizer, inputs) of the config at ``precision``, exactly as training builds them."""
    config = load_config(config_path, [*overrides, f"precision={precision}", "progress=false"])
    set_seed(config.seed)
    inputs = load_inputs(config)
    model = inputs.build_method().model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    return model, optimizer, inputs


def timed_step(model, optimizer, batch: dict, inputs) -> float:
    start = time.perf_counter()
    with autocast(inputs.device, inputs.precision):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def build_parser() -> argparse.ArgumentParser:
    """The command line (the docs' command blocks are checked against it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a sparselora run config")
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    parser.add_argument("--precisions", nargs=2, default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/precision_speed.json"))
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()

    contenders = {precision: build(args.config, args.set, precision) for precision in args.precisions}
    first, second = args.precisions
    loader = contenders[first][2].train_loader()
    batches = iter(loader)
    times: dict[str, list[float]] = {precision: [] for precision in args.precisions}
    for step in range(args.warmup + args.steps):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        order = args.precisions if step % 2 == 0 else args.precisions[::-1]
        for precision in order:
            model, optimizer, inputs = contenders[precision]
            elapsed = timed_step(model, optimizer, {k: v.to(inputs.device) for k, v in batch.items()}, inputs)
            if step >= args.warmup:
                times[precision].append(elapsed)
        print(f"step {step + 1}/{args.warmup + args.steps}", end="\r", flush=True)

    median = {precision: 1000 * statistics.median(values) for precision, values in times.items()}
    config = contenders[first][2].config
    result = {
        "config": args.config,
        "overrides": args.set,
        "model": config.model,
        "method": config.method,
        "batch_size": config.batch_size,
        "device": str(contenders[first][2].device),
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "median_step_ms": median,
        f"{second}_over_{first}": median[second] / median[first],
        "environment": describe_environment(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(
        f"{config.model} {config.method}: {first} {median[first]:.1f} ms/step | {second} {median[second]:.1f} ms/step "
        f"| {second}/{first} time {median[second] / median[first]:.3f} | → {args.out}"
    )


if __name__ == "__main__":
    main()
