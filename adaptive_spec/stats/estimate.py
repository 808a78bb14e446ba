"""Rates computed on read: from decayed counters to posteriors and the figures a policy or a person reads.

Two weightings, because they answer different questions:

- token-weighted: ``alpha = accepted_tokens / draft_tokens`` and ``mean_accepted = accepted_tokens / rounds``
  pool every round, so long completions dominate;
- request-weighted: ``request_alpha`` averages each finished request's own alpha, so every request counts once.

Worked example: with prior Beta(1, 1) and a key that tried position 1 in 10 rounds and accepted it in 8, the
position-1 posterior is Beta(9, 3): mean 0.75, 90% interval about (0.53, 0.92).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from .beta import BetaPosterior
from .counters import (
    ACCEPTED,
    DRAFT,
    EMITTED,
    EMPTY,
    N_SCALARS,
    REQ_ACCEPTED,
    REQ_ALPHA,
    REQ_ALPHA_SQ,
    REQ_HIGH,
    REQ_INV_TOKENS,
    REQ_LOW,
    REQUESTS,
    ROUNDS,
    T_ACCEPTED,
    T_DRAFT,
    T_REQUESTS,
    T_ROUNDS,
    T_TOKENS,
    CounterSpec,
    Counters,
)
from .keys import StatsKey
from .request import DrafterCounts, RequestStats


@dataclass(frozen=True, slots=True)
class Prior:
    """Beta(mean * strength, (1 - mean) * strength) for every position, and for alpha, before any data."""

    mean: float = 0.5
    strength: float = 2.0

    def __post_init__(self) -> None:
        if not (0.0 < self.mean < 1.0 and self.strength > 0.0):
            raise ValueError(f"prior needs 0 < mean < 1 and strength > 0, got {self.mean}, {self.strength}")

    @property
    def posterior(self) -> BetaPosterior:
        return BetaPosterior(self.mean * self.strength, (1.0 - self.mean) * self.strength)


@dataclass(frozen=True, slots=True)
class Acceptance:
    """What a policy needs to choose k: acceptance per draft position and token-level alpha, as posteriors."""

    positions: tuple[BetaPosterior, ...]  # [K] P(accept position j+1 | position j accepted)
    alpha: BetaPosterior  # token-level: accepted / proposed

    def expected_accepted(self, k: int) -> float:
        """E[accepted tokens] for a round proposing ``k``: sum over i <= k of prod over j <= i of p_j.

        Positions beyond the tracked ones reuse the last tracked position's mean.
        """
        total, survive = 0.0, 1.0
        for i in range(k):
            survive *= self.positions[min(i, len(self.positions) - 1)].mean
            total += survive
        return total

    def position_means(self) -> list[float]:
        return [p.mean for p in self.positions]


@dataclass(frozen=True, slots=True)
class Estimate:
    """A key's decayed counts with the rates and posteriors derived from them (``counts`` are raw, decayed)."""

    key: StatsKey
    acceptance: Acceptance
    rounds: float  # decayed counts: the effective sample sizes
    empty_rounds: float
    draft_tokens: float
    accepted_tokens: float
    emitted_tokens: float
    tried: tuple[float, ...]  # [K] decayed tried_j
    requests: float
    request_alpha_sum: float
    request_accepted_sum: float
    requests_low: float
    requests_high: float
    request_alpha_sq_sum: float
    request_inv_tokens_sum: float
    total_rounds: int  # lifetime, not decayed
    total_draft_tokens: int
    total_accepted_tokens: int
    total_requests: int
    total_tokens: int  # the decay clock: proposed tokens, 1 per round that proposed none
    updated_at: float | None  # unix seconds of the latest observation; None: no data (prior only)

    @classmethod
    def from_counters(cls, key: StatsKey, counters: Counters | None, prior: Prior, k: int, now: float | None = None) -> Estimate:
        now = time.time() if now is None else now
        if counters is None or counters.empty:
            counters = Counters(CounterSpec(None, None, k))
        k = counters.spec.max_positions
        v, t = counters.values_at(now), counters.totals
        base = prior.posterior
        positions = tuple(base.updated(v[N_SCALARS + k + j], v[N_SCALARS + j]) for j in range(k))
        acceptance = Acceptance(positions, base.updated(v[ACCEPTED], v[DRAFT]))
        return cls(
            key=key,
            acceptance=acceptance,
            rounds=v[ROUNDS],
            empty_rounds=v[EMPTY],
            draft_tokens=v[DRAFT],
            accepted_tokens=v[ACCEPTED],
            emitted_tokens=v[EMITTED],
            tried=tuple(v[N_SCALARS : N_SCALARS + k]),
            requests=v[REQUESTS],
            request_alpha_sum=v[REQ_ALPHA],
            request_accepted_sum=v[REQ_ACCEPTED],
            requests_low=v[REQ_LOW],
            requests_high=v[REQ_HIGH],
            request_alpha_sq_sum=v[REQ_ALPHA_SQ],
            request_inv_tokens_sum=v[REQ_INV_TOKENS],
            total_rounds=round(t[T_ROUNDS]),
            total_draft_tokens=round(t[T_DRAFT]),
            total_accepted_tokens=round(t[T_ACCEPTED]),
            total_requests=round(t[T_REQUESTS]),
            total_tokens=round(t[T_TOKENS]),
            updated_at=counters.updated_at,
        )

    # --- posteriors ----------------------------------------------------------------------------------------

    @property
    def positions(self) -> tuple[BetaPosterior, ...]:
        return self.acceptance.positions

    @property
    def alpha(self) -> BetaPosterior:
        """Token-level alpha as a posterior (prior included); ``.mean``, ``.interval(level)``."""
        return self.acceptance.alpha

    def expected_accepted(self, k: int) -> float:
        return self.acceptance.expected_accepted(k)

    # --- plain rates (None without data) ---------------------------------------------------------------------

    @property
    def has_data(self) -> bool:
        return self.updated_at is not None

    @property
    def alpha_observed(self) -> float | None:
        """accepted_tokens / draft_tokens, token-weighted, no prior."""
        return _ratio(self.accepted_tokens, self.draft_tokens)

    @property
    def mean_accepted(self) -> float | None:
        """Accepted tokens per round, round-weighted (rounds that proposed nothing included)."""
        return _ratio(self.accepted_tokens, self.rounds)

    @property
    def hit_rate(self) -> float | None:
        """Share of rounds that proposed something (below 1 for lookup drafters)."""
        return None if not self.rounds else 1.0 - self.empty_rounds / self.rounds

    @property
    def request_alpha(self) -> float | None:
        """Mean of per-request alpha: every finished request counts once."""
        return _ratio(self.request_alpha_sum, self.requests)

    @property
    def request_mean_accepted(self) -> float | None:
        return _ratio(self.request_accepted_sum, self.requests)

    def request_spread(self, min_requests: int = 3) -> float | None:
        """Variance of alpha between requests, net of each request's own sampling noise (method of moments:
        the variance of request alpha minus mean(alpha (1 - alpha) / its draft tokens), over the decayed
        counts); None before ``min_requests`` requests (lifetime) or without requests counted with their tokens.

        A class whose requests all accept alike has spread ~0, and its mean is a good guess for the next request;
        one that pools unlike requests (prose with code, say, for a head trained on code) has a large one."""
        n = self.requests
        if self.total_requests < min_requests or n <= 1.0 or self.request_alpha_sq_sum <= 0.0:
            return None
        mean = self.request_alpha_sum / n
        variance = (self.request_alpha_sq_sum / n - mean * mean) * n / (n - 1.0)
        return max(variance - mean * (1.0 - mean) * self.request_inv_tokens_sum / n, 0.0)

    def request_strength(self, min_requests: int = 3) -> float | None:
        """How many draft tokens of a new request's own say as much about it as the class's mean does: the
        strength n0 = mean (1 - mean) / spread - 1 of the Beta distribution with the requests' mean and spread
        (inf when requests agree); None when the spread is unknown (``request_spread``)."""
        spread = self.request_spread(min_requests)
        if spread is None:
            return None
        mean = self.request_alpha_sum / self.requests
        return math.inf if spread <= 0.0 else max(mean * (1.0 - mean) / spread - 1.0, 0.0)

    @property
    def extreme_share(self) -> tuple[float, float] | None:
        """Shares of requests flagged with alpha ~ 0 and alpha ~ 1."""
        if not self.requests:
            return None
        return self.requests_low / self.requests, self.requests_high / self.requests

    def age_s(self, now: float | None = None) -> float | None:
        """Seconds since the latest observation."""
        if self.updated_at is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.updated_at)

    def to_dict(self, level: float = 0.9, now: float | None = None) -> dict[str, Any]:
        """JSON-ready summary (what ``adaptive-spec stats --json`` prints per key)."""
        lo, hi = self.alpha.interval(level)
        positions = []
        for j, (p, tried) in enumerate(zip(self.positions, self.tried), start=1):
            if tried <= 0.0:
                continue
            p_lo, p_hi = p.interval(level)
            positions.append({"position": j, "mean": p.mean, "interval": [p_lo, p_hi], "tried": tried})
        return {
            "pair_id": self.key.pair_id,
            "request_class": self.key.request_class,
            "drafter": self.key.drafter,
            "alpha": self.alpha.mean,
            "alpha_interval": [lo, hi],
            "interval_level": level,
            "alpha_observed": self.alpha_observed,
            "mean_accepted": self.mean_accepted,
            "hit_rate": self.hit_rate,
            "request_alpha": self.request_alpha,
            "request_mean_accepted": self.request_mean_accepted,
            "extreme_share": list(self.extreme_share) if self.extreme_share else None,
            "request_alpha_std": None if (spread := self.request_spread()) is None else math.sqrt(spread),
            "positions": positions,
            "rounds": self.rounds,
            "draft_tokens": self.draft_tokens,
            "requests": self.requests,
            "total_rounds": self.total_rounds,
            "total_draft_tokens": self.total_draft_tokens,
            "total_accepted_tokens": self.total_accepted_tokens,
            "total_requests": self.total_requests,
            "total_tokens": self.total_tokens,
            "updated_at": self.updated_at,
            "age_s": self.age_s(now),
        }


