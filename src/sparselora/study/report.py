"""`sparselora study report DIR`: the study as a short paper in Markdown, from the phases' CSVs.

Every number and every sentence of the results and discussion is computed from the CSV files the
phases wrote; the method and limitations sections are fixed text that describes the code.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pandas as pd

from sparselora.files.atomic import atomic_write_text
from sparselora.report.markdown import frame_table as _table

SIGNIFICANCE = 0.01
_SETTING_A = ["spectrum", "shape", "k", "baseline"]
_TEST_COLUMNS = ["mean_a", "mean_b", "ci95_low", "ci95_high", "wilcoxon_p", "effect_size", "verdict"]
_SETTING_C = ["targets", "lora_r", "structure", "recovered", "keep", "importance"]
_DISTRIBUTION_COLUMNS = ["value", "random_mean", "random_std", "random_n", "percentile", "t_p", "effect_size"]


def _verdict(row: pd.Series, lower_is_better: bool = True) -> str:
    p = row["wilcoxon_p"] if "wilcoxon_p" in row else row["t_p"]
    if p >= SIGNIFICANCE:
        return "n.s."
    better = row["mean_difference"] < 0 if lower_is_better else row["mean_difference"] > 0
    return "SVD better" if better else "SVD worse"


def _figure(path: Path, folder: Path, caption: str) -> str:
    return f"![{caption}]({path.relative_to(folder).as_posix()})\n\n*{caption}*\n" if path.is_file() else ""


def phase_a_section(folder: Path, out: Path) -> tuple[list[str], list[str]]:
    stats = pd.read_csv(folder / "stats.csv")
    frob = stats[stats["norm"] == "frobenius"].copy()
    frob["verdict"] = frob.apply(_verdict, axis=1)
    lines = ["### Phase A: synthetic matrices", ""]
    n = int(frob["n"].iloc[0])
    lines.append(
        f"Relative Frobenius error, SVD vs baseline, paired over {n} matrices per row (difference = SVD − baseline; "
        f"Wilcoxon signed-rank p; effect size d_z). Spectral-norm results are in `phase_a/stats.csv`."
    )
    for comparison, title in (("rank_k", "Rank-k approximation"), ("columns", "Column pruning at equal storage")):
        part = frob[frob["comparison"] == comparison]
        table = part[[*_SETTING_A, *_TEST_COLUMNS]].rename(
            columns={"mean_a": "SVD error", "mean_b": "baseline error", "ci95_low": "diff CI low"}
        )
        lines += ["", f"**{title}**", "", _table(table.rename(columns={"ci95_high": "diff CI high"}))]
    lines += [
        "",
        _figure(folder / "rank_k_comparison.png", out, "Rank-k: SVD vs random projection"),
        _figure(folder / "column_prune_comparison.png", out, "Column pruning: SVD leverage vs magnitude vs random"),
    ]
    discussion = []
    for comparison, baseline in (("rank_k", "random"), ("columns", "random"), ("columns", "magnitude")):
        part = frob[(frob["comparison"] == comparison) & (frob["baseline"] == baseline)]
        counts = part["verdict"].value_counts()
        by_spectrum = part.groupby("spectrum")["verdict"].agg(lambda v: ", ".join(sorted(set(v))))
        discussion.append(
            f"- Phase A, {comparison.replace('_', '-')} vs {baseline}: SVD better in {counts.get('SVD better', 0)}, "
            f"worse in {counts.get('SVD worse', 0)}, not significantly different in {counts.get('n.s.', 0)} of "
            f"{len(part)} settings (p < {SIGNIFICANCE}); by spectrum: "
            + "; ".join(f"{s}: {v}" for s, v in by_spectrum.items())
            + "."
        )
    return lines, discussion


def phase_b_section(folder: Path, out: Path) -> tuple[list[str], list[str]]:
    reconstruction = pd.read_csv(folder / "reconstruction.csv")
    predictor = pd.read_csv(folder / "predictor.csv")
    stats = pd.read_csv(folder / "stats.csv")
    recon = reconstruction.groupby(["model", "role", "k"])["relative_frobenius_error"].mean().unstack("k")
    recon.columns = [f"k={k}" for k in recon.columns]
    lines = ["### Phase B: real weights and the real predictor", ""]
    lines += ["Relative Frobenius error of the best rank-k approximation, mean over layers:", ""]
    lines.append(_table(recon.reset_index(), "{:.3f}"))
    means = predictor.groupby(["model", "selector", "outliers"])[["recall", "output_error"]].agg(["mean", "std"])
    means.columns = [f"{a} {b}" for a, b in means.columns]
    lines += ["", "FFN channel selection on real batches (mean and std over layers × batches):", ""]
    lines.append(_table(means.reset_index(), "{:.3f}"))
    stats = stats.copy()
    stats["verdict"] = [_verdict(row, lower_is_better=row["measure"] == "output_error") for _, row in stats.iterrows()]
    shown = stats[["model", "outliers", "baseline", "measure", *_TEST_COLUMNS]]
    lines += ["", "SVD vs baselines, paired over (layer, batch):", "", _table(shown.rename(columns={"mean_a": "SVD"}))]
    lines += [
        "",
        _figure(folder / "singular_values.png", out, "Normalised singular values of the frozen projections"),
        _figure(folder / "recall_per_layer.png", out, "Recall of the oracle top-k FFN channels per layer"),
        _figure(folder / "output_error_per_layer.png", out, "Relative FFN output error per layer"),
    ]
    discussion = []
    for _, row in stats[stats["baseline"] == "random"].iterrows():
        discussion.append(
            f"- Phase B, {row['model']} ({'with' if row['outliers'] else 'without'} outlier protection), "
            f"{row['measure']}: SVD {row['mean_a']:.3f} vs random {row['mean_b']:.3f} → {row['verdict']} "
            f"(p = {row['wilcoxon_p']:.2g}, d_z = {row['effect_size']:.2f})."
        )
    return lines, discussion


def phase_c_section(folder: Path, out: Path) -> tuple[list[str], list[str]]:
    stats = pd.read_csv(folder / "stats.csv")
    training = pd.read_csv(folder / "training.csv")
    results = pd.read_csv(folder / "results.csv")
    lines = ["### Phase C: LoRA prune → fine-tune on SST-2", ""]
    lines += ["Adapters trained before pruning:", "", _table(training.drop(columns=["run"]), "{:.4g}"), ""]
    unpruned = results[results["importance"] == "none"][["targets", "lora_r", "accuracy", "eval_loss"]]
    lines += ["Unpruned accuracy on the evaluation subset:", "", _table(unpruned.drop_duplicates(), "{:.4f}"), ""]
    accuracy = stats[stats["measure"] == "accuracy"]
    shown = accuracy[[*_SETTING_C, *_DISTRIBUTION_COLUMNS]].rename(columns={"value": "accuracy"})
    lines += [
        "Accuracy after pruning: SVD / magnitude importance vs the distribution of random draws "
        "(percentile = share of random draws at or below; t_p: one-sample t-test of the draws against the value):",
        "",
        _table(shown, "{:.4g}"),
        "",
    ]
    for name in ("prune_accuracy.png", "prune_accuracy_recovered.png"):
        lines.append(_figure(folder / name, out, name.removesuffix(".png").replace("_", " ")))
    discussion = []
    for importance in ("svd", "magnitude"):
        part = accuracy[accuracy["importance"] == importance]
        wins = int(((part["t_p"] < SIGNIFICANCE) & (part["value"] > part["random_mean"])).sum())
        losses = int(((part["t_p"] < SIGNIFICANCE) & (part["value"] < part["random_mean"])).sum())
        discussion.append(
            f"- Phase C, {importance} importance vs random: higher accuracy in {wins}, lower in {losses}, "
            f"no significant difference in {len(part) - wins - losses} of {len(part)} settings (p < {SIGNIFICANCE})."
        )
    recovered = results[results["recovered"] & (results["importance"] != "none")]
    if not recovered.empty:
        discussion.append(
            f"- Recovery: {int(recovered['recovery_ms_per_step'].median())} ms per recovery step (median); "
            f"mean accuracy after recovery {recovered['accuracy'].mean():.4f}."
        )
    return lines, discussion


METHOD = """## Method

