"""Dense LoRA vs SparseLoRA training-step time, in one process, on the same batches.

Alternates one step of each per batch after warm-up and reports the median step time of each,
their ratio, the FLOPs ratio of one step (torch FlopCounterMode), and the share of the
SparseLoRA step spent in the estimator (SVD projection + scoring + top-k, FFN and attention).
Writes JSON. Two kinds of case:

* a run config (packaged model, real data, dynamic padding), e.g.
      python benchmarks/sparselora_speed.py --config configs/sst2_sparselora_attn.yaml --steps 30
* a LLaMA-shaped model with random weights (timing does not depend on weight values), e.g. on a GPU
      python benchmarks/sparselora_speed.py --llama 8b --seq-len 1024 --batch-size 4 --dtype bf16

Runs unchanged on CUDA (timings synchronised around each step) when a GPU is present.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import set_seed

from sparselora.sparse.apply import apply_sparselora
from sparselora.sparse.engine import SparseLoRAEngine, engine_of
from sparselora.sparse.settings import SparseLoRAConfig

# LLaMA 3.x shapes (Llama-3.2-1B, Llama-3.2-3B, Llama-3.1-8B); "tiny" is for tests.
LLAMA_SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
}  # fmt: skip
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Case:
    """What is timed: a dense and a sparse model (possibly one model with the engine toggled) and batches."""

    models: dict[str, nn.Module]
    engine: SparseLoRAEngine
    batches: Iterator[dict[str, torch.Tensor]]
    learning_rate: float
    description: dict


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _use(case: Case, name: str) -> nn.Module:
    """The model for ``name``, with the engine on only for SparseLoRA (matters when both share one model)."""
    case.engine.enabled = name == "sparselora"
    return case.models[name]


def _optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict) -> None:
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _timed_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict, device: torch.device) -> float:
    """Seconds of one training step, with the accelerator's queue drained before and after."""
    _sync(device)
    start = time.perf_counter()
    _step(model, optimizer, batch)
    _sync(device)
    return time.perf_counter() - start


def _step_flops(model: nn.Module, batch: dict) -> int | None:
    """FLOPs of one training step, or None where this torch's counter cannot count an op.

    (torch 2.11's FlopCounterMode rejects grouped-query sdpa, for one.)
    """
    try:
        with FlopCounterMode(display=False) as counter:
            model(**batch).loss.backward()
    except AssertionError as error:
        print(f"FLOPs not counted: {error}")
        return None
    finally:
        model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def _instrument_estimator(engine: SparseLoRAEngine, device: torch.device) -> tuple[list[float], Callable[[], None]]:
    """Wrap every block's ``select`` to accumulate its wall time; returns (seconds, undo).

    The synchronisation this needs would distort the step times on a GPU, so it is only installed
    for separate steps after the timed ones.
    """
    spent = [0.0]
    blocks = [block for block in [*engine.ffn, *engine.attention] if hasattr(block, "select")]
    for block in blocks:

        def timed(*args, _select=block.select):
            _sync(device)
            start = time.perf_counter()
            chosen = _select(*args)
            _sync(device)
            spent[0] += time.perf_counter() - start
            return chosen

        block.select = timed

    def undo() -> None:
        for block in blocks:
            del block.select

    return spent, undo


# cases --------------------------------------------------------------------------------------------
def config_case(config_path: str, overrides: list[str], device: torch.device) -> Case:
    """A run config's model and real training batches; dense and sparse are two copies of one init."""
    from sparselora.config import load_config
    from sparselora.methods import get_method
    from sparselora.methods.sparselora import lora_counterpart
    from sparselora.training.inputs import load_inputs

    config = load_config(config_path, [*overrides, "progress=false"])
    if config.method != "sparselora":
        raise SystemExit(f"--config must use method: sparselora, got '{config.method}'")
    set_seed(config.seed)
    inputs = load_inputs(config)
    base, new_modules = inputs.load_base_model()
    lora_config = lora_counterpart(config)
    dense = get_method("lora").build(copy.deepcopy(base), inputs.build_context(new_modules, lora_config)).model
    sparse_setup = get_method("sparselora").build(base, inputs.build_context(new_modules))
    sparse_setup.model.load_state_dict(dense.state_dict())  # identical LoRA init and head
    loader = inputs.train_loader()

    def batches() -> Iterator[dict]:
        while True:
            for batch in loader:
                yield {k: v.to(device) for k, v in batch.items()}

    return Case(
        models={"lora": dense.to(device), "sparselora": sparse_setup.model.to(device)},
        engine=engine_of(sparse_setup.model),
        batches=batches(),
        learning_rate=config.learning_rate,
        description={
            "config": config_path,
            "overrides": overrides,
            "model": config.model,
            "task": config.task,
            "batch_size": config.batch_size,
            "dtype": "fp32",
        },
    )


