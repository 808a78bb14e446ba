"""Round times as measured against the cost model's: a policy calibrated on other hardware is corrected in flight.

A policy file carries the cost model of the machine it was calibrated on. Copied to a machine where forwards scale
differently with the tokens fed (on an AVX2-only CPU a bf16 forward over 4 tokens costs 2.7x one over 1 token,
where the calibrating AVX-512 machine measured 1.0x), its prices are wrong where they matter most: replayed that
way, the default policy ran at 0.77x plain decoding. The engine times every round anyway (``RoundRecord.verify_s``
and ``draft_s``), so the controller compares those times with the model's and, once they disagree beyond a
tolerance, decides with a corrected copy:

- per forward width (tokens fed: verified by the target, or caught up by a draft), the measured/calibrated ratio of
  its forwards. The corrected time of a width is interpolated linearly between measured widths and extrapolated
  past them along the nearest measured segment (no lower than the widest measured time above, no lower than
  proportional to the tokens below): 3- and 5-token forwards are enough to price 1- and 16-token ones on a machine
  where time grows with the tokens. Above, the price errs low on purpose: a width priced too high is never run,
  so never measured (a policy calibrated on an AVX2 CPU, run on an AVX-512 one, kept rounds short for good),
  while one priced too low is run, measured and then priced right.
- target forwards are timed alone (``verify_s``). A model round's drafting time is its first forward, over the
  tokens it catches up, plus single steps: rounds without a catch-up measure single steps; in one with a catch-up,
  what is left after its steps (at their measured ratio) measures the catch-up forward, the draft's prompt
  included, which on a slow machine costs far more than its calibration says (until steps are measured apart,
  they are taken at the target's plain steps' ratio). Until a draft has two widths measured, its table is
  assumed to scale like the target's (same machine; the level from its one measured width where the target
  measured that width too): a draft priced too high by its calibration would otherwise never be run to be
  measured.
- each prompt's prefill (``on_prefill``) is one target forward over its tokens: it starts no correction, but once
  one runs, the target's prices past the widths rounds measured follow the line toward it instead of
  extrapolating from two narrow widths.
- while the target's forwards measured so far all had one width, that width's ratio would scale every width alike,
  keeping the calibration's shape, which is what is most likely wrong: the controller then takes a plain step (or,
  where plain steps are what was measured, a padded one) to measure a second width.

The calibrated table keeps its shape over context lengths; only its columns are scaled. Sums decay (a half-life in
rounds), so a machine that slows down or speeds up is followed. ``adaptive-spec calibrate`` on the machine
remains the way to price it right from the first round.
"""

from __future__ import annotations

import math

import numpy as np

from ..logs import get_logger
from ..records import RoundRecord
from .cost import CostModel, CostTable, _line

log = get_logger("adaptive_spec.policy")

MIN_FACTOR, MAX_FACTOR = 0.02, 50.0  # a timer glitch (a zero, a preempted forward) bends no price past these
EXACT_WIDTHS = 17  # widths up to this are kept apart; longer forwards (catch-ups) share geometric buckets


def bucket(width: int) -> int:
    return width if width <= EXACT_WIDTHS else round(2 ** (round(2 * math.log2(width)) / 2))


class _Times:
    """Decayed sums, over the forwards of one width bucket, of measured and calibrated seconds and of widths."""

    __slots__ = ("measured", "predicted", "widths", "rounds", "tick")

    def __init__(self) -> None:
        self.measured = self.predicted = self.widths = self.rounds = 0.0
        self.tick = 0

    def add(self, width: int, measured: float, predicted: float, tick: int, decay: float) -> None:
        if tick != self.tick:
            scale = decay ** (tick - self.tick)
            self.measured *= scale
            self.predicted *= scale
            self.widths *= scale
            self.rounds *= scale
            self.tick = tick
        self.measured += measured
        self.predicted += predicted
        self.widths += width
        self.rounds += 1.0

    @property
    def ratio(self) -> float:
        return self.measured / self.predicted if self.predicted > 0 else 1.0

    @property
    def width(self) -> float:
        return self.widths / self.rounds


