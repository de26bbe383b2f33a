"""Accuracy against speed for the SparseLoRA cells of one comparison: the trade-off in one figure.

Each point pairs a comparison cell (its accuracy per seed, paired with the reference cell's same
seeds) with a speed-benchmark JSON (``benchmarks/sparselora_speed.py``) run at the same sparsity.
The benchmark's speedup (the median, when a point names several runs) is per *sparse* step; the
whole-run speedup follows from the share of the cell's steps that ran sparse (dense warm-up and
cool-down excluded), as read from its metrics:

    python benchmarks/sparselora_frontier.py runs/compare_sparselora_sst2 \\
        --point sparselora_cool20=runs/benchmarks/full_1.json,runs/benchmarks/full_2.json \\
        --point sparselora_half_cool20=runs/benchmarks/half_1.json,runs/benchmarks/half_2.json

Prints a markdown table and writes ``<out>.json`` and ``<out>.png``/``.svg``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib.pyplot as plt

from sparselora.report.plots import save_figure
from sparselora.report.results import collect, paired_test
from sparselora.run_folder.layout import read_run


def sparse_step_share(label: str, seed_metrics: list[dict]) -> float:
    """Fraction of a cell's training steps that ran sparse (the same for every seed of a cell)."""
    shares = set()
    for metrics in seed_metrics:
        method, steps = metrics["method"], metrics["train"]["steps"]
        until = method["sparse_until_step"] if method.get("sparse_until_step") is not None else steps
        shares.add(round((min(until, steps) - method["sparse_from_step"]) / steps, 6))
    if len(shares) != 1:
        raise SystemExit(f"cell '{label}': expected one sparse schedule over its seeds, found {sorted(shares)}")
    return shares.pop()


def check_same_sparsity(label: str, run_method: dict, benchmark: dict, benchmark_path: Path) -> None:
    """Refuse a benchmark timed at another sparsity than the cell trained with."""
    timed = {"sparse_pass": "forward", **benchmark["sparselora"]}  # records from before the key existed
    run_method = {"sparse_pass": "forward", **run_method}
    for key in ("sparse_pass", "ffn_sparsity_per_layer", "attn_sparsity_per_layer"):
        if run_method[key] != timed[key]:
            raise SystemExit(
                f"--point {label}={benchmark_path}: the benchmark's {key} {timed[key]} differs from the "
                f"cell's {run_method[key]}; rerun the benchmark with that cell's sparsity settings"
            )


def load_benchmarks(label: str, paths: list[Path]) -> list[dict]:
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise SystemExit(f"--point {label}: no benchmark JSON at {', '.join(missing)}")
    return [json.loads(path.read_text()) for path in paths]


def frontier_point(
    results_dir: Path, frame, task: str, reference: str, label: str, benchmark_paths: list[Path]
) -> dict:
    """One cell's accuracy difference to the reference and its speed (median over its benchmark runs)."""
    benchmarks = load_benchmarks(label, benchmark_paths)
    cell = frame[(frame["task"] == task) & (frame["label"] == label) & (frame["status"] == "finished")]
    if cell.empty:
        raise SystemExit(f"--point {label}: no finished '{task}__{label}__s*' run under {results_dir / 'runs'}")
    seeds = sorted(int(seed) for seed in cell["seed"])
    seed_runs = [read_run(results_dir / "runs" / f"{task}__{label}__s{seed}") for seed in seeds]
    seed_metrics = [metrics for _, metrics in seed_runs]
    sparse_pass = seed_runs[0][0].get("sparse_pass", "forward")  # the run's config.yaml
    for benchmark, path in zip(benchmarks, benchmark_paths, strict=True):
        check_same_sparsity(label, seed_metrics[0]["method"] | {"sparse_pass": sparse_pass}, benchmark, path)
    test = paired_test(frame[frame["task"] == task], label, reference, "accuracy")
    if test is None:
        raise SystemExit(f"--point {label}: no seed of it has a finished '{reference}' run to pair with")
    share = sparse_step_share(label, seed_metrics)
    speedups = [benchmark["speedup"] for benchmark in benchmarks]
    speedup = statistics.median(speedups)
    return {
        "label": label,
        "sparse_pass": sparse_pass,
        "seeds": seeds,
        "accuracy": float(cell["accuracy"].mean()),
        "delta_pt": 100 * test.mean_difference,
        "delta_ci95_pt": None if test.p_value is None else [100 * bound for bound in test.ci95],  # < 3 seeds: none
        "p_value": test.p_value,
        "sparse_step_speedup": speedup,
        "sparse_step_speedups": speedups,
        "sparse_step_share": share,
        "run_speedup": 1 / (1 - share + share / speedup),
        "flops_ratio": statistics.median(benchmark["flops_ratio_sparse_over_dense"] for benchmark in benchmarks),
        "benchmarks": [str(path) for path in benchmark_paths],
    }


def included_points(paths: list[Path], reference: str, measured: set[str]) -> list[dict]:
    """Points of earlier frontier JSONs against the same reference; a cell measured here replaces its old point."""
    points = []
    for path in paths:
        if not path.is_file():
            raise SystemExit(f"--include: no frontier JSON at {path}")
        earlier = json.loads(path.read_text())
        if earlier.get("reference") != reference:
            raise SystemExit(f"--include {path}: its reference is '{earlier.get('reference')}', not '{reference}'")
        points += [point for point in earlier["points"] if point["label"] not in measured]
    return points