def llama_case(args: argparse.Namespace, device: torch.device) -> Case:
    """A LLaMA-shaped decoder with random weights and random token batches.

    One model serves both contenders (the engine is switched off for dense LoRA), so an 8B model
    fits once in memory. Each sequence's last ``output_fraction`` tokens are trained labels (the
    answer of an instruction-tuning example), the rest context; with ``dense_output_tokens`` the
    answer tokens run dense, as SparseLoRA prescribes for decoders.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(args.seed)
    shape = LLAMA_SHAPES[args.llama]
    with torch.device(device):
        base = AutoModelForCausalLM.from_config(
            LlamaConfig(**shape, use_cache=False), dtype=DTYPES[args.dtype], attn_implementation="sdpa"
        )
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules=targets)
    # PEFT's default keeps adapters in fp32 over a bf16 base; "base" keeps them in the base dtype
    model = get_peft_model(base, lora, autocast_adapter_dtype=args.adapter_dtype == "fp32")
    layers = shape["num_hidden_layers"]
    dense_layers = sorted({0, 1, layers - 1})  # the paper's recipe: first layers and the last stay dense
    sparse_config = SparseLoRAConfig(
        svd_rank=args.svd_rank,
        ffn_sparsity=args.ffn_sparsity,
        attn_sparsity=args.attn_sparsity,
        layer_sparsity={f"layers.{i}.{part}": 0.0 for i in dense_layers for part in ("mlp", "attn")},
        dense_output_tokens=args.output_fraction < 1.0,
    )
    name = f"llama-{args.llama}-random-seed{args.seed}-{args.dtype}"  # SVD cache key: a rerun loads the factors
    engine = apply_sparselora(model, sparse_config, model_name=name, progress=False)
    context = round(args.seq_len * (1 - args.output_fraction))

    def batches() -> Iterator[dict]:
        while True:
            ids = torch.randint(0, shape["vocab_size"], (args.batch_size, args.seq_len), device=device)
            labels = ids.clone()
            labels[:, :context] = -100
            yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    return Case(
        models={"lora": model, "sparselora": model},
        engine=engine,
        batches=batches(),
        learning_rate=1e-4,
        description={
            "model": f"LLaMA {args.llama} shape, random weights",
            "parameters": sum(p.numel() for p in base.parameters()),
            "shape": shape,
            "dtype": args.dtype,
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "output_fraction": args.output_fraction,
            "lora": {"r": args.lora_r, "targets": targets, "adapter_dtype": args.adapter_dtype},
        },
    )


# measurement --------------------------------------------------------------------------------------
def measure(case: Case, device: torch.device, warmup: int, steps: int, estimator_steps: int) -> dict:
    optimizers = {name: _optimizer(model, case.learning_rate) for name, model in case.models.items()}
    for model in case.models.values():
        model.train()
    first = next(case.batches)
    # as in training: outlier channels calibrated on a dense batch, then sparse (warm-up skipped)
    case.engine.calibrate_outliers(_use(case, "sparselora"), [first])
    case.engine.start_sparse_now()
    flops = {name: _step_flops(_use(case, name), first) for name in case.models}

    times: dict[str, list[float]] = {name: [] for name in case.models}
    tokens = []
    for step in range(warmup + steps):
        batch = next(case.batches)
        order = list(case.models) if step % 2 == 0 else list(reversed(case.models))  # alternate who goes first
        for name in order:
            elapsed = _timed_step(_use(case, name), optimizers[name], batch, device)
            if step >= warmup:
                times[name].append(elapsed)
        if step >= warmup:
            tokens.append(int(batch["attention_mask"].sum()))

    spent, undo = _instrument_estimator(case.engine, device)
    shares = []
    for _ in range(estimator_steps):
        spent[0] = 0.0
        elapsed = _timed_step(_use(case, "sparselora"), optimizers["sparselora"], next(case.batches), device)
        shares.append(spent[0] / elapsed)
    undo()

    median = {name: 1000 * statistics.median(values) for name, values in times.items()}
    return {
        "timed_steps": steps,
        "warmup_steps": warmup,
        "median_tokens_per_batch": statistics.median(tokens),
        "median_step_ms": median,
        "speedup": median["lora"] / median["sparselora"],
        "flops_per_step": flops,
        "flops_ratio_sparse_over_dense": flops["sparselora"] / flops["lora"] if all(flops.values()) else None,
        "kept_ffn_fraction": case.engine.configured_kept_fraction(),
        "estimator_share_of_step_median": statistics.median(shares) if shares else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def profile(case: Case, device: torch.device, steps: int) -> dict:
    """Where each contender's step time goes (torch.profiler): busy accelerator time and the top ops.

    On a GPU, busy time well under the step's wall time means the step is bound by launches and
    Python, not arithmetic; that is what limits a FLOPs reduction's speed-up.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    report = {}
    for name in case.models:
        model = _use(case, name)
        optimizer = _optimizer(model, case.learning_rate)
        batches = [next(case.batches) for _ in range(steps)]
        _step(model, optimizer, batches[0])  # optimizer state exists before profiling
        _sync(device)
        with torch_profile(activities=activities) as prof:
            start = time.perf_counter()
            for batch in batches:
                _step(model, optimizer, batch)
            _sync(device)
            wall = (time.perf_counter() - start) / steps
        field = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        kind = DeviceType.CUDA if device.type == "cuda" else DeviceType.CPU
        # kernels only: an op's device time is also reported on the op that launched it
        events = sorted(
            (e for e in prof.key_averages() if e.device_type == kind), key=lambda e: getattr(e, field), reverse=True
        )
        busy = sum(getattr(e, field) for e in events) / 1000 / steps
        report[name] = {
            "wall_ms_per_step": 1000 * wall,
            "busy_ms_per_step": busy,
            "top_ops": [
                {"op": e.key, "ms_per_step": getattr(e, field) / 1000 / steps, "calls_per_step": e.count / steps}
                for e in events[:15]
            ],
        }
    return report


