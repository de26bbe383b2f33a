"""Exact-forward SparseLoRA's step time against the bound its sparsity allows, with the profile behind it.

Every contender is the real training step of its run config (``sparselora.compare.timing``: the Trainer's
optimiser, autocast in the run's precision), dense LoRA and one ``sparse_pass: backward`` config per
``--point``, timed interleaved in one process (one step each per round, order rotating, after warm-up;
median). Then torch.profiler splits dense LoRA's step into

- the frozen FFN's input-gradient matmuls (backward matmuls with the intermediate width),
- the attention projections' input-gradient matmuls (backward matmuls with hidden × hidden or
  hidden × key/value width weights),
- the FFN's element-wise backward at the intermediate width (the activation's, SwiGLU's product),
- every other matmul (forward, LoRA, heads) and everything else (element-wise, attention kernels,
  optimiser, framework),

and the **bound** of each point is dense LoRA's median step with the FFN's input-gradient matmuls scaled by
the kept fraction (and, where the point drops the frozen q/k/v input gradient, their FLOPs share of the
attention part removed): what the step would take if the kept channels cost exactly their share of the
matmuls and nothing else changed. The FFN-backward bound scales the FFN's element-wise backward too, which
the kept-channels backward also shrinks. Also each contender's activation memory held for the backward
(bytes of the distinct tensors saved by one forward), the weight copies the engine keeps, and the peak RSS
of a fresh process that builds that contender alone and trains 3 steps. Prints a table and writes JSON.

    python benchmarks/sparselora_backward_bound.py --config configs/sst2_sparselora_attn.yaml \\
        --precision fp32 --point ffn75=0.75:0 --point ffn90=0.9:0 --point ffn90_qkv=0.9:0.5 \\
        --out docs/results/sparselora_backward/bound_minilm_fp32.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from sparselora.compare.timing import build_contender, interleaved_step_times, timed_step
from sparselora.config import RunConfig, load_config
from sparselora.methods.sparselora import lora_counterpart
from sparselora.report.markdown import table
from sparselora.training.precision import autocast

MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
PHASES = {"forward", "backward", "optimizer"}


def _phase(event) -> str | None:
    while event is not None and event.name not in PHASES:
        event = event.cpu_parent
    return None if event is None else event.name


def _last_width(event) -> int | None:
    shapes = [tuple(s) for s in event.input_shapes if s]
    return shapes[0][-1] if shapes else None


def _weight_shape(event) -> tuple[int, ...]:
    shapes = [tuple(s) for s in event.input_shapes if len(s) == 2]
    return shapes[-1] if shapes else ()


def split_step(contender, sizes: dict[str, int], steps: int, at_step: int) -> dict[str, float]:
    """Milliseconds per step in each part of the step, from the profiler's self times."""
    hidden, inter, kv = sizes["hidden"], sizes["intermediate"], sizes["kv"]
    parts: dict[str, float] = defaultdict(float)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for i in range(steps):
            timed_step(contender, at_step + i)
    for event in prof.events():
        phase = _phase(event)
        if phase is None or event.name in PHASES:
            continue
        ms = event.self_cpu_time_total / 1000 / steps
        weight = _weight_shape(event)
        if event.name in MATMULS and phase == "backward" and inter in weight:
            parts["ffn_input_grad_mm"] += ms
        elif event.name in MATMULS and phase == "backward" and weight in {(hidden, hidden), (kv, hidden)}:
            parts["attn_input_grad_mm"] += ms
        elif event.name in MATMULS:
            parts["other_mm"] += ms
        elif phase == "backward" and _last_width(event) == inter:
            parts["ffn_elementwise_backward"] += ms  # the activation's (and gate product's) backward, full width
        else:
            parts["other_ops"] += ms
    return dict(parts)


