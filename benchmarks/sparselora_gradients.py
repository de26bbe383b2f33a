"""Gradient fidelity of exact-forward SparseLoRA: how close its LoRA gradients are to dense LoRA's.

Dense LoRA first trains ``--warm-steps`` steps (at initialisation B = 0, so every A gradient is zero and
there is nothing to compare). Then, on the next real training batches (same dropout masks: the forward is
exact), the LoRA gradients (A and B of every adapter; the head, above every sparse backward, is exact and
left out) of ``sparse_pass: backward`` at each rule and sparsity are compared with dense LoRA's: cosine
similarity and relative L2 error of all of them together, the mean and lowest cosine per adapted module,
and the cosine per layer (one layer's sparse backward errs for every layer below it: the per-layer cosine
shows how that compounds with depth). The config's ``layer_sparsity`` map holds in every point (``--set
layer_sparsity=null``: every layer sparse); a point's optional fourth field is its
``backward_residual_rank``. Prints a table and writes JSON and a per-layer plot (``<out>.png``/``.svg``).

    python benchmarks/sparselora_gradients.py --config configs/sst2_sparselora_attn.yaml --set layer_sparsity=null \\
        --point contribution:0.75:0 --point random:0.75:0 --point contribution:0.9:0.5 --point gradient:0.9:0:64 \\
        --batches 4 --warm-steps 50
"""

from __future__ import annotations

import argparse
import copy
import json
import re
from collections import defaultdict
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import set_seed

from sparselora.config import load_config
from sparselora.files.figures import plt, save_figure
from sparselora.methods import get_method
from sparselora.methods.sparselora import lora_counterpart, sparse_config_of
from sparselora.report.markdown import table
from sparselora.sparse.apply import apply_sparselora
from sparselora.training.inputs import load_inputs


def _gradients(model: torch.nn.Module, batch: dict, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)  # the same dropout masks in every model
    model.train()
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    return {name: p.grad.detach().flatten().clone() for name, p in model.named_parameters() if "lora_" in name}


_LAYER = re.compile(r"\.layers?\.(\d+)\.")  # BERT's encoder.layer.N, LLaMA's model.layers.N


def _cosine(exact: dict[str, torch.Tensor], approx: dict[str, torch.Tensor], names: list[str]) -> float:
    """The cosine of the named gradients, flattened together."""
    e, a = torch.cat([exact[n] for n in names]), torch.cat([approx[n] for n in names])
    return float(torch.nn.functional.cosine_similarity(e, a, dim=0))


def _fidelity(exact: dict[str, torch.Tensor], approx: dict[str, torch.Tensor]) -> dict:
    names = sorted(exact)
    e, a = torch.cat([exact[n] for n in names]), torch.cat([approx[n] for n in names])
    per_module = [_cosine(exact, approx, [n]) for n in names]
    by_layer = defaultdict(list)
    for name in names:
        match = _LAYER.search(name)
        by_layer[int(match.group(1)) if match else -1].append(name)  # -1: an adapter outside the layers
    return {
        "cosine": float(torch.nn.functional.cosine_similarity(e, a, dim=0)),
        "relative_error": float((a - e).norm() / e.norm()),
        "mean_lora_module_cosine": sum(per_module) / len(per_module),
        "min_lora_module_cosine": min(per_module),
        "layer_cosine": {layer: _cosine(exact, approx, group) for layer, group in sorted(by_layer.items())},
    }


def _mean(scores: list[dict]) -> dict:
    """The batches' mean of every figure (per layer too)."""
    mean = {key: sum(s[key] for s in scores) / len(scores) for key in scores[0] if key != "layer_cosine"}
    layers = scores[0]["layer_cosine"]
    return mean | {
        "layer_cosine": {layer: sum(s["layer_cosine"][layer] for s in scores) / len(scores) for layer in layers}
    }


def _label(point: dict) -> str:
    rank = f", rank {point['residual_rank']}" if point["residual_rank"] else ""
    qkv = ", no q/k/v" if point["attn_sparsity"] > 0 else ""
    return f"{point['rule']} {point['ffn_sparsity']:g}{rank}{qkv}"


def _plot_layers(results: list[dict], stem: Path) -> list[Path]:
    """The LoRA gradients' cosine per layer, one line per point."""
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for point in results:
        layers = sorted(point["layer_cosine"])
        axis.plot(layers, [point["layer_cosine"][layer] for layer in layers], marker=".", label=_label(point))
    axis.set_xlabel("layer (adapters of)")
    axis.set_ylabel("cosine to dense LoRA's gradient")
    axis.set_title("LoRA gradient fidelity per layer (FFN channels skipped)")
    axis.legend(fontsize="small")
    return save_figure(figure, stem)