def build_parser() -> argparse.ArgumentParser:
    """The command line (the docs' command blocks are checked against it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/sst2_sparselora.yaml", help="a sparselora run config")
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    parser.add_argument("--llama", choices=sorted(LLAMA_SHAPES), help="time a random-weight LLaMA shape instead")
    parser.add_argument("--seq-len", type=int, default=1024, help="--llama: tokens per sequence")
    parser.add_argument("--batch-size", type=int, default=4, help="--llama: sequences per batch")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="--llama: weight dtype")
    parser.add_argument(
        "--output-fraction", type=float, default=0.25, help="--llama: trained (answer) share of each sequence"
    )
    parser.add_argument("--ffn-sparsity", type=float, default=0.75, help="--llama")
    parser.add_argument("--attn-sparsity", type=float, default=0.5, help="--llama")
    parser.add_argument("--svd-rank", type=int, default=8, help="--llama")
    parser.add_argument("--lora-r", type=int, default=16, help="--llama")
    parser.add_argument(
        "--adapter-dtype", choices=["fp32", "base"], default="fp32", help="--llama: LoRA weights' dtype (PEFT: fp32)"
    )
    parser.add_argument("--seed", type=int, default=0, help="--llama")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps of each model first")
    parser.add_argument("--steps", type=int, default=30, help="timed steps of each model")
    parser.add_argument("--estimator-steps", type=int, default=3, help="extra sparse steps timing the estimator")
    parser.add_argument("--profile", type=int, default=0, help="also profile this many steps of each (torch.profiler)")
    parser.add_argument("--out", default="runs/benchmarks/sparselora_speed.json")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if not 0 < args.output_fraction <= 1:
        parser.error(f"--output-fraction must be in (0, 1], got {args.output_fraction}")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    case = llama_case(args, device) if args.llama else config_case(args.config, args.set, device)
    result = {
        **case.description,
        "device": torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        **measure(case, device, args.warmup, args.steps, args.estimator_steps),
        "sparselora": case.engine.measurements(),
    }
    if args.profile:
        result["profile"] = profile(case, device, args.profile)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    median = result["median_step_ms"]
    share, flops_ratio = result["estimator_share_of_step_median"], result["flops_ratio_sparse_over_dense"]
    print(
        f"dense LoRA {median['lora']:.1f} ms/step | SparseLoRA {median['sparselora']:.1f} ms/step | "
        f"speedup {result['speedup']:.3f}x | FLOPs ratio {'n/a' if flops_ratio is None else f'{flops_ratio:.3f}'} | "
        f"estimator {'n/a' if share is None else f'{100 * share:.1f}%'} of the step | → {args.out}"
    )


if __name__ == "__main__":
    main()