def saved_bytes(contender) -> int:
    """Bytes of the distinct tensors one training forward saves for its backward."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    batch = next(contender.batches)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(contender.device, contender.precision):
        loss = contender.model(**batch).loss
    loss.backward()
    contender.model.zero_grad(set_to_none=True)
    return sum(seen.values())


def peak_rss_mb(config: RunConfig, steps: int = 3) -> float:
    """Peak resident memory of a fresh process that builds one contender and trains ``steps`` steps."""
    with tempfile.TemporaryDirectory(prefix="sparselora-rss-") as scratch:
        contender = build_contender("rss", config, Path(scratch))
        for step in range(steps):
            timed_step(contender, 10 + step)
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the parent into a spawned process
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def _sizes(model) -> dict[str, int]:
    config = model.get_base_model().config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return {"hidden": config.hidden_size, "intermediate": config.intermediate_size, "kv": kv_heads * head_dim}


def build_parser() -> argparse.ArgumentParser:
    """The command line (the docs' command blocks are checked against it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a sparselora run config (model, task, LoRA targets)")
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument(
        "--point", action="append", required=True, help="label=ffn_sparsity:attn_sparsity (backward mode)"
    )
    parser.add_argument("--rule", default="contribution", help="backward_rule of every point")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--rss-steps", type=int, default=3, help="steps of each peak-RSS process (0: none)")
    parser.add_argument("--out", type=Path, required=True)
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()

    common = [
        *args.set,
        f"precision={args.precision}",
        "sparse_pass=backward",
        f"backward_rule={args.rule}",
        "sparse_warmup_ratio=0",
        "sparse_cooldown_ratio=0",
        "progress=false",
    ]
    base = load_config(args.config, common)
    configs: dict[str, RunConfig] = {"lora": lora_counterpart(base)}
    for point in args.point:
        label, _, values = point.partition("=")
        ffn, attn = values.split(":")
        configs[label] = load_config(args.config, [*common, f"ffn_sparsity={ffn}", f"attn_sparsity={attn}"])

    times = interleaved_step_times(configs, args.rounds, args.warmup, progress=True)
    median = {label: statistics.median(values) for label, values in times.items()}

    with tempfile.TemporaryDirectory(prefix="sparselora-bound-") as scratch:
        contenders = {label: build_contender(label, config, Path(scratch)) for label, config in configs.items()}
        sizes = _sizes(contenders["lora"].model)
        splits, memory, kept = {}, {}, {}
        for label, contender in contenders.items():
            timed_step(contender, 10)  # warm (optimiser state, caches) before profiling
            splits[label] = split_step(contender, sizes, args.profile_steps, 11)
            memory[label] = {
                "saved_for_backward_mb": saved_bytes(contender) / 2**20,
                "weight_copies_mb": sum(
                    block._down_weight_t.numel() * block._down_weight_t.element_size() / 2**20
                    for block in getattr(_engine(contender), "ffn", [])
                    if getattr(block, "_down_weight_t", None) is not None
                ),
            }
            engine = _engine(contender)
            kept[label] = engine.configured_kept_fraction() if engine else 1.0

    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:  # one fresh process each
        for label, config in configs.items():
            rss = pool.apply(peak_rss_mb, (config, args.rss_steps)) if args.rss_steps else float("nan")
            memory[label]["peak_rss_mb"] = rss

    dense = splits["lora"]
    total = sum(dense.values())
    shares = {part: ms / total for part, ms in dense.items()}
    qkv_share = (sizes["hidden"] + 2 * sizes["kv"]) / (2 * sizes["hidden"] + 2 * sizes["kv"])
    rows, result_points = [], {}
    for label, config in configs.items():
        if label == "lora":
            continue
        drops_qkv = config.method_options.attn_sparsity > 0
        attn_saving = shares.get("attn_input_grad_mm", 0) * qkv_share if drops_qkv else 0
        bound_ratio = 1 - shares.get("ffn_input_grad_mm", 0) * (1 - kept[label]) - attn_saving
        # the whole FFN backward scaled: its matmuls and its full-width element-wise backward
        block_bound_ratio = bound_ratio - shares.get("ffn_elementwise_backward", 0) * (1 - kept[label])
        bound_ms = median["lora"] * bound_ratio
        result_points[label] = {
            "ffn_kept_fraction": kept[label],
            "drops_qkv_input_grad": drops_qkv,
            "median_ms": median[label],
            "speedup": median["lora"] / median[label],
            "bound_ms": bound_ms,
            "bound_speedup": median["lora"] / bound_ms,
            "time_ratio": median[label] / median["lora"],
            "bound_time_ratio": bound_ratio,
            "block_bound_time_ratio": block_bound_ratio,
            "gap_to_bound": median[label] / median["lora"] - bound_ratio,
        }
        p, mb = result_points[label], memory[label]
        rows.append([
            label, f"{kept[label]:.2f}", "dropped" if drops_qkv else "exact", f"{median[label]:.0f}",
            f"{p['time_ratio']:.3f}", f"{p['bound_time_ratio']:.3f}", f"{p['block_bound_time_ratio']:.3f}",
            f"{p['gap_to_bound']:+.3f}",
            f"{p['speedup']:.2f}×", f"{mb['saved_for_backward_mb']:.0f} (+{mb['weight_copies_mb']:.0f})",
            f"{mb['peak_rss_mb']:.0f}",
        ])  # fmt: skip
    result = {
        "config": args.config,
        "overrides": args.set,
        "precision": args.precision,
        "rule": args.rule,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "sizes": sizes,
        "median_ms": median,
        "times_ms": times,
        "dense_lora_split_ms": dense,
        "dense_lora_shares": shares,
        "splits_ms": splits,
        "memory": memory,
        "points": result_points,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"dense LoRA {median['lora']:.0f} ms/step; its step: " + ", ".join(f"{k} {v:.1%}" for k, v in shares.items()))
    print(
        table(
            ["point", "FFN kept", "q/k/v input grad", "ms/step", "time ratio", "bound (matmuls)",
             "bound (FFN backward)", "gap (matmuls)", "speed-up",
             "saved for backward MB (+copies)", "peak RSS MB"],
            [["lora", "1.00", "exact", f"{median['lora']:.0f}", "1.000", "1.000", "1.000", "", "1.00×",
              f"{memory['lora']['saved_for_backward_mb']:.0f}", f"{memory['lora']['peak_rss_mb']:.0f}"], *rows],
        )
    )  # fmt: skip


def _engine(contender):
    """The SparseLoRA engine behind a contender's callbacks (None for dense LoRA)."""
    return next((getattr(c, "engine", None) for c in contender.callbacks if hasattr(c, "engine")), None)


if __name__ == "__main__":
    main()
