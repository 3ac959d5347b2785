"""Statistics of the evidence suite: t quantiles, mean confidence intervals and paired differences."""

import math

import pytest

from hf_mltm.experiments.stats import mean_ci, paired_difference, student_t_cdf, student_t_quantile

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("df", [1, 2, 4, 9, 29, 200])
@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995, 0.9995])
def test_t_quantile_matches_scipy(df, p):
    expected = scipy_stats.t.ppf(p, df)
    assert student_t_quantile(p, df) == pytest.approx(expected, rel=1e-9)
    assert student_t_quantile(1 - p, df) == pytest.approx(-expected, rel=1e-9)


@pytest.mark.parametrize("df", [1, 3, 30])
@pytest.mark.parametrize("t", [-6.0, -1.0, 0.0, 0.25, 2.5, 40.0])
def test_t_cdf_matches_scipy(df, t):
    assert student_t_cdf(t, df) == pytest.approx(scipy_stats.t.cdf(t, df), abs=1e-13)


def test_mean_ci_hand_checked():
    # mean 2, sample std 1, t(0.975, 2) = 4.302652729749464: half-width 4.30265 / sqrt(3)
    interval = mean_ci([1.0, 2.0, 3.0])
    assert interval.mean == 2.0 and interval.std == 1.0 and interval.n == 3
    assert interval.half_width == pytest.approx(4.302652729749464 / math.sqrt(3), rel=1e-10)
    assert (interval.low, interval.high) == pytest.approx((2 - interval.half_width, 2 + interval.half_width))


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_mean_ci_matches_scipy_t_interval(confidence):
    values = [71.25, 68.75, 75.0, 72.5, 66.25]
    low, high = scipy_stats.t.interval(confidence, len(values) - 1, loc=sum(values) / 5, scale=scipy_stats.sem(values))
    interval = mean_ci(values, confidence)
    assert (interval.low, interval.high) == pytest.approx((low, high), rel=1e-10)


def test_paired_difference_matches_scipy_paired_t_test():
    a = [0.81, 0.77, 0.84, 0.79, 0.80]
    b = [0.72, 0.75, 0.70, 0.74, 0.71]
    expected = scipy_stats.ttest_rel(a, b).confidence_interval(0.95)
    difference = paired_difference(a, b)
    assert difference.mean == pytest.approx(sum(a) / 5 - sum(b) / 5)
    assert (difference.low, difference.high) == pytest.approx((expected.low, expected.high), rel=1e-10)
    assert difference.excludes_zero


def test_paired_difference_removes_shared_seed_variation():
    # The seeds move both methods together: unpaired intervals overlap, the paired one excludes 0.
    a = [60.0, 70.0, 80.0, 65.0, 75.0]
    b = [value - 1.0 for value in a[:4]] + [a[4] - 1.5]
    assert mean_ci(a).low < mean_ci(b).high
    assert paired_difference(a, b).excludes_zero
    assert not paired_difference(a, a).excludes_zero


def test_single_value_has_no_interval():
    interval = mean_ci([0.5])
    assert interval.mean == 0.5 and interval.low is None and interval.half_width is None
    assert not interval.excludes_zero
    assert interval.format(2) == "0.50"


@pytest.mark.parametrize(
    ("values", "message"),
    [([], "empty"), ([1.0, float("nan")], r"values\[1\] is nan"), ([1.0, "x"], r"values\[1\] must be a real"),
     ("12", "sequence of numbers")],
)
def test_mean_ci_rejects_bad_values_naming_them(values, message):
    with pytest.raises(ValueError, match=message):
        mean_ci(values)


def test_mean_ci_rejects_confidence_outside_zero_one():
    with pytest.raises(ValueError, match="confidence must be a number in"):
        mean_ci([1.0, 2.0], confidence=95)


def test_paired_difference_rejects_unequal_seed_counts():
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([1.0, 2.0, 3.0], [1.0, 2.0])