def blend(class_estimate: Estimate | Acceptance, request: RequestStats | DrafterCounts, max_prior_weight: float = 32.0) -> Acceptance:
    """Posterior for the current request: the class estimate as a prior, capped at ``max_prior_weight``
    pseudo-rounds per position, updated with the request's own counts.

    The cap is what lets a request that behaves unlike its class (a loop, a copy) move away from the class
    mean within a few dozen rounds, however much data the class has. With a ``RequestStats``, the counts of
    the estimate's drafter are used.
    """
    if not max_prior_weight > 0.0:
        raise ValueError(f"max_prior_weight must be positive, got {max_prior_weight}")
    acceptance = class_estimate.acceptance if isinstance(class_estimate, Estimate) else class_estimate
    if isinstance(request, RequestStats):
        if not isinstance(class_estimate, Estimate):
            raise TypeError("pass DrafterCounts, or an Estimate (whose drafter picks the counts)")
        request = request.counts(class_estimate.key.drafter)
    positions = []
    for j, prior in enumerate(acceptance.positions):
        tried = request.tried[j] if j < len(request.tried) else 0
        accepted = request.accepted[j] if j < len(request.accepted) else 0
        positions.append(prior.with_weight(max_prior_weight).updated(accepted, tried))
    alpha = acceptance.alpha.with_weight(max_prior_weight).updated(request.accepted_tokens, request.draft_tokens)
    return Acceptance(tuple(positions), alpha)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0.0 and math.isfinite(num / den) else None

