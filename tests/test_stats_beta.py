"""Beta quantiles without scipy agree with scipy."""

from __future__ import annotations

import itertools

import pytest
from scipy import stats

from adaptive_spec.stats.beta import BetaPosterior, beta_cdf, beta_ppf

PARAMS = [0.05, 0.5, 1.0, 2.5, 10.0, 123.4, 5e3, 2e5, 3e6]
QUANTILES = [1e-4, 0.025, 0.05, 0.5, 0.95, 0.975, 0.9999]


@pytest.mark.parametrize(("a", "b"), list(itertools.product(PARAMS, PARAMS)))
def test_ppf_matches_scipy(a, b):
    sd = stats.beta(a, b).std()
    for q in QUANTILES:
        assert abs(beta_ppf(q, a, b) - stats.beta.ppf(q, a, b)) <= max(0.02 * sd, 1e-12), (a, b, q)


@pytest.mark.parametrize(("a", "b"), [(0.5, 0.5), (3.0, 7.0), (400.0, 20.0), (2e4, 3e4)])
def test_cdf_matches_scipy(a, b):
    for x in (1e-6, 0.01, 0.3, 0.5, 0.7, 0.99, 1 - 1e-6):
        assert beta_cdf(x, a, b) == pytest.approx(stats.beta.cdf(x, a, b), abs=1e-9)


def test_posterior_interval_and_weight_cap():
    p = BetaPosterior(9.0, 3.0)  # prior Beta(1, 1), 8 of 10 accepted
    lo, hi = p.interval(0.9)
    assert lo < p.mean < hi
    assert (lo, hi) == pytest.approx(stats.beta.interval(0.9, 9.0, 3.0), abs=1e-7)
    capped = BetaPosterior(800.0, 200.0).with_weight(10.0)
    assert capped.mean == pytest.approx(0.8) and capped.weight == pytest.approx(10.0)
    assert BetaPosterior(8.0, 2.0).with_weight(100.0) == BetaPosterior(8.0, 2.0)
    with pytest.raises(ValueError):
        p.interval(1.5)
