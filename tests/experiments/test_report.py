"""Markdown tables and plots of a suite's results."""

import pytest

from hf_mltm.experiments.report import markdown_report, plot_suite
from hf_mltm.experiments.stats import mean_ci, paired_difference


def _method(label, accuracy, gap):
    return {"label": label, "selected": {"learning_rate": 5e-4, "ot_epsilon": 0.05}, "best_epoch": [3, 4, 5],
            "seeds": [0, 1, 2], "validation": [0.5, 0.6, 0.7], "wall_s": 12.4, "cpu_s": 3.2,
            "training_cpu_s": 41.6, "stored_runs": 2,
            "config": {"loss_type": "mltm", "ot_epsilon": 0.05, "cost_normalization": "none"},
            "per_seed": {"accuracy": accuracy, "modality_gap": gap},
            "summary": {"accuracy": mean_ci(accuracy).to_dict(), "modality_gap": mean_ci(gap).to_dict()}}


RESULT = {
    "suite": "tiny", "title": "tiny suite", "task": "audio_zero_shot", "seeds": [0, 1, 2], "wall_s": 30.0,
    "cpu_s": 9.0, "data_wall_s": 1.0, "summary_line": "suite=tiny methods=2 seeds=3 wall_s=30",
    "conditions": {"default": {
        "methods": {"a": _method("method A", [30.0, 32.0, 34.0], [0.4, 0.5, 0.6]),
                    "b": _method("method B", [20.0, 21.0, 25.0], [0.9, 0.9, 0.9])},
        "comparisons": [{"a": "a", "b": "b", "metric": "accuracy",
                         "difference": paired_difference([30.0, 32.0, 34.0], [20.0, 21.0, 25.0]).to_dict()}]}},
}


def test_markdown_report_rows_hold_mean_and_ci_half_width():
    text = markdown_report(RESULT)
    # mean 32, std 2, t(0.975, 2) * 2 / sqrt(3) = 4.97
    assert "| method A | lr 0.0005, ot_epsilon 0.05 | 32.0 ± 5.0 | 0.500 ± 0.248 | 3,4,5 | 42 (2 stored) |" in text
    # differences 10, 11, 9: mean 10, std 1, half-width 4.303 / sqrt(3) = 2.48
    assert "| method A − method B | ESC-10 acc. (%) | 10.0 ± 2.5 | yes |" in text
    assert text.rstrip().endswith("`suite=tiny methods=2 seeds=3 wall_s=30`")


def test_plot_suite_writes_the_requested_figures_and_rejects_unknown_ones(tmp_path):
    written = plot_suite(RESULT, {}, tmp_path, ["bars", "epsilon_curve", "projection"])
    # no artifacts: the projection is skipped, the two others are drawn
    assert sorted(path.name for path in written) == ["claims_tiny_bars.png", "claims_tiny_epsilon_curve.png"]
    assert all(path.stat().st_size > 1000 for path in written)
    with pytest.raises(ValueError, match="unknown plot"):
        plot_suite(RESULT, {}, tmp_path, ["pie"])
