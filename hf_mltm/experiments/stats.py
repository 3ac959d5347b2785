r"""Statistics of repeated runs: mean with a t-distribution confidence interval, and paired differences.

Every claim in the evidence suite is a comparison of methods over ``k`` seeds. For a metric with per-seed values
``x_1 .. x_k`` the report gives the mean and the two-sided confidence interval

.. math:: \bar x \pm t_{1 - \alpha/2,\, k-1} \; s / \sqrt{k}

with ``s`` the sample standard deviation (``k - 1`` in the denominator) and ``t`` the Student-t quantile. Two
methods run on the same seeds (same initialisation seed, batch order and noise draw) are compared by the interval
of the per-seed differences ``a_i - b_i`` (a paired t interval), which removes the seed-to-seed variation the two
methods share. A difference whose interval excludes 0 is called significant at that level.

The Student-t quantile is computed here (regularised incomplete beta function by its continued fraction, inverted
by bisection) so that the package does not depend on scipy; the tests check it against ``scipy.stats.t``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Interval", "mean_ci", "paired_difference", "student_t_cdf", "student_t_quantile"]


@dataclass(frozen=True)
class Interval:
    """The mean of ``n`` values and its two-sided confidence interval.

    Attributes:
        mean (`float`): the sample mean.
        low (`float` or `None`), high (`float` or `None`): the interval's bounds; `None` when ``n < 2`` (one
            value has no spread to estimate).
        half_width (`float` or `None`): ``t * std / sqrt(n)``; `None` when ``n < 2``.
        std (`float` or `None`): the sample standard deviation (``n - 1`` denominator); `None` when ``n < 2``.
        n (`int`): the number of values.
        confidence (`float`): the confidence level, e.g. 0.95.
    """

    mean: float
    low: float | None
    high: float | None
    half_width: float | None
    std: float | None
    n: int
    confidence: float

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely above or below 0 (`False` without an interval)."""
        return self.low is not None and (self.low > 0 or self.high < 0)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)

    def format(self, digits: int = 2, scale: float = 1.0) -> str:
        """``"mean ± half_width"`` (``"mean"`` alone when ``n < 2``), values multiplied by ``scale``."""
        if self.half_width is None:
            return f"{self.mean * scale:.{digits}f}"
        return f"{self.mean * scale:.{digits}f} ± {self.half_width * scale:.{digits}f}"


def _check_confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be a number in (0, 1) such as 0.95, got {confidence!r}.")
    return float(confidence)


def _check_values(values: Sequence[float], name: str) -> list[float]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(f"{name} must be a sequence of numbers (one per seed), got {values!r}.")
    checked = []
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{name}[{index}] must be a real number, got {value!r}.")
        if not math.isfinite(value):
            raise ValueError(f"{name}[{index}] is {value}: a run produced a non-finite metric; fix or drop that run.")
        checked.append(float(value))
    if not checked:
        raise ValueError(f"{name} is empty: give at least one value.")
    return checked


def _incomplete_beta(x: float, a: float, b: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)`` for ``0 <= x <= 1``, ``a, b > 0``.

    Evaluates the continued fraction ``I_x(a, b) = x^a (1-x)^b / (a B(a, b)) / (1 + d_1 / (1 + d_2 / (1 + ...)))``
    with ``d_{2m+1} = -(a+m)(a+b+m) x / ((a+2m)(a+2m+1))`` and ``d_{2m} = m (b-m) x / ((a+2m-1)(a+2m))`` by the
    modified Lentz method; it converges fast for ``x < (a+1)/(a+b+2)``, otherwise ``1 - I_{1-x}(b, a)`` is used.
    """
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _incomplete_beta(1.0 - x, b, a)
    log_front = a * math.log(x) + b * math.log1p(-x) - math.log(a) - (
        math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    )
    tiny = 1e-300
    # Lentz: f = 1 / (1 + d1 / (1 + d2 / ...)); track C and D of the convergents of 1 + d1 / (1 + ...).
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 1000):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        for term in (even, -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + term * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + term / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * fraction


def student_t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for a Student-t variable with ``df > 0`` degrees of freedom."""
    if not df > 0:
        raise ValueError(f"df (degrees of freedom) must be > 0, got {df}.")
    tail = 0.5 * _incomplete_beta(df / (df + t * t), df / 2.0, 0.5)  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of the Student-t distribution with ``df > 0`` degrees of freedom (``0 < p < 1``).

    Solved by bisection on :func:`student_t_cdf` to a relative precision of about 1e-12.

    Example:
        >>> round(student_t_quantile(0.975, 4), 4)
        2.7764
    """
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 < p < 1:
        raise ValueError(f"p must be a probability in (0, 1), got {p!r}.")
    if not df > 0:
        raise ValueError(f"df (degrees of freedom) must be > 0, got {df}.")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:
        low, high = high, high * 2.0
        if high > 1e12:
            raise ValueError(f"the t quantile for p={p}, df={df} is beyond 1e12; use a less extreme p.")
    for _ in range(200):
        middle = 0.5 * (low + high)
        if student_t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low <= 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and two-sided t confidence interval of independent values (e.g. one metric over seeds).

    Args:
        values (`Sequence[float]`): ``n >= 1`` finite values.
        confidence (`float`, defaults to 0.95): the confidence level.

    Returns:
        `Interval`: with ``low``/``high``/``half_width``/``std`` `None` when ``n == 1``.

    Raises:
        ValueError: no values, a non-finite or non-numeric value, or a confidence outside (0, 1).

    Example:
        >>> mean_ci([1.0, 2.0, 3.0]).format(3)  # 2 +- t(0.975, 2) * 1 / sqrt(3)
        '2.000 ± 2.484'
    """
    confidence = _check_confidence(confidence)
    values = _check_values(values, "values")
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return Interval(mean, None, None, None, None, n, confidence)
    std = math.sqrt(math.fsum((value - mean) ** 2 for value in values) / (n - 1))
    half_width = student_t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return Interval(mean, mean - half_width, mean + half_width, half_width, std, n, confidence)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and t interval of the per-seed differences ``a_i - b_i`` of two methods run on the same seeds.

    Args:
        a (`Sequence[float]`), b (`Sequence[float]`): one value per seed, in the same seed order.
        confidence (`float`, defaults to 0.95): the confidence level.

    Returns:
        `Interval` of ``a - b``; ``excludes_zero`` tells whether the difference is significant at that level.

    Raises:
        ValueError: the two sequences differ in length (they must pair seed by seed), or as :func:`mean_ci`.

    Example:
        >>> paired_difference([3.0, 5.0, 4.0], [1.0, 2.0, 2.0]).mean
        2.3333333333333335
    """
    a, b = _check_values(a, "a"), _check_values(b, "b")
    if len(a) != len(b):
        raise ValueError(f"paired_difference needs one value per seed on both sides, got {len(a)} and {len(b)} "
                         "values; run both methods on the same seeds.")
    return mean_ci([x - y for x, y in zip(a, b, strict=True)], confidence)
