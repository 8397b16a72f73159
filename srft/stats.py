"""Statistics and verdict rules of `srft experiment`: pure functions on plain numbers.

Means and standard deviations over seeds, Student's t quantiles, Welch's t and the
Welch 95% interval of a difference of means, and the rules that turn an interval (or
the steps at which two curves reach an accuracy) into a verdict on a claim. Only the
standard library: importable without torch.

Later work adds the Holm correction (several claims tested together) and the detectable
difference (the smallest gap a grid of n seeds can separate) here.
"""

from __future__ import annotations

import math
import statistics

__all__ = ["mean_std", "steps_to_reach", "T_CRIT", "welch_t", "T975", "t975", "welch_interval",
           "interval_verdict", "speed_verdict"]


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite values of xs (None and nan skipped):
    (nan, nan) when there is none, std 0.0 for a single value."""
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def steps_to_reach(curve: list[tuple[int, float]], target: float):
    """First evaluated step at which a mean accuracy curve reaches target (None if never)."""
    for step, v in curve:
        if v >= target:
            return step
    return None


# two-sided 5% critical values of Student's t for n seeds per method, equal variances (df = 2n - 2);
# Welch's df is at most this, so these are a lenient threshold
T_CRIT = {2: 4.30, 3: 2.78, 4: 2.45, 5: 2.31}


def welch_t(m1: float, s1: float, m2: float, s2: float, n: int) -> float:
    """Welch's t statistic for two means of n samples each with standard deviations s1, s2."""
    se = math.sqrt((s1 * s1 + s2 * s2) / n)
    if se == 0:
        return 0.0 if m1 == m2 else math.copysign(math.inf, m1 - m2)
    return (m1 - m2) / se


# two-sided 95% quantiles of Student's t by degrees of freedom (a fractional Welch df is rounded
# down: a slightly wider interval)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t975(df: float) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (from T975, df rounded down)."""
    if not math.isfinite(df):
        return 1.960
    d = max(1, int(math.floor(df)))
    return T975[max(k for k in T975 if k <= d)] if d <= 120 else 1.960


def welch_interval(xs: list[float], ys: list[float]) -> tuple[float, float, float, float]:
    """mean(xs) - mean(ys) with its Welch 95% interval: (difference, low, high, df). With zero
    variance in both samples the interval is the difference itself."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    vx = statistics.variance(xs) / len(xs) if len(xs) > 1 else 0.0
    vy = statistics.variance(ys) / len(ys) if len(ys) > 1 else 0.0
    d, se2 = mx - my, vx + vy
    if se2 == 0:
        return d, d, d, math.inf
    denom = (vx * vx / (len(xs) - 1) if len(xs) > 1 else 0.0) + (vy * vy / (len(ys) - 1) if len(ys) > 1 else 0.0)
    df = se2 * se2 / denom if denom > 0 else math.inf
    half = t975(df) * math.sqrt(se2)
    return d, d - half, d + half, df


def interval_verdict(low: float, high: float) -> str:
    """The rule for every claim "A above B": "holds" when the 95% interval of A - B is above 0,
    "fails" when it is below 0, "not distinguishable" when it contains 0."""
    return "holds" if low > 0 else ("fails" if high < 0 else "not distinguishable")


def speed_verdict(ours, own) -> str:
    """The rule for "A reaches B's final accuracy sooner than B": `ours` is the first evaluated
    step at which A's mean curve reaches it (None: never), `own` the step at which B first does.
    "holds" when earlier, "fails" when later or never, "not distinguishable" at the same step."""
    return "fails" if ours is None or ours > own else "holds" if ours < own else "not distinguishable"