ROW_CONTEXT = 32  # calibrated prices are read at the context rounded down to this (they change slowly with it)


class _TableTimes:
    """One forward table's measured widths, and the column corrections they imply."""

    def __init__(self, table: CostTable):
        self.table = table
        self.buckets: dict[int, _Times] = {}
        self.anchors: dict[int, _Times] = {}  # prompt prefills: wide forwards, to extrapolate toward
        self.prices: dict[tuple[int, int], float] = {}  # by (rounded context, width): a round's price, one lookup
        self.first_row = row = table.row_at(table.contexts[0])
        self.first_times = [table.row_value(row, n) for n in table.tokens]  # at each column, the first context

    def calibrated(self, width: int, context: int) -> float:
        price = self.prices.get(key := (context // ROW_CONTEXT, width))
        if price is None:
            if len(self.prices) > 4096:
                self.prices.clear()
            price = self.prices[key] = self.table.row_value(self.table.row_at(key[0] * ROW_CONTEXT), width)
        return price

    def add(self, width: int, measured: float, predicted: float, tick: int, decay: float,
            anchor: bool = False) -> None:  # fmt: skip
        """One forward; ``anchor``: a prompt's prefill (kept apart: it shapes prices, starts no correction)."""
        store = self.anchors if anchor else self.buckets
        times = store.get(key := bucket(width))
        if times is None:
            times = store[key] = _Times()
        times.add(width, measured, predicted, tick, decay)

    def points(self) -> list[tuple[float, float]]:
        """(width, seconds at the first context) of the measured widths (``usable``), then, once there are two, of
        the prefills wider than the widest of them: past the measured widths, a line toward a wide forward actually
        timed beats one extrapolated from two narrow ones. Below, a prefill is no guide: with one narrow width, the
        line toward it would price the plain step (a 52-token prefill on AVX2 put it 35% high, and the controller
        kept drafting where plain steps pay)."""
        row = self.first_row
        points = [(t.width, self.table.row_value(row, t.width) * t.ratio) for t in self.usable()]
        if len(points) >= 2:
            anchors = sorted((t.width, t.measured / t.rounds) for t in self.anchors.values() if t.rounds > 0)
            points += [a for a in anchors if a[0] > points[-1][0]]
        return points

    def usable(self) -> list[_Times]:
        """Buckets measured enough to shape the correction: two forwards of a short width (a single one is too
        noisy), one of a long one (its time is its own average), by width."""
        found = [t for key, t in self.buckets.items() if t.rounds >= 2 or (key > EXACT_WIDTHS and t.rounds > 0)]
        return sorted(found, key=lambda t: t.width)

    def off_by(self, tolerance: float, min_rounds: int) -> bool:
        """At least ``min_rounds`` forwards, of widths measured twice or more, each off by more than ``tolerance``
        on average (a slow machine is slow at every width: the first rounds, each of its own width, count
        together). A forward off by more counts for more, up to 3 (off by 3x the tolerance): timing noise is
        +-15%, so three forwards at 2x their price are as clear as eight at 1.3x, and each costs far more."""
        off = 0.0
        for t in self.buckets.values():
            if t.rounds >= 2 and (deviation := abs(t.ratio - 1.0)) > tolerance:
                off += t.rounds * min(deviation / tolerance, 3.0)
        return off >= min_rounds

    def factors(self, shape: list[float] | None = None, shape_upto: float = math.inf) -> list[float]:
        """Per column of the table, measured/calibrated time at its first context: measured widths' corrected
        times, interpolated between them and extrapolated past them (see the module docstring). ``shape``: another
        table's factors at this table's columns, the shape to assume while fewer than two widths are measured,
        levelled by a measured width up to ``shape_upto`` (past it the shape is a guess, not a measurement)."""
        table, points = self.table, self.points()
        if len(points) < 2:
            measured = self.usable()
            level = 1.0
            if measured and shape and measured[0].width <= shape_upto:
                level = measured[0].ratio / _at(table.tokens, shape, measured[0].width)
            if shape is None:
                shape = [measured[0].ratio if measured else 1.0] * len(table.tokens)
            return [min(max(f * level, MIN_FACTOR), MAX_FACTOR) for f in shape]
        widths, times = [w for w, _ in points], [t for _, t in points]
        factors = []
        for n, base in zip(table.tokens, self.first_times):
            if n <= widths[0]:  # along the first segment, but not below proportional to the tokens
                value = max(_line(widths[0], times[0], widths[1], times[1], n), times[0] * n / widths[0])
            elif n >= widths[-1]:  # along the last segment, but not below the widest measured time
                value = max(_line(widths[-2], times[-2], widths[-1], times[-1], n), times[-1])
            else:
                value = _at(widths, times, n)
            factors.append(min(max(value / base, MIN_FACTOR), MAX_FACTOR))
        return factors

    def shape_for(self, factors: list[float], other: CostTable) -> list[float]:
        """``factors`` (this table's) at ``other``'s columns: constant past this table's first and last."""
        return [_at(self.table.tokens, factors, n) for n in other.tokens]


def _at(widths: list[float], values: list[float], width: float) -> float:
    """``values`` (one per width) interpolated at ``width``, constant past the ends."""
    return float(np.interp(width, widths, values))


class CostTracker:
    """Measured forward times against ``calibrated``'s; ``cost`` is the model to decide with: ``calibrated``
    itself until ``min_rounds`` forwards of one table are off by more than ``tolerance``, fewer where they are far
    off (``_TableTimes.off_by``)."""

    def __init__(self, calibrated: CostModel, tolerance: float = 0.25, min_rounds: int = 8,
                 half_life_rounds: float = 512.0, refit_every: int = 4):  # fmt: skip
        self.calibrated = self.cost = calibrated
        self.tolerance, self.min_rounds, self.refit_every = tolerance, min_rounds, refit_every
        self.decay = 0.5 ** (1.0 / half_life_rounds)
        self.target = _TableTimes(calibrated.target)
        self.drafts = {name: _TableTimes(table) for name, table in calibrated.drafts.items()}
        self.tick = 0
        self.applied: dict[str, list[float]] | None = None  # factors behind ``cost``; None: the calibration stands
        # off, and all target forwards measured so far had one width: its ratio scales every width alike, which
        # keeps the calibration's shape, the thing most likely wrong. The width to measure next: 1 (a plain step)
        # or 2 (a padded one), 0 for none.
        self.wants_width = 0

    def observe(self, record: RoundRecord) -> None:
        """Count one round's forwards (a replayed round carries the replay's prices: it corrects nothing unless they
        differ from the policy's)."""
        if record.verify_s <= 0:
            return
        self.tick += 1
        tick, decay, width, target = self.tick, self.decay, record.verified, self.target
        target.add(width, record.verify_s, target.calibrated(width, record.context_len), tick, decay)
        draft = self.drafts.get(record.drafter)
        if draft is not None and record.proposed and not record.shadow:
            self._observe_draft(draft, record)
        # refits are cheap while the calibration stands (a check), ~0.1 ms once corrected: then 4x less often
        if tick % (self.refit_every if self.applied is None else 4 * self.refit_every) == 0 or self.wants_width:
            self._refit()

    def observe_prefill(self, prompt_len: int, seconds: float) -> None:
        """A prompt's prefill: one target forward over its tokens. It does not start a correction (a single forward
        may be preempted); once one runs, it anchors the target's prices past the widths rounds measured."""
        if seconds > 0 and prompt_len > 0:
            predicted = self.calibrated.prefill_s(prompt_len)
            self.target.add(prompt_len, seconds, predicted, self.tick, self.decay, anchor=True)

    def _observe_draft(self, draft: _TableTimes, record: RoundRecord) -> None:
        # ``CostModel.draft_s``'s shape, from memoised prices with the steps at one context: it sums a table lookup
        # per step (~100 us at k=8), and this runs every round
        overhead = self.calibrated.draft_step_overhead_s
        context, catchup, proposed = record.context_len, max(record.catchup, 1), record.proposed
        steps = (proposed - 1) * (draft.calibrated(1, context + catchup) + overhead)
        first = draft.calibrated(catchup, context) + overhead
        if catchup == 1:  # single steps only
            draft.add(1, record.draft_s, first + steps, self.tick, self.decay)
            return
        # steps at their own measured ratio; before that, at the target's plain steps' (the same machine: one-token
        # forwards of both models are alike bound by memory), else as calibrated. Not the round's own ratio: the
        # steps dominate a round, so the catch-up's excess would be spread over them and priced low
        singles = (draft.buckets.get(1), self.target.buckets.get(1))
        step_ratio = next((t.ratio for t in singles if t is not None and t.rounds >= 2), 1.0)
        measured_first = record.draft_s - steps * step_ratio
        draft.add(catchup, max(measured_first, MIN_FACTOR * first), first, self.tick, self.decay)

    # --- the corrected model ------------------------------------------------------------------------------------

    def _refit(self) -> None:
        tables = {"": self.target, **self.drafts}
        if not any(t.off_by(self.tolerance, self.min_rounds) for t in tables.values()):
            if self.applied is not None:  # back within tolerance: the calibration stands
                self.applied, self.cost, self.wants_width = None, self.calibrated, 0
                log.info("cost_model_restored", rounds=self.tick)
            return
        measured = self.target.usable()
        self.wants_width = 0 if len(measured) >= 2 else 2 if measured and measured[0].width < 1.5 else 1
        factors = {"": (target := self.target.factors())}
        for name, draft in self.drafts.items():  # the same machine: shaped like the target's until measured apart
            factors[name] = draft.factors(self.target.shape_for(target, draft.table), self.target.table.tokens[-1])
        if self.applied is not None and all(_close(self.applied[n], f, 0.05) for n, f in factors.items()):
            return  # keep the model the controllers have tabulated
        first = self.applied is None
        self.applied = factors
        self.cost = cost = corrected(self.calibrated, factors)
        context = self.calibrated.target.contexts[0]
        (log.warning if first else log.info)(  # the first: the policy's calibration does not fit this machine
            "cost_model_corrected", rounds=self.tick, context=context,
            verify_ms={n: round(cost.target(n, context) * 1e3, 1) for n in (1, 4, 16)},
            calibrated_verify_ms={n: round(self.calibrated.target(n, context) * 1e3, 1) for n in (1, 4, 16)},
            draft_step_ms={name: round(table(1, context) * 1e3, 1) for name, table in cost.drafts.items()},
            hint="run `adaptive-spec calibrate` on this machine" if first else None)  # fmt: skip


def corrected(cost: CostModel, factors: dict[str, list[float]]) -> CostModel:
    """``cost`` with its tables' columns scaled: ``factors[""]`` for the target's, ``factors[name]`` for a draft's."""

    def scaled(table: CostTable, column_factors: list[float] | None) -> CostTable:
        if column_factors is None or all(f == 1.0 for f in column_factors):
            return table
        seconds = [[s * f for s, f in zip(row, column_factors)] for row in table.seconds]
        return CostTable(tokens=table.tokens, contexts=table.contexts, seconds=seconds)

    drafts = {name: scaled(table, factors.get(name)) for name, table in cost.drafts.items()}
    return cost.model_copy(update={"target": scaled(cost.target, factors.get("")), "drafts": drafts})


def _close(a: list[float], b: list[float], within: float) -> bool:
    return all(abs(x - y) <= within * max(x, y) for x, y in zip(a, b))
