"""Statistics and verdict rules of `srft experiment`: pure functions on plain numbers.

Means and standard deviations over seeds, Student's t quantiles, Welch's t and the
Welch 95% interval of a difference of means, and the rules that turn an interval (or
the steps at which two curves reach an accuracy) into a verdict on a claim. Only the
standard library: importable without torch.

Student's t distribution for any df and probability (`t_cdf`, `t_quantile`: the regularised
incomplete beta function by its continued fraction, inverted by bisection), Welch's two-sided
p-value (`welch_p`), the Holm correction of several claims tested together (`holm`) and the
smallest difference a grid of n seeds can detect (`min_detectable_difference`).
"""

from __future__ import annotations

import math
import statistics

__all__ = ["mean_std", "steps_to_reach", "T_CRIT", "welch_t", "T975", "t975", "welch_interval",
           "interval_verdict", "speed_verdict", "t_cdf", "t_quantile", "welch_df", "welch_p", "holm",
           "min_detectable_difference"]


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


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom (df = inf: the normal distribution)."""
    if not math.isfinite(df):
        return 0.5 * (1.0 + math.erf(t / math.sqrt(2.0)))
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom (bisection on t_cdf)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p must be in (0, 1), got {p}")
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


def welch_df(va: float, vb: float, n_a: int, n_b: int) -> float:
    """Welch-Satterthwaite degrees of freedom for sample variances va, vb of n_a, n_b values."""
    a, b = va / n_a, vb / n_b
    denom = (a * a / (n_a - 1) if n_a > 1 else 0.0) + (b * b / (n_b - 1) if n_b > 1 else 0.0)
    return (a + b) ** 2 / denom if denom > 0 else math.inf


def welch_p(xs: list[float], ys: list[float]) -> float:
    """Two-sided p-value of Welch's t test of mean(xs) = mean(ys)."""
    d, _, _, df = welch_interval(xs, ys)
    vx = statistics.variance(xs) / len(xs) if len(xs) > 1 else 0.0
    vy = statistics.variance(ys) / len(ys) if len(ys) > 1 else 0.0
    if vx + vy == 0:
        return 1.0 if d == 0 else 0.0
    return 2.0 * (1.0 - t_cdf(abs(d) / math.sqrt(vx + vy), df))


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the k-th smallest of m gets
    max over j <= k of min(1, (m - j + 1) p_(j)). A claim holds at family-wise level alpha when
    its adjusted p-value is below alpha."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def min_detectable_difference(sd_a: float, sd_b: float, n_a: int, n_b: int, alpha: float = 0.05,
                              power: float = 0.8) -> float:
    """The smallest true difference of means a two-sided Welch test at level `alpha` detects with
    probability `power`, for standard deviations sd_a, sd_b over n_a, n_b seeds:
    (t_{1 - alpha/2, df} + t_{power, df}) x sqrt(sd_a^2 / n_a + sd_b^2 / n_b), df by Welch-Satterthwaite
    (the usual normal-shift approximation, with t in place of z)."""
    va, vb = sd_a * sd_a, sd_b * sd_b
    se = math.sqrt(va / n_a + vb / n_b)
    if se == 0:
        return 0.0
    df = welch_df(va, vb, n_a, n_b)
    return (t_quantile(1.0 - alpha / 2.0, df) + t_quantile(power, df)) * se