def _warm_up(model: torch.nn.Module, batches: list[dict], lr: float) -> None:
    """A few dense LoRA steps, so that the adapters' gradients are not those of B = 0."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for batch in tqdm(batches, desc="dense LoRA warm-up", unit="step"):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _parse_point(parser: argparse.ArgumentParser, point: str) -> tuple:
    """``rule:ffn:attn[:rank]`` → (rule, ffn, attn[, rank]); a malformed one ends with the expected form."""
    fields = point.split(":")
    try:
        if len(fields) not in (3, 4):
            raise ValueError
        return fields[0], float(fields[1]), float(fields[2]), *(int(r) for r in fields[3:])
    except ValueError:
        parser.error(
            f"--point {point!r}: expected rule:ffn_sparsity:attn_sparsity[:residual_rank], e.g. gradient:0.75:0:64"
        )


def build_parser() -> argparse.ArgumentParser:
    """The command line (the docs' command blocks are checked against it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="A sparselora run config (model, task, LoRA keys).")
    parser.add_argument("--set", action="append", default=[], help="Override a config key (repeatable).")
    parser.add_argument(
        "--point",
        action="append",
        required=True,
        help="rule:ffn_sparsity:attn_sparsity[:residual_rank], e.g. contribution:0.75:0 (attn > 0 drops the frozen "
        "q/k/v gradient; a residual rank r > 0 passes the skipped FFN channels' gradient through rank-r factors).",
    )
    parser.add_argument("--batches", type=int, default=4, help="Real training batches to average over.")
    parser.add_argument("--warm-steps", type=int, default=50, help="Dense LoRA steps before measuring.")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/gradients.json"))
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    points = [_parse_point(parser, point) for point in args.point]  # a malformed one stops before any work

    config = load_config(args.config, [*args.set, "progress=false"])
    set_seed(config.seed)
    inputs = load_inputs(config)
    base, new_modules = inputs.load_base_model()
    dense = get_method("lora").build(base, inputs.build_context(new_modules, lora_counterpart(config))).model
    loaded = inputs.first_batches(args.warm_steps + args.batches)
    _warm_up(dense, loaded[: args.warm_steps], config.learning_rate)
    batches = loaded[args.warm_steps :]
    exact = [_gradients(dense, batch, seed) for seed, batch in enumerate(batches)]

    results = []
    for rule, ffn, attn, *rank in tqdm(points, desc="points", unit="point"):
        sparse = copy.deepcopy(dense)
        sparse_config = sparse_config_of(  # the config's other keys (estimator_tokens, layer_sparsity)
            config.method_options,
            sparse_pass="backward",
            backward_rule=rule,
            ffn_sparsity=ffn,
            attn_sparsity=attn,
            **({"backward_residual_rank": rank[0]} if rank else {}),
        )
        engine = apply_sparselora(sparse, sparse_config, progress=False)
        engine.start_sparse_now()
        scores = [
            _fidelity(e, _gradients(sparse, b, seed)) for seed, (e, b) in enumerate(zip(exact, batches, strict=True))
        ]
        mean = _mean(scores)
        point = {"rule": rule, "ffn_sparsity": ffn, "attn_sparsity": attn}
        point |= {"estimator_tokens": sparse_config.estimator_tokens}
        point |= {"residual_rank": sparse_config.backward_residual_rank}
        point |= {"layer_sparsity": sparse_config.layer_sparsity}
        results.append(point | mean)
        engine.detach()

    header = ["rule", "FFN channels skipped", "skipped channels' gradient", "frozen q/k/v gradient", "cosine"]
    header += ["relative error"]
    header += ["mean LoRA-module cosine", "min LoRA-module cosine"]
    rows = [
        [
            r["rule"],
            f"{r['ffn_sparsity']:g}",
            f"rank {r['residual_rank']}" if r["residual_rank"] else "zero",
            "dropped" if r["attn_sparsity"] > 0 else "kept",
            f"{r['cosine']:.3f}",
            f"{r['relative_error']:.3f}",
            f"{r['mean_lora_module_cosine']:.3f}",
            f"{r['min_lora_module_cosine']:.3f}",
        ]
        for r in results
    ]
    print(table(header, rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"config": args.config, "overrides": args.set, "batches": args.batches, "warm_steps": args.warm_steps}
    payload["points"] = results
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    figures = _plot_layers(results, args.out.with_suffix(""))
    print(f"→ {args.out}, {', '.join(str(path) for path in figures)}")


if __name__ == "__main__":
    main()