- **Phase A** draws matrices with controlled spectra (planted rank-8 signal + noise, power-law
  σᵢ = 1/i, i.i.d. Gaussian, flat) in several shapes. Rank-k truncated SVD is compared with a rank-k
  randomized range finder (Gaussian test matrix, no oversampling: the same storage). Column pruning
  keeps as many columns as fit the stored-scalar budget of a rank-k factorisation, k(m + n) + k
  scalars, where a kept column costs its m values plus one integer index (column-compressed
  layout); columns are chosen by SVD leverage (‖V_k[j]‖² over the top-k right singular vectors),
  by column norm (magnitude) or at random. Each matrix is one paired observation; each random
  baseline draws afresh per matrix.
- **Phase B** computes every frozen projection's spectrum and best rank-k error, then runs the
  SparseLoRA predictor (rank-8 SVD factors, activation applied to the estimate) on real batches
  and compares the channels it keeps with the oracle (top-k by the true ‖h_c‖), with random
  channels (averaged over draws) and with a Wanda-style input-magnitude score Σᵢ|W_ci|·‖xᵢ‖,
  with and without the outlier channels found on calibration batches. Observations are
  (layer, batch) pairs.
- **Phase C** trains LoRA adapters on SST-2, prunes rank components (SVD: best rank-k
  re-factorisation of ΔW; magnitude: ‖B[:, i]‖·‖A[i]‖; random) or input columns (SVD leverage,
  column norm of ΔW, random), optionally recovers for a few steps with the mask fixed, and
  evaluates. SVD and magnitude are deterministic, so each is compared with the distribution of
  random draws.
