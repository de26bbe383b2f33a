"""Dense LoRA vs SparseLoRA training-step time, in one process, on the same real batches.

Alternates one step of each model per batch after warm-up and reports the median step time of
each, their ratio, the FLOPs ratio of one step (torch FlopCounterMode), and the share of the
SparseLoRA step spent in the estimator (SVD projection + scoring + top-k). Writes JSON.

    python benchmarks/sparselora_speed.py --config configs/sst2_sparselora.yaml --steps 30
    python benchmarks/sparselora_speed.py --config configs/sst2_sparselora.yaml --set ffn_sparsity=0.9

Runs unchanged on CUDA (synchronised timings) when a GPU is present.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import set_seed

from sparselora.config import build_config, load_config
from sparselora.methods import BuildContext, get_method
from sparselora.pipeline import load_inputs
from sparselora.sparse.engine import SparseLoRAEngine


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(model, optimizer, batch) -> None:
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _step_flops(model, batch) -> int:
    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def _time_estimator(engine: SparseLoRAEngine, device: torch.device) -> list[float]:
    """Wrap each layer's ``select`` to accumulate its wall time (seconds) per step."""
    spent = [0.0]
    for layer in engine.ffn:
        select = layer.select

        def timed(x, _select=select):
            _sync(device)
            start = time.perf_counter()
            keep = _select(x)
            _sync(device)
            spent[0] += time.perf_counter() - start
            return keep

        layer.select = timed
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/sst2_sparselora.yaml", help="a sparselora run config")
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps of each model first")
    parser.add_argument("--steps", type=int, default=30, help="timed steps of each model")
    parser.add_argument("--out", default="runs/benchmarks/sparselora_speed.json")
    args = parser.parse_args()

    config = load_config(args.config, [*args.set, "progress=false"])
    if config.method != "sparselora":
        raise SystemExit(f"--config must use method: sparselora, got '{config.method}'")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    set_seed(config.seed)
    inputs = load_inputs(config)
    base, new_modules = inputs.load_base_model()
    context = BuildContext(config=config, arch=inputs.arch, head=inputs.head, new_modules=tuple(new_modules))

    lora_config = build_config(
        {k: v for k, v in config.to_flat_dict().items() if k in _lora_keys()} | {"method": "lora"}
    )
    dense = (
        get_method("lora")
        .build(copy.deepcopy(base), BuildContext(lora_config, inputs.arch, inputs.head, context.new_modules))
        .model
    )
    sparse_setup = get_method("sparselora").build(base, context)
    sparse = sparse_setup.model
    engine: SparseLoRAEngine = sparse_setup.callbacks[0].engine
    sparse.load_state_dict(dense.state_dict())  # identical LoRA init and head: only the computation differs

    models = {"lora": dense.to(device).train(), "sparselora": sparse.to(device).train()}
    optimizers = {
        name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=config.learning_rate)
        for name, m in models.items()
    }
    loader = inputs.train_loader()
    batches = iter(loader)

    flops_batch = {k: v.to(device) for k, v in next(iter(loader)).items()}
    # as in training: outlier channels calibrated on dense batches, then sparse (warm-up skipped)
    engine.calibrate_outliers(sparse, [flops_batch])
    engine.start_sparse_now()
    flops = {name: _step_flops(model, flops_batch) for name, model in models.items()}
    estimator_seconds = _time_estimator(engine, device)
    times: dict[str, list[float]] = {name: [] for name in models}
    estimator_share: list[float] = []
    tokens = []
    for step in range(args.warmup + args.steps):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        batch = {k: v.to(device) for k, v in batch.items()}
        order = list(models) if step % 2 == 0 else list(reversed(models))  # alternate who goes first
        for name in order:
            estimator_seconds[0] = 0.0
            _sync(device)
            start = time.perf_counter()
            _step(models[name], optimizers[name], batch)
            _sync(device)
            elapsed = time.perf_counter() - start
            if step >= args.warmup:
                times[name].append(elapsed)
                if name == "sparselora":
                    estimator_share.append(estimator_seconds[0] / elapsed)
        if step >= args.warmup:
            tokens.append(int(batch["attention_mask"].sum()))

    median = {name: 1000 * statistics.median(values) for name, values in times.items()}
    result = {
        "config": args.config,
        "overrides": args.set,
        "model": config.model,
        "task": config.task,
        "device": torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "batch_size": config.batch_size,
        "timed_steps": args.steps,
        "warmup_steps": args.warmup,
        "median_tokens_per_batch": statistics.median(tokens),
        "median_step_ms": median,
        "speedup": median["lora"] / median["sparselora"],
        "flops_per_step": flops,
        "flops_ratio_sparse_over_dense": flops["sparselora"] / flops["lora"],
        "kept_ffn_fraction": engine.kept_fraction(),
        "estimator_share_of_step_median": statistics.median(estimator_share),
        "sparselora": engine.report(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"dense LoRA {median['lora']:.1f} ms/step | SparseLoRA {median['sparselora']:.1f} ms/step | "
        f"speedup {result['speedup']:.3f}x | FLOPs ratio {result['flops_ratio_sparse_over_dense']:.3f} | "
        f"estimator {100 * result['estimator_share_of_step_median']:.1f}% of the step | → {args.out}"
    )


def _lora_keys() -> set[str]:
    from sparselora.config import RunConfig
    from sparselora.methods.lora import LoraOptions

    return (set(RunConfig.model_fields) - {"method_options", "method"}) | set(LoraOptions.model_fields)


if __name__ == "__main__":
    main()
