"""Counters: what a round adds, the decay law, merging batches, and the checks on stored values."""

from __future__ import annotations

import math
import random

import pytest

from adaptive_spec.records import NO_DRAFTER, RoundRecord
from adaptive_spec.stats.counters import (
    ACCEPTED,
    DRAFT,
    EMPTY,
    N_SCALARS,
    ROUNDS,
    T_ROUNDS,
    T_TOKENS,
    Counters,
    CounterSpec,
    InvalidCounters,
)

NO_DECAY = CounterSpec(None, None, 8)
T0 = 1_700_000_000.0


def rnd(proposed: int, accepted: int, drafter: str = "model") -> RoundRecord:
    emitted = accepted + 1
    return RoundRecord(drafter, max(proposed, 1), proposed, accepted, emitted, 100, 0.001, 0.002)


def tried(c: Counters) -> list[float]:
    k = c.spec.max_positions
    return c.real_values()[N_SCALARS : N_SCALARS + k]


def accepted_at(c: Counters) -> list[float]:
    k = c.spec.max_positions
    return c.real_values()[N_SCALARS + k : N_SCALARS + 2 * k]


def test_round_counts_positions_tried_and_accepted():
    c = Counters(NO_DECAY)
    c.add_round(rnd(4, 2), T0)  # positions 1, 2 accepted; 3 judged and rejected; 4 never judged
    assert tried(c) == [1, 1, 1, 0, 0, 0, 0, 0]
    assert accepted_at(c) == [1, 1, 0, 0, 0, 0, 0, 0]
    c.add_round(rnd(3, 3), T0)  # all accepted: 1..3 judged and accepted
    assert tried(c) == [2, 2, 2, 0, 0, 0, 0, 0]
    assert accepted_at(c) == [2, 2, 1, 0, 0, 0, 0, 0]
    v = c.real_values()
    assert (v[ROUNDS], v[DRAFT], v[ACCEPTED], v[EMPTY]) == (2, 7, 5, 0)
    assert c.totals[T_TOKENS] == 7


def test_positions_are_capped_at_max_positions():
    c = Counters(CounterSpec(None, None, 2))
    c.add_round(rnd(6, 5), T0)
    assert tried(c) == [1, 1] and accepted_at(c) == [1, 1]
    assert c.real_values()[DRAFT] == 6  # token counts are not capped


def test_plain_steps_and_lookup_misses_are_empty_rounds_that_advance_the_clock_by_one():
    c = Counters(NO_DECAY)
    c.add_round(RoundRecord(NO_DRAFTER, 0, 0, 0, 1, 10, 0.0, 0.01), T0)
    c.add_round(rnd(0, 0, drafter="lookup"), T0)
    v = c.real_values()
    assert (v[ROUNDS], v[EMPTY], v[DRAFT]) == (2, 2, 0)
    assert tried(c) == [0] * 8
    assert c.totals[T_TOKENS] == 2


def test_impossible_round_is_rejected():
    with pytest.raises(ValueError):
        Counters(NO_DECAY).add_round(RoundRecord("model", 4, 2, 3, 4, 10, 0.0, 0.0), T0)


def test_token_half_life_halves_old_weight():
    h = 1000.0
    c = Counters(CounterSpec(h, None, 4))
    c.add_round(rnd(4, 4), T0)  # one round, weight 1
    for _ in range(250):  # 1000 more tokens: one half-life
        c.add_round(rnd(4, 0), T0)
    # the first round now weighs 0.5; the last weighs 1, the 250 new ones sum to sum_i 2**(-4i/1000)
    new = sum(2.0 ** (-4 * i / h) for i in range(250))
    assert tried(c)[1] == pytest.approx(0.5, rel=1e-12)  # only the first round reached position 2
    assert c.real_values()[ROUNDS] == pytest.approx(0.5 + new, rel=1e-12)


def test_seconds_half_life_decays_with_wall_time_on_read():
    c = Counters(CounterSpec(None, 60.0, 4))
    c.add_round(rnd(2, 2), T0)
    c.add_round(rnd(2, 0), T0 + 60.0)
    v = c.real_values()
    assert v[ROUNDS] == pytest.approx(1.5) and v[ACCEPTED] == pytest.approx(1.0)
    assert c.values_at(T0 + 120.0)[ROUNDS] == pytest.approx(0.75)
    assert c.values_at(T0 + 120.0)[ACCEPTED] / c.values_at(T0 + 120.0)[DRAFT] == pytest.approx(1 / 3)