- **Statistics**: mean ± std, 95% t-intervals, paired t-test and Wilcoxon signed-rank test
  (two-sided), Cohen's d_z (mean difference / std of differences); p < 0.01 counts as significant.
"""

LIMITATIONS = """## Limitations

- Phase B covers the FFN blocks; the attention predictor's recall is printed per layer by
  `sparselora sparse recall` but not analysed here.
- Phase C uses one training seed per adapter: it measures the spread of random pruning around one
  trained adapter, not the spread of training itself. The evaluation subset and the short training
  budget (see the setup) make absolute accuracies lower than a full SST-2 run.
- Layers and batches in Phase B are not independent observations (layers of one model share
  inputs), so its p-values are optimistic; the effect sizes and the per-layer plots are the
  safer reading.
- Everything runs on CPU at small scale; larger models have different spectra (see Phase B for
  the 135M-parameter SmolLM2 next to the 22.7M MiniLM).
"""


def write_report(out: Path) -> Path:
    out = Path(out)
    plan_path = out / "plan.json"
    plan = json.loads(plan_path.read_text()) if plan_path.is_file() else {}
    sections, discussion = [], []
    for name, builder in (("phase_a", phase_a_section), ("phase_b", phase_b_section), ("phase_c", phase_c_section)):
        if (out / name / "stats.csv").is_file():
            lines, notes = builder(out / name, out)
            sections += [*lines, ""]
            discussion += notes
    if not sections:
        raise FileNotFoundError(
            f"no phase results under '{out}': run `sparselora study svd-vs-random --phase all --out {out}` first"
        )
    text = [
        "# Does the SVD estimator choose better than chance?",
        "",
        f"Generated {date.today().isoformat()} by `sparselora study report {out}` from the CSV files in this folder.",
        "",
        "## Question",
        "",
        "SparseLoRA decides which channels of the frozen weights to compute from a rank-r SVD of those weights. "
        "Is that choice better than choosing at random, or than cheaper heuristics, and where does it stop helping?",
        "",
        METHOD,
        "## Setup",
        "",
        "```json",
        json.dumps(plan, indent=2),
        "```",
        "",
        "## Results",
        "",
        *sections,
        "## Discussion",
        "",
        *discussion,
        "",
        LIMITATIONS,
    ]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(text))
    return path