def plot_frontier(points: list[dict], reference: str, target_speedup: float, target_delta: float, stem: Path):
    """Δ accuracy (paired, 95% CI) against speedup per sparse step, with the targets as a box."""
    figure, axis = plt.subplots(figsize=(6, 4.2))
    right = max(target_speedup, *(p["sparse_step_speedup"] for p in points)) + 0.05
    markers = {"forward": ("o", "tab:blue"), "backward": ("^", "tab:orange")}
    for point in points:
        ci = point["delta_ci95_pt"]
        error = None if ci is None else [[point["delta_pt"] - ci[0]], [ci[1] - point["delta_pt"]]]
        marker, color = markers[point.get("sparse_pass", "forward")]
        axis.errorbar(point["sparse_step_speedup"], point["delta_pt"], yerr=error, fmt=marker, color=color, capsize=3)
        on_the_right = point["sparse_step_speedup"] > (1 + right) / 2  # label inward, so it stays inside the axes
        axis.annotate(
            f"{point['label']} ({len(point['seeds'])} seeds)",
            (point["sparse_step_speedup"], point["delta_pt"]),
            textcoords="offset points",
            xytext=(-5, 4) if on_the_right else (5, 4),
            ha="right" if on_the_right else "left",
            fontsize=8,
        )
    axis.plot([1.0], [0.0], "s", color="black")
    axis.annotate(reference, (1.0, 0.0), textcoords="offset points", xytext=(5, 4), fontsize=8)
    axis.axhline(0, color="grey", linewidth=0.8)
    top = max([1.0] + [p["delta_ci95_pt"][1] for p in points if p["delta_ci95_pt"]])
    axis.fill_between(
        [target_speedup, right], -target_delta, top + 0.5, color="tab:green", alpha=0.12,
        label=f"target: ≥ {target_speedup}× and ≥ −{target_delta} pt",
    )  # fmt: skip
    for mode, (marker, color) in markers.items():
        if any(point.get("sparse_pass", "forward") == mode for point in points):
            axis.plot([], [], marker, color=color, label=f"sparse_pass: {mode}")
    axis.set_xlim(0.98, right)
    axis.set_xlabel("speedup per sparse training step (benchmark, median)")
    axis.set_ylabel(f"accuracy − {reference} (pt, paired over seeds)")
    axis.set_title("SparseLoRA: accuracy against speed")
    axis.legend(loc="lower left", fontsize=8)
    return save_figure(figure, stem)


def markdown(points: list[dict]) -> str:
    from sparselora.report.markdown import table

    header = ["cell", "sparse pass", "seeds", "accuracy", "Δ vs reference (95% CI)", "p"]
    header += ["speedup per sparse step", "sparse steps", "whole run", "FLOPs ratio"]
    rows = []
    for p in points:
        ci = "" if p["delta_ci95_pt"] is None else " ({:+.2f} to {:+.2f})".format(*p["delta_ci95_pt"])
        p_value = "–" if p["p_value"] is None else f"{p['p_value']:.2f}"
        rows.append(
            [
                p["label"],
                p.get("sparse_pass", "forward"),
                len(p["seeds"]),
                f"{p['accuracy']:.4f}",
                f"{p['delta_pt']:+.2f} pt{ci}",
                p_value,
                f"{p['sparse_step_speedup']:.3f}×",
                f"{p['sparse_step_share']:.0%}",
                f"{p['run_speedup']:.3f}×",
                f"{p['flops_ratio']:.3f}",
            ]
        )
    return table(header, rows)


def build_parser() -> argparse.ArgumentParser:
    """The command line (the docs' command blocks are checked against it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dir", type=Path, help="a comparison's output_dir")
    parser.add_argument(
        "--point", action="append", required=True,
        help="CELL=BENCHMARK_JSON[,BENCHMARK_JSON...] (median speedup of the runs), once per point",
    )  # fmt: skip
    parser.add_argument(
        "--include", type=Path, action="append", default=[],
        help="an earlier run's frontier JSON whose points join these (cells whose runs are no longer here)",
    )  # fmt: skip
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--reference", default="lora")
    parser.add_argument("--target-speedup", type=float, default=1.3)
    parser.add_argument("--target-delta", type=float, default=0.5, help="accuracy target, pt below the reference")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/sparselora_frontier"))
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()

    frame = collect(args.results_dir)
    if frame.empty:
        raise SystemExit(f"no finished runs under {args.results_dir / 'runs'}")
    points = []
    for point in args.point:
        label, separator, paths = point.partition("=")
        if not separator or not paths:
            parser.error(f"--point must be CELL=BENCHMARK_JSON[,BENCHMARK_JSON...], got '{point}'")
        benchmark_paths = [Path(path) for path in paths.split(",")]
        points.append(frontier_point(args.results_dir, frame, args.task, args.reference, label, benchmark_paths))
    points += included_points(args.include, args.reference, {point["label"] for point in points})
    points.sort(key=lambda p: p["sparse_step_speedup"])

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"reference": args.reference, "points": points}, indent=2))
    plot_frontier(points, args.reference, args.target_speedup, args.target_delta, args.out)
    finished = frame[(frame["task"] == args.task) & (frame["status"] == "finished")]
    reference_seeds = finished[finished["label"] == args.reference]["accuracy"]
    print(
        f"reference {args.reference}: accuracy {statistics.mean(reference_seeds):.4f} over {len(reference_seeds)} seeds"
    )
    print(markdown(points))
    print(f"→ {args.out.with_suffix('.json')}, {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