def test_clock_stepping_back_does_not_undo_decay():
    c = Counters(CounterSpec(None, 60.0, 4))
    c.add_round(rnd(2, 2), T0 + 60)
    c.add_round(rnd(2, 2), T0)  # earlier wall time: treated as "now = last update"
    assert c.real_values()[ROUNDS] == pytest.approx(2.0)


def test_many_half_lives_do_not_overflow():
    c = Counters(CounterSpec(10.0, None, 4))
    for _ in range(20_000):  # 80,000 tokens = 8,000 half-lives; weights would reach 2**8000
        c.add_round(rnd(4, 3), T0)
    v = c.real_values()
    assert all(math.isfinite(x) for x in v)
    steady = 1.0 / (1.0 - 2.0 ** (-4 / 10.0))  # geometric series of the round weights
    assert v[ROUNDS] == pytest.approx(steady, rel=1e-9)
    assert v[ACCEPTED] / v[DRAFT] == pytest.approx(0.75)


@pytest.mark.parametrize("spec", [CounterSpec(None, None, 8), CounterSpec(500.0, None, 8)])
def test_merging_batches_equals_counting_in_order(spec):
    """absorb() is what the Redis script does: batches merged in order give the sequential result."""
    rng = random.Random(7)
    records = []
    for _ in range(3000):
        proposed = rng.randint(0, 8)
        records.append(rnd(proposed, rng.randint(0, proposed)))
    sequential = Counters(spec)
    for r in records:
        sequential.add_round(r, T0)
    pooled = Counters(spec)
    i = 0
    while i < len(records):
        size = rng.randint(1, 300)
        batch = Counters(spec)
        for r in records[i : i + size]:
            batch.add_round(r, T0)
        pooled.absorb(batch)
        i += size
    assert pooled.totals == sequential.totals
    assert pooled.real_values() == pytest.approx(sequential.real_values(), rel=1e-9, abs=1e-12)


def test_fields_round_trip():
    c = Counters(CounterSpec(2000.0, None, 8))
    for a in range(5):
        c.add_round(rnd(6, a), T0)
    c.add_request(0.4, 2.0, "low", T0)
    fields = c.to_fields()
    fields["schema"] = "1"
    fields["updated_at"] = repr(T0)
    back = Counters.from_fields(c.spec, {k.encode(): v.encode() for k, v in fields.items()})
    assert back.totals == c.totals
    assert back.real_values() == pytest.approx(c.real_values(), rel=1e-14)
    assert back.updated_at == T0


def _valid_fields() -> dict[str, str]:
    return {"schema": "1", "updated_at": "1700000000.5", "rounds": "10", "draft_tokens": "40", "accepted_tokens": "20",
            "tried_1": "10", "accepted_1": "8", "total_rounds": "10"}  # fmt: skip


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rounds", "abc"),
        ("rounds", "nan"),
        ("rounds", "NaN"),
        ("rounds", "inf"),
        ("rounds", "1e999"),
        ("rounds", "-5"),
        ("rounds", "0x10"),
        ("rounds", " 10"),
        ("rounds", "1_0"),
        ("rounds", ""),
        ("accepted_1", "11"),  # more accepted than tried at position 1
        ("accepted_tokens", "41"),  # more accepted than proposed
        ("request_alpha_sq_sum", "0.5"),  # above request_alpha_sum (0): alpha squared never exceeds alpha
        ("request_inv_tokens_sum", "0.5"),  # above requests (0): every counted request proposed a token
        ("schema", "2"),  # another version
        ("updated_at", "yesterday"),
    ],
)
def test_invalid_stored_values_are_rejected(field, value):
    fields = _valid_fields()
    fields[field] = value
    with pytest.raises(InvalidCounters):
        Counters.from_fields(NO_DECAY, fields)


def test_missing_schema_or_timestamp_is_rejected():
    for missing in ("schema", "updated_at"):
        fields = _valid_fields()
        del fields[missing]
        with pytest.raises(InvalidCounters):
            Counters.from_fields(NO_DECAY, fields)
    assert Counters.from_fields(NO_DECAY, _valid_fields()).totals[T_ROUNDS] == 10
