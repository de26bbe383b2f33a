import pandas as pd

from sparselora.report.plots import pareto_front, plot_loss_curves, plot_peak_memory, plot_quality_vs_time


def test_pareto_front_keeps_the_points_nothing_beats():
    # (time, quality): lower time and higher quality are better
    points = [(100.0, 0.85), (80.0, 0.84), (90.0, 0.80), (120.0, 0.86)]
    assert sorted(pareto_front(points)) == [0, 1, 3]
    # (time, perplexity): lower is better on both axes
    perplexities = [(100.0, 20.0), (80.0, 21.0), (90.0, 25.0), (120.0, 19.0)]
    assert pareto_front(perplexities, higher_is_better=False) == [1, 0, 3]


def test_plots_write_png_and_svg(tmp_path):
    summary = pd.DataFrame(
        [
            {"label": "lora", "seeds": 3, "accuracy_mean": 0.85, "accuracy_std": 0.01, "ms_per_step_mean": 100.0}
            | {"ms_per_step_std": 5.0, "peak_mb_mean": 1000.0, "peak_mb_std": 10.0},
            {"label": "sparselora", "seeds": 3, "accuracy_mean": 0.84, "accuracy_std": 0.01}
            | {"ms_per_step_mean": 80.0, "ms_per_step_std": 4.0, "peak_mb_mean": 990.0, "peak_mb_std": 9.0},
        ]
    )
    written = plot_quality_vs_time(summary, "accuracy", "t", tmp_path / "q")
    written += plot_peak_memory(summary, "m", tmp_path / "m")
    written += plot_loss_curves({"lora": ([1, 2, 3], [0.7, 0.6, 0.5])}, "l", tmp_path / "l", {"lora": ([3], [0.65])})
    assert sorted(p.name for p in written) == ["l.png", "l.svg", "m.png", "m.svg", "q.png", "q.svg"]
    assert all(p.stat().st_size > 1000 for p in written)


def test_error_bars_stop_at_zero():
    from sparselora.report.plots import _above_zero

    bars = _above_zero([2295.0, 100.0], [2946.0, 5.0])
    assert bars.tolist() == [[2295.0, 5.0], [2946.0, 5.0]]  # lower bar cut at the value, upper kept
