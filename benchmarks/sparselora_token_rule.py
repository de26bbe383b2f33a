"""How much a sparse forward moves the trained tokens' loss, per token rule, before any training.

The model of a forward-mode SparseLoRA config (adapters at B = 0: the base model's loss) computes the
loss of the first ``--batches`` training batches dense, then sparse with the config's channels under
each setting: which blocks are sparse (FFN + attention, FFN only, attention only), whether output tokens
stay dense in attention too (the paper's rule) or in the FFN only, the dense span (per token or the
batch's span) and the FFN score's input (per token or the sequence mean). A small jump means the
sparse steps train the model the dense evaluation sees. Prints a table and writes JSON.

    python benchmarks/sparselora_token_rule.py --config configs/compare_gsm8k_smollm2.yaml \\
        --method sparselora --batches 3 --out docs/results/sparselora_token_rule/gsm8k.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import set_seed

from sparselora.compare.plan import Cell, load_compare_config
from sparselora.config import load_config
from sparselora.report.markdown import table
from sparselora.sparse.engine import SparseLoRAEngine, engine_of
from sparselora.sparse.tokens import TokenSplit
from sparselora.training.inputs import load_inputs
from sparselora.training.precision import autocast

BLOCKS = {"ffn+attn": ("ffn", "attention"), "ffn": ("ffn",), "attn": ("attention",)}


def _settings() -> list[dict]:
    """(blocks, output tokens dense in attention, span, FFN score input): the rule's variants, one change each."""
    rows = []
    for blocks in BLOCKS:
        for attention_dense in (True, False) if blocks != "ffn" else (True,):
            rows.append({"blocks": blocks, "attn_output_dense": attention_dense, "span": "tokens", "score": "tokens"})
    rows.append({"blocks": "ffn+attn", "attn_output_dense": True, "span": "batch_span", "score": "tokens"})
    rows.append({"blocks": "ffn+attn", "attn_output_dense": True, "span": "tokens", "score": "sequence_mean"})
    rows.append({"blocks": "ffn", "attn_output_dense": True, "span": "tokens", "score": "sequence_mean"})
    return rows


def _configure(engine: SparseLoRAEngine, setting: dict, sparsities: dict[str, list[float]]) -> None:
    engine.config.dense_span = setting["span"]
    for kind in ("ffn", "attention"):
        for block, sparsity in zip(getattr(engine, kind), sparsities[kind], strict=True):
            block.sparsity = sparsity if kind in BLOCKS[setting["blocks"]] else 0.0
    for block in engine.ffn:
        block.score_input = setting["score"]
    for block in engine.attention:
        block.dense_tokens = "labels" if setting["attn_output_dense"] else None


@torch.no_grad()
def _losses(model, batches, inputs) -> list[float]:
    with autocast(inputs.device, inputs.precision):
        return [float(model(**batch, use_cache=False).loss) for batch in batches]


def build_parser() -> argparse.ArgumentParser:
    """The command line (the docs' command blocks are checked against it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a comparison YAML (with --method) or a run YAML")
    parser.add_argument("--method", help="the comparison's method label whose config to use")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--out", type=Path)
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()

    config = _run_config(args.config, args.method)
    set_seed(config.seed)
    inputs = load_inputs(config)
    setup = inputs.build_method()
    model, engine = setup.model, engine_of(setup.model)
    batches = inputs.first_batches(args.batches)
    engine.calibrate_outliers(model, batches[: config.method_options.calibration_steps])
    sparsities = {kind: [block.sparsity for block in getattr(engine, kind)] for kind in ("ffn", "attention")}
    model.train()  # the engine is sparse in training forwards; SmolLM2 has no dropout and B = 0
    engine.enabled = False
    dense = _losses(model, batches, inputs)
    engine.enabled = True
    engine.start_sparse_now()
    output_share = [float(TokenSplit.output_tokens(b["labels"]).mask.float().mean()) for b in batches]
    rows = []
    for setting in _settings():
        _configure(engine, setting, sparsities)
        started = time.perf_counter()
        sparse = _losses(model, batches, inputs)
        rows.append(
            setting | {"loss": sum(sparse) / len(sparse), "per_batch": sparse, "seconds": time.perf_counter() - started}
        )
        print(f"{setting} loss {rows[-1]['loss']:.4f}", flush=True)
    result = {
        "config": args.config,
        "method": args.method,
        "batches": args.batches,
        "dense_loss": sum(dense) / len(dense),
        "dense_per_batch": dense,
        "output_token_share": output_share,
        "precision": inputs.precision,
        "rows": rows,
    }
    print(f"dense loss {result['dense_loss']:.4f}")
    print(
        table(
            ["sparse blocks", "output tokens dense in attention", "span", "FFN score", "loss", "jump"],
            [
                [
                    r["blocks"],
                    "yes" if r["attn_output_dense"] else "no (FFN only)",
                    r["span"],
                    r["score"],
                    f"{r['loss']:.3f}",
                    f"{r['loss'] / result['dense_loss'] - 1:+.1%}",
                ]
                for r in rows
            ],
        )
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


def _run_config(path: str, method: str | None):
    if method is None:
        return load_config(path)
    plan = load_compare_config(path)
    if method not in plan.methods:
        raise SystemExit(f"--method {method!r}: not a method of {path} ({', '.join(plan.methods)})")
    return Cell(method, plan.tasks[0], plan.seeds[0]).run_config(plan)


if __name__ == "__main__":
    main()
