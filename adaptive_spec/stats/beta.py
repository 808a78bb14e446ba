"""Beta posteriors for acceptance probabilities, without scipy (a runtime dependency we do not need).

``Beta(a, b)`` after ``s`` accepted out of ``n`` tried, with prior ``Beta(a0, b0)``, is ``Beta(a0 + s, b0 + n - s)``.
Decayed counts are fractional; the formulas do not mind. Quantiles come from the regularized incomplete beta
function (continued fraction, Numerical Recipes 6.4) inverted by Halley steps; tests compare with scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

_EPS = 1e-15
_TINY = 1e-300
_MAX_TERMS = 20_000  # the continued fraction needs O(sqrt(max(a, b))) terms
_NORMAL_ABOVE = 1e5  # both parameters this large: the normal approximation is exact to ~1e-3 of an sd


@dataclass(frozen=True, slots=True)
class BetaPosterior:
    """Posterior over one acceptance probability: ``Beta(a, b)``; ``a + b`` is its weight in pseudo-trials."""

    a: float
    b: float

    @property
    def mean(self) -> float:
        return self.a / (self.a + self.b)

    @property
    def weight(self) -> float:
        return self.a + self.b

    @property
    def sd(self) -> float:
        n = self.a + self.b
        return math.sqrt(self.a * self.b / (n * n * (n + 1.0)))

    def quantile(self, q: float) -> float:
        return beta_ppf(q, self.a, self.b)

    def interval(self, level: float = 0.9) -> tuple[float, float]:
        """Equal-tailed credible interval holding ``level`` of the posterior mass."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level}")
        tail = (1.0 - level) / 2.0
        return self.quantile(tail), self.quantile(1.0 - tail)

    def with_weight(self, max_weight: float) -> BetaPosterior:
        """The same mean with at most ``max_weight`` pseudo-trials (used to turn an estimate into a prior)."""
        n = self.a + self.b
        if n <= max_weight:
            return self
        return BetaPosterior(self.mean * max_weight, (1.0 - self.mean) * max_weight)

    def updated(self, successes: float, trials: float) -> BetaPosterior:
        return BetaPosterior(self.a + successes, self.b + trials - successes)


def _continued_fraction(a: float, b: float, x: float) -> float:
    """Modified Lentz evaluation of the incomplete beta continued fraction."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _MAX_TERMS):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def beta_cdf(x: float, a: float, b: float) -> float:
    """Regularized incomplete beta ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(a * math.log(x) + b * math.log1p(-x) - _log_beta(a, b))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _continued_fraction(a, b, x) / a
    return 1.0 - front * _continued_fraction(b, a, 1.0 - x) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """Inverse of :func:`beta_cdf` in ``x`` (Numerical Recipes' ``invbetai``)."""
    if not (a > 0.0 and b > 0.0):
        raise ValueError(f"Beta parameters must be positive, got a={a}, b={b}")
    if q <= 0.0:
        return 0.0
    if q >= 1.0:
        return 1.0
    if a > _NORMAL_ABOVE and b > _NORMAL_ABOVE:
        n = a + b
        mean, sd = a / n, math.sqrt(a * b / (n * n * (n + 1.0)))
        return min(1.0, max(0.0, NormalDist(mean, sd).inv_cdf(q)))
    if a >= 1.0 and b >= 1.0:  # a normal-ish first guess
        pp = q if q < 0.5 else 1.0 - q
        t = math.sqrt(-2.0 * math.log(pp))
        x = (2.30753 + t * 0.27061) / (1.0 + t * (0.99229 + t * 0.04481)) - t
        if q < 0.5:
            x = -x
        al = (x * x - 3.0) / 6.0
        h = 2.0 / (1.0 / (2.0 * a - 1.0) + 1.0 / (2.0 * b - 1.0))
        w = x * math.sqrt(al + h) / h - (1.0 / (2.0 * b - 1.0) - 1.0 / (2.0 * a - 1.0)) * (al + 5.0 / 6.0 - 2.0 / (3.0 * h))
        x = a / (a + b * math.exp(min(2.0 * w, 700.0)))
    else:  # a tail-power first guess
        lna, lnb = math.log(a / (a + b)), math.log(b / (a + b))
        t, u = math.exp(a * lna) / a, math.exp(b * lnb) / b
        w = t + u
        x = (a * w * q) ** (1.0 / a) if q < t / w else 1.0 - (b * w * (1.0 - q)) ** (1.0 / b)
    a1, b1, log_norm = a - 1.0, b - 1.0, -_log_beta(a, b)
    for j in range(64):
        if x <= 0.0 or x >= 1.0:
            return min(1.0, max(0.0, x))
        err = beta_cdf(x, a, b) - q
        density = math.exp(a1 * math.log(x) + b1 * math.log1p(-x) + log_norm)
        if density == 0.0:
            break
        u = err / density
        step = u / (1.0 - 0.5 * min(1.0, u * (a1 / x - b1 / (1.0 - x))))  # Halley
        x -= step
        if x <= 0.0:
            x = 0.5 * (x + step)
        if x >= 1.0:
            x = 0.5 * (x + step + 1.0)
        if abs(step) < 1e-10 * x and j > 0:
            break
    return min(1.0, max(0.0, x))
