"""The seed tests of the results pages (experiments/seed_statistics.py) against closed forms and
values worked by hand."""
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import seed_statistics as stats  # noqa: E402


def t_two_sided_p(t, df):
    """Closed forms of Student's t: df 1 (Cauchy), 2 and 4."""
    t = abs(t)
    if df == 1:
        return 1 - 2 / math.pi * math.atan(t)
    if df == 2:
        return 1 - t / math.sqrt(2 + t * t)
    u = t * t / 4
    return 1 - 2 * (3 / 8) * t / math.sqrt(1 + u) * (1 - u / (3 * (1 + u)))  # df 4


@pytest.mark.parametrize("t,df", [(0.5, 1), (2.5, 1), (1.3, 2), (6.0, 2), (0.2, 4), (3.0, 4)])
def test_incomplete_beta_gives_students_t(t, df):
    p = stats.regularized_incomplete_beta(df / (df + t * t), df / 2, 0.5)
    assert p == pytest.approx(t_two_sided_p(t, df), abs=1e-12)


@pytest.mark.parametrize("df, expected", [
    (1, math.tan(0.475 * math.pi)),  # Cauchy: P(|T| <= t) = 2 atan(t) / pi
    (2, math.sqrt(2 * 0.95 ** 2 / (1 - 0.95 ** 2))),  # df 2: P(|T| <= t) = t / sqrt(2 + t^2)
])
def test_quantile_inverts_the_closed_forms(df, expected):
    assert stats.t_quantile(0.95, df) == pytest.approx(expected, rel=1e-10)


def test_quantile_at_four_degrees_of_freedom_is_the_tabled_value():
    q = stats.t_quantile(0.95, 4)
    assert t_two_sided_p(q, 4) == pytest.approx(0.05, abs=1e-12) and q == pytest.approx(2.7764, abs=1e-4)
    assert stats.t_quantile(0.95, 1e6) == pytest.approx(1.95996, abs=1e-4)  # the normal's, far out
    with pytest.raises(ValueError):
        stats.t_quantile(1.0, 4)


def test_welch_test_by_hand():
    # means 2 and 5, variances 1 and 1, three values each: t = -3 / sqrt(2/3), df = (2/3)^2 / (2 (1/3)^2 / 2) = 4
    test = stats.welch_test([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert test.t == pytest.approx(-3 / math.sqrt(2 / 3)) and test.df == pytest.approx(4.0)
    assert test.p == pytest.approx(t_two_sided_p(test.t, 4), abs=1e-12) and test.p == pytest.approx(0.0213, abs=1e-4)
    # the interval: -3 +- 2.7764 * sqrt(2/3) = -3 +- 2.2669
    assert test.difference == -3.0
    assert (test.low, test.high) == (pytest.approx(-5.2669, abs=1e-4), pytest.approx(-0.7331, abs=1e-4))
    assert test.excludes_zero
    # unequal variances: 1 and 4 over three values each, df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 50/17
    assert stats.welch_test([1.0, 2.0, 3.0], [0.0, 2.0, 4.0]).df == pytest.approx(50 / 17)
    assert stats.welch_test([1.0], [2.0, 3.0]) is None and stats.welch_test([1.0, 1.0], [2.0, 2.0]) is None


def test_an_interval_across_zero_does_not_exclude_it():
    test = stats.welch_test([1.0, 2.0, 3.0], [1.5, 2.5, 3.5])  # difference -0.5, half-width 2.2669
    assert test.low == pytest.approx(-2.7669, abs=1e-4) and test.high == pytest.approx(1.7669, abs=1e-4)
    assert not test.excludes_zero and test.p == pytest.approx(t_two_sided_p(-0.5 / math.sqrt(2 / 3), 4), abs=1e-12)


def test_paired_test_by_hand():
    # per-seed differences 1, 2, 3 (each seed's second value shifted by its own amount):
    # mean 2, sd 1, t = 2 / (1 / sqrt 3) = 2 sqrt 3 at df 2
    test = stats.paired_test([11.0, 22.0, 33.0], [10.0, 20.0, 30.0])
    assert test.difference == pytest.approx(2.0) and test.df == 2
    assert test.t == pytest.approx(2 * math.sqrt(3))
    assert test.p == pytest.approx(t_two_sided_p(2 * math.sqrt(3), 2), abs=1e-12)  # 1 - sqrt(12/14)
    half = math.sqrt(2 * 0.95 ** 2 / (1 - 0.95 ** 2)) / math.sqrt(3)
    assert (test.low, test.high) == (pytest.approx(2 - half), pytest.approx(2 + half))
    # the same values unpaired: the seeds' spread swamps the shift
    assert not stats.welch_test([11.0, 22.0, 33.0], [10.0, 20.0, 30.0]).excludes_zero
    assert stats.paired_test([1.0, 2.0], [0.0, 1.0]) is None  # no spread of the differences
    assert stats.paired_test([1.0], [0.0]) is None
    with pytest.raises(ValueError, match="pairs"):
        stats.paired_test([1.0, 2.0], [1.0])
