"""srft.stats against numbers worked out by hand or read from printed t tables."""

from __future__ import annotations

import math

import pytest

from srft.stats import holm, min_detectable_difference, t_cdf, t_quantile, welch_df, welch_p


@pytest.mark.parametrize("p,df,table", [(0.975, 4, 2.776), (0.975, 8, 2.306), (0.8, 4, 0.941), (0.8, 8, 0.889),
                                        (0.95, 10, 1.812), (0.975, 1, 12.706), (0.975, math.inf, 1.960)])
def test_t_quantiles_match_the_printed_table(p, df, table):
    assert abs(t_quantile(p, df) - table) < 1e-3
    assert abs(t_cdf(t_quantile(p, df), df) - p) < 1e-9
    assert abs(t_cdf(0.0, df) - 0.5) < 1e-12


def test_holm_by_hand():
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_welch_p_by_hand():
    # means 3 and 5, variances 2.5 and 2.5 over 5: se = 1, t = 2, df = 8; P(|T8| > 2) = 0.0805
    assert welch_p([1, 2, 3, 4, 5], [3, 4, 5, 6, 7]) == pytest.approx(0.0805, abs=1e-4)
    assert welch_df(2.5, 2.5, 5, 5) == pytest.approx(8.0)


def test_min_detectable_difference_by_hand():
    # sd 2 and 2 over 5 seeds each: se = sqrt(0.8 + 0.8) = 1.2649, df = 8;
    # (t_.975,8 + t_.8,8) x se = (2.306 + 0.889) x 1.2649 = 4.041
    assert min_detectable_difference(2, 2, 5, 5) == pytest.approx(4.041, abs=2e-3)
    # more seeds, a smaller detectable difference; no spread, none to detect
    assert min_detectable_difference(2, 2, 10, 10) < min_detectable_difference(2, 2, 5, 5)
    assert min_detectable_difference(0, 0, 5, 5) == 0.0
