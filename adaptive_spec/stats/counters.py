"""Raw, exponentially decayed counters for one key: the only state a store keeps. Rates are computed on read.

Counters (names follow vLLM's ``num_draft_tokens`` / ``num_accepted_tokens_per_pos``):

=====================  =======================================================================================
``rounds``             rounds run with this drafter (a lookup miss is a round that proposed nothing)
``empty_rounds``       rounds that proposed nothing
``draft_tokens``       tokens proposed
``accepted_tokens``    proposed tokens the target accepted
``emitted_tokens``     tokens appended to the output (accepted + bonus/recovered)
``tried_j``            rounds in which draft position j was judged, i.e. j <= min(accepted + 1, proposed)
``accepted_j``         rounds in which position j was accepted, i.e. j <= accepted (so accepted_j/tried_j is
                       the acceptance at j given j - 1 was accepted)
``requests``           finished requests that proposed at least one token with this drafter
``request_alpha_sum``  sum over those requests of their own alpha (request-weighted alpha = this / requests)
``request_accepted_sum`` sum of their mean accepted tokens per round
``requests_low/high``  requests flagged with alpha ~ 0 / ~ 1 over many rounds (see ``RequestStats.extreme``)
``request_alpha_sq_sum``  sum of their alpha squared, and ``request_inv_tokens_sum`` of 1 / their draft tokens:
                       how far requests of a key differ from each other beyond their own sampling noise
                       (``Estimate.request_spread``); 0 for requests counted without their draft tokens
``total_*``            lifetime sums, never decayed: exact, so pooled counts can be checked
=====================  =======================================================================================

Worked example: a round with ``proposed=4, accepted=2`` adds 1 to ``tried_1..3`` and to ``accepted_1..2``.

Decay. Each observation's weight halves every ``half_life_tokens`` observed tokens of its key and every
``half_life_seconds`` of wall time. The token clock is ``total_tokens``: each round advances it by the tokens it
proposed, or by 1 if it proposed none (it still cost a target step). Instead of scaling every counter on every
round, new observations are added with a growing weight ``2**(clock/H)`` relative to an ``_origin``, and the
counters are rescaled when that weight gets large; readers see the true values. Merging a batch that observed
``n`` tokens into older counters (:meth:`Counters.absorb`) first decays the older ones by ``2**(-n/H)``: this is
what the Redis flush script does atomically, so the pooled state is the same whichever writer flushes first.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from ..records import RoundRecord
from .keys import SCHEMA_VERSION

SCALARS = (
    "rounds",
    "empty_rounds",
    "draft_tokens",
    "accepted_tokens",
    "emitted_tokens",
    "requests",
    "request_alpha_sum",
    "request_accepted_sum",
    "requests_low",
    "requests_high",
    "request_alpha_sq_sum",
    "request_inv_tokens_sum",
)
(ROUNDS, EMPTY, DRAFT, ACCEPTED, EMITTED, REQUESTS, REQ_ALPHA, REQ_ACCEPTED, REQ_LOW, REQ_HIGH, REQ_ALPHA_SQ,
 REQ_INV_TOKENS) = range(len(SCALARS))  # fmt: skip
N_SCALARS = len(SCALARS)
TOTALS = (
    "total_rounds",
    "total_draft_tokens",
    "total_accepted_tokens",
    "total_emitted_tokens",
    "total_requests",
    "total_tokens",
)
T_ROUNDS, T_DRAFT, T_ACCEPTED, T_EMITTED, T_REQUESTS, T_TOKENS = range(len(TOTALS))
# Fields of a stored hash that are not decayed counters.
META = ("schema", "updated_at", "half_life_tokens", "half_life_seconds")
_REBASE_AT = 64.0  # rescale once the newest weight reaches 2**64
_NUMBER = re.compile(r"[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?")  # the Lua script accepts exactly this too
_SLACK = 1e-6  # relative tolerance for rounding in consistency checks


class InvalidCounters(ValueError):
    """A stored value that must be ignored: garbage, NaN, negative, inconsistent or another schema version."""


@dataclass(frozen=True, slots=True)
class CounterSpec:
    """Decay and shape of a key's counters; every writer of a key should use the same."""

    half_life_tokens: float | None = 20_000.0
    half_life_seconds: float | None = None
    max_positions: int = 16

    def __post_init__(self) -> None:
        for name in ("half_life_tokens", "half_life_seconds"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be positive or None, got {value}")
        if not 1 <= self.max_positions <= 64:
            raise ValueError(f"max_positions must be in [1, 64], got {self.max_positions}")


@lru_cache(maxsize=64)
def field_names(max_positions: int) -> tuple[str, ...]:
    """Names of the decayed values, in ``Counters.values`` order: scalars, ``tried_1..K``, ``accepted_1..K``."""
    tried = tuple(f"tried_{j}" for j in range(1, max_positions + 1))
    accepted = tuple(f"accepted_{j}" for j in range(1, max_positions + 1))
    return SCALARS + tried + accepted


def _inverse(half_life: float | None) -> float:
    return 0.0 if half_life is None else 1.0 / half_life


class Counters:
    """Decayed counters (``values``) and exact lifetime sums (``totals``) for one key."""

    __slots__ = ("spec", "values", "totals", "updated_at", "_origin", "_coord", "_inv_tokens", "_inv_seconds", "_k")

    def __init__(self, spec: CounterSpec):
        self.spec = spec
        self._k = spec.max_positions
        self.values = [0.0] * (N_SCALARS + 2 * self._k)  # scaled by 2**(_coord - _origin); see real_values()
        self.totals = [0.0] * len(TOTALS)
        self.updated_at: float | None = None  # unix seconds of the latest observation
        self._origin = 0.0  # decay coordinate at which `values` are true
        self._coord = 0.0  # decay coordinate of the latest observation
        self._inv_tokens = _inverse(spec.half_life_tokens)
        self._inv_seconds = _inverse(spec.half_life_seconds)

    # --- writing -------------------------------------------------------------------------------------------

    def _weight(self, now: float) -> float:
        """Weight of an observation made now, after the token clock has advanced for it."""
        if self.updated_at is not None and now < self.updated_at:
            now = self.updated_at  # wall clock stepped back: do not un-decay
        coord = self.totals[T_TOKENS] * self._inv_tokens + now * self._inv_seconds
        if self.updated_at is None:
            self._origin = coord
        self.updated_at = now
        self._coord = coord
        lift = coord - self._origin
        if lift == 0.0:
            return 1.0
        if lift > _REBASE_AT:
            self._rebase()
            return 1.0
        return 2.0**lift

    def add_round(self, record: RoundRecord, now: float) -> None:
        """Count one round. ``now``: unix seconds."""
        proposed, accepted = record.proposed, record.accepted
        if not 0 <= accepted <= proposed:
            raise ValueError(f"a round needs 0 <= accepted <= proposed, got {accepted} of {proposed}")
        totals = self.totals
        totals[T_TOKENS] += proposed if proposed > 0 else 1
        w = self._weight(now)
        totals[T_ROUNDS] += 1
        totals[T_DRAFT] += proposed
        totals[T_ACCEPTED] += accepted
        totals[T_EMITTED] += record.emitted
        v = self.values
        v[ROUNDS] += w
        v[EMITTED] += w * record.emitted
        if proposed == 0:
            v[EMPTY] += w
            return
        v[DRAFT] += w * proposed
        v[ACCEPTED] += w * accepted
        k = self._k
        tried = min(accepted + 1, proposed, k)
        for j in range(N_SCALARS, N_SCALARS + tried):
            v[j] += w
        start = N_SCALARS + k
        for j in range(start, start + min(accepted, k)):
            v[j] += w

    def add_request(self, alpha: float, mean_accepted: float, extreme: str | None, now: float,
                    draft_tokens: int | None = None) -> None:  # fmt: skip
        """Count one finished request's own figures (does not advance the token clock); with its ``draft_tokens``
        also what the spread between requests is estimated from."""
        if not (0.0 <= alpha <= 1.0 and mean_accepted >= 0.0):
            raise ValueError(f"bad request figures: alpha={alpha}, mean_accepted={mean_accepted}")
        if draft_tokens is not None and draft_tokens < 1:
            raise ValueError(f"a request with an alpha proposed at least one token, got draft_tokens={draft_tokens}")
        self.totals[T_REQUESTS] += 1
        w = self._weight(now)
        v = self.values
        v[REQUESTS] += w
        v[REQ_ALPHA] += w * alpha
        v[REQ_ACCEPTED] += w * mean_accepted
        if extreme == "low":
            v[REQ_LOW] += w
        elif extreme == "high":
            v[REQ_HIGH] += w
        if draft_tokens is not None:
            v[REQ_ALPHA_SQ] += w * alpha * alpha
            v[REQ_INV_TOKENS] += w / draft_tokens

    def _rebase(self) -> None:
        factor = 2.0 ** (self._origin - self._coord)
        self.values = [x * factor for x in self.values]
        self._origin = self._coord

    # --- reading -------------------------------------------------------------------------------------------

    @property
    def empty(self) -> bool:
        return self.updated_at is None

    def real_values(self) -> list[float]:
        """Decayed values as of the latest observation."""
        factor = 2.0 ** (self._origin - self._coord)
        return list(self.values) if factor == 1.0 else [x * factor for x in self.values]

    def values_at(self, now: float) -> list[float]:
        """Decayed values as of ``now`` (only a seconds half-life decays with time alone)."""
        values = self.real_values()
        if self._inv_seconds and self.updated_at is not None and now > self.updated_at:
            factor = 2.0 ** (-(now - self.updated_at) * self._inv_seconds)
            values = [x * factor for x in values]
        return values

    def copy(self) -> Counters:
        other = Counters(self.spec)
        other.values = self.real_values()
        other.totals = list(self.totals)
        other.updated_at = self.updated_at
        other._origin = other._coord = self._coord
        return other

    def absorb(self, later: Counters) -> None:
        """Merge counters observed after (or alongside) ours: ours first decay by ``later``'s tokens and time."""
        if later.updated_at is None:
            return
        if len(later.values) != len(self.values):
            raise ValueError("cannot merge counters with different max_positions")
        if self.updated_at is None:
            self.values, self.totals = later.real_values(), list(later.totals)
            self.updated_at, self._origin, self._coord = later.updated_at, later._coord, later._coord
            return
        now = max(self.updated_at, later.updated_at)
        mine = 2.0 ** -(later.totals[T_TOKENS] * self._inv_tokens + (now - self.updated_at) * self._inv_seconds)
        theirs = 2.0 ** -((now - later.updated_at) * self._inv_seconds)
        self.values = [a * mine + b * theirs for a, b in zip(self.real_values(), later.real_values())]
        self.totals = [a + b for a, b in zip(self.totals, later.totals)]
        self.updated_at = now
        self._origin = self._coord = self.totals[T_TOKENS] * self._inv_tokens + now * self._inv_seconds

    # --- storage -------------------------------------------------------------------------------------------

    def to_fields(self) -> dict[str, str]:
        """Non-zero values and totals as strings, the way the Redis hash holds them."""
        out = {name: _fmt(x) for name, x in zip(field_names(self._k), self.real_values()) if x > 0.0}
        out.update((name, _fmt(x)) for name, x in zip(TOTALS, self.totals) if x > 0.0)
        return out

    @classmethod
    def from_fields(cls, spec: CounterSpec, raw: Mapping[str | bytes, str | bytes], clock_offset: float = 0.0) -> Counters:
        """Parse and check a stored hash; raise :class:`InvalidCounters` rather than return anything dubious.

        ``clock_offset`` converts the stored (Redis server) ``updated_at`` to this machine's clock.
        Positions beyond ``spec.max_positions`` are ignored.
        """
        fields = {_text(k): _text(v) for k, v in raw.items()}
        schema = fields.get("schema")
        if schema != str(SCHEMA_VERSION):
            raise InvalidCounters(f"schema version {schema!r}, expected '{SCHEMA_VERSION}'")
        numbers: dict[str, float] = {}
        for name, text in fields.items():
            if name == "schema":
                continue
            if not _NUMBER.fullmatch(text):
                raise InvalidCounters(f"{name}={text[:24]!r} is not a non-negative decimal number")
            number = float(text)
            if not math.isfinite(number):
                raise InvalidCounters(f"{name}={text[:24]!r} is not finite")
            numbers[name] = number
        if "updated_at" not in numbers:
            raise InvalidCounters("no updated_at")
        counters = cls(spec)
        counters.values = [numbers.get(name, 0.0) for name in field_names(spec.max_positions)]
        counters.totals = [numbers.get(name, 0.0) for name in TOTALS]
        _check_consistent(counters.values, counters.totals, spec.max_positions)
        counters.updated_at = numbers["updated_at"] + clock_offset
        counters._origin = counters._coord = (
            counters.totals[T_TOKENS] * counters._inv_tokens + counters.updated_at * counters._inv_seconds
        )
        return counters


def stored_half_lives(raw: Mapping[str | bytes, str | bytes]) -> tuple[float | None, float | None]:
    """The half-lives a stored hash decays with (0 or absent: none)."""
    fields = {_text(k): _text(v) for k, v in raw.items()}
    out = []
    for name in ("half_life_tokens", "half_life_seconds"):
        try:
            value = float(fields.get(name, "0"))
        except ValueError:
            value = 0.0
        out.append(value if value > 0 and math.isfinite(value) else None)
    return out[0], out[1]


def _check_consistent(values: list[float], totals: list[float], k: int) -> None:
    def at_most(small: float, big: float, what: str) -> None:
        if small > big * (1.0 + _SLACK) + _SLACK:
            raise InvalidCounters(f"{what}: {small:g} > {big:g}")

    at_most(values[EMPTY], values[ROUNDS], "empty_rounds > rounds")
    at_most(values[ACCEPTED], values[DRAFT], "accepted_tokens > draft_tokens")
    at_most(values[REQ_ALPHA], values[REQUESTS], "request_alpha_sum > requests")
    at_most(values[REQ_LOW] + values[REQ_HIGH], values[REQUESTS], "flagged requests > requests")
    at_most(values[REQ_ALPHA_SQ], values[REQ_ALPHA], "request_alpha_sq_sum > request_alpha_sum")
    at_most(values[REQ_INV_TOKENS], values[REQUESTS], "request_inv_tokens_sum > requests")
    at_most(totals[T_ACCEPTED], totals[T_DRAFT], "total_accepted_tokens > total_draft_tokens")
    for j in range(k):
        at_most(values[N_SCALARS + k + j], values[N_SCALARS + j], f"accepted_{j + 1} > tried_{j + 1}")


def _fmt(x: float) -> str:
    return "%.15g" % x


def _text(value: str | bytes) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
