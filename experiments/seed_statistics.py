"""Tests of a difference between the seed values of two rows of a results table: Welch's t-test
(independent seeds) and the paired t-test (seeds that share their draws), each with its
confidence interval; Student's t from the regularized incomplete beta function, since
scipy is not a dependency.
"""
from __future__ import annotations

import dataclasses
import math
import statistics

LEVEL = 0.95  # confidence of the intervals


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), by the continued fraction of Numerical Recipes (6.4) evaluated with Lentz's method."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x = {x} is outside [0, 1]")
    if x in (0.0, 1.0):
        return x
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast only below this point
        return 1.0 - regularized_incomplete_beta(1.0 - x, b, a)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * fraction / a


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| > |t|) for Student's t with `df` degrees of freedom."""
    return regularized_incomplete_beta(df / (df + t * t), df / 2, 0.5)


def t_quantile(level: float, df: float) -> float:
    """The t > 0 with P(|T| <= t) = `level` (2.776 for 0.95 at df 4), by bisection."""
    if not 0.0 < level < 1.0 or not df > 0:
        raise ValueError(f"need 0 < level < 1 and df > 0, got {level}, {df}")
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > 1.0 - level:
        low, high = high, 2.0 * high
    for _ in range(200):
        middle = (low + high) / 2
        if t_two_sided_p(middle, df) > 1.0 - level:
            low = middle
        else:
            high = middle
        if high - low <= 1e-13 * high:
            break
    return (low + high) / 2


@dataclasses.dataclass(frozen=True)
class TTest:
    """A t-test of mean(first) - mean(second), with its LEVEL confidence interval."""

    difference: float  # mean(first) - mean(second) (the mean of the paired differences, paired)
    t: float  # the statistic
    df: float  # degrees of freedom (Welch-Satterthwaite, or pairs - 1)
    p: float  # two-sided p-value
    low: float  # the interval's lower end
    high: float  # its upper end

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def _t_test(difference: float, variance: float, df: float) -> TTest:
    """From the difference and the variance of its estimate."""
    error = math.sqrt(variance)
    t = difference / error
    half = t_quantile(LEVEL, df) * error
    return TTest(difference, t, df, t_two_sided_p(t, df), difference - half, difference + half)


def welch_test(first: list[float], second: list[float]) -> TTest | None:
    """Welch's unequal-variance t-test; None when a group has fewer than two values or both have no spread."""
    if len(first) < 2 or len(second) < 2:
        return None
    share_1 = statistics.variance(first) / len(first)
    share_2 = statistics.variance(second) / len(second)
    if share_1 + share_2 == 0:
        return None
    df = (share_1 + share_2) ** 2 / (share_1 ** 2 / (len(first) - 1) + share_2 ** 2 / (len(second) - 1))
    return _t_test(statistics.fmean(first) - statistics.fmean(second), share_1 + share_2, df)


def paired_test(first: list[float], second: list[float]) -> TTest | None:
    """The paired t-test of first[i] - second[i] (values of one seed); None below two pairs or
    when every pair differs by the same amount."""
    if len(first) != len(second):
        raise ValueError(f"{len(first)} values against {len(second)}: a paired test needs pairs")
    differences = [a - b for a, b in zip(first, second)]
    if len(differences) < 2:
        return None
    variance = statistics.variance(differences) / len(differences)
    if variance == 0:
        return None
    return _t_test(statistics.fmean(differences), variance, len(differences) - 1)
