"""The cost model: what a round costs on this hardware, and what a drafting choice is expected to gain.

Times are measured by ``calibrate`` (seconds) as tables over the number of tokens fed in one forward, at two or
more context lengths; between measured points they are interpolated linearly (in tokens and in context),
beyond the last context point extrapolated along the last slope.

Expected tokens per round with per-position conditional acceptance a_1..a_k (a_j = P(token j accepted | tokens
before it accepted)): E = 1 + sum_j prod_{i<=j} a_i (the 1 is the bonus/recovered token). With a constant a this
is Leviathan et al.'s (1 - a^(k+1)) / (1 - a). Speedup of a choice = (E / round time) / (1 / plain step time).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator


# How far the first point of a row (1 token) may sit above the second before it counts as a spike. Measured on the
# reference CPU (bf16, 2 threads, 15 interleaved repetitions per point): the 1-token forward 1.18x, 1.15x, 1.20x,
# 1.19x, 1.24x, 1.25x the 2-token one at contexts 128, 200, 300, 450, 600, 1024; a preempted one was 3.2x.
FIRST_POINT_TOLERANCE = 0.6


class CostTable(BaseModel):
    """Forward time (seconds) of a model by tokens fed (rows of ``tokens``) and context length (``contexts``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens: list[int] = Field(min_length=1)  # ascending
    contexts: list[int] = Field(min_length=1)  # ascending
    seconds: list[list[float]]  # [len(contexts)][len(tokens)]
    # The controller prices a dozen candidate rounds before each round, mostly at the same few (n, context) points
    # as the round before; memoising keeps a decision well inside its time budget.
    _memo: dict[tuple[int, int], float] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _shape(self) -> "CostTable":
        if self.tokens != sorted(set(self.tokens)) or self.contexts != sorted(set(self.contexts)):
            raise ValueError("tokens and contexts must be strictly ascending")
        if len(self.seconds) != len(self.contexts) or any(len(r) != len(self.tokens) for r in self.seconds):
            raise ValueError("seconds must have one row per context and one column per token count")
        if any(not (math.isfinite(s) and s > 0) for row in self.seconds for s in row):
            raise ValueError("forward times must be finite and positive")
        return self

    def __call__(self, n: int, context: int) -> float:
        """Seconds for a forward of ``n`` tokens after ``context`` cached tokens."""
        key = (n, context)
        value = self._memo.get(key)
        if value is not None:
            return value
        value = self.row_value(self.row_at(context), n)  # bilinear, in the order the controller's tables use
        if len(self._memo) >= 4096:
            self._memo.clear()
        self._memo[key] = value
        return value

    def row_at(self, context: int) -> list[float]:
        """Forward time by tokens fed (the ``tokens`` columns) after ``context`` cached tokens: the two measured
        rows around it, interpolated linearly in context (extrapolated beyond the first or last)."""
        xs = self.contexts
        if len(xs) == 1:
            return list(self.seconds[0])
        i = min(max(bisect.bisect_right(xs, context) - 1, 0), len(xs) - 2)
        return [_line(xs[i], y0, xs[i + 1], y1, context) for y0, y1 in zip(self.seconds[i], self.seconds[i + 1])]

    def row_value(self, row: Sequence[float], n: int) -> float:
        """Seconds for ``n`` tokens from a row of ``row_at``: ``table(n, context) == table.row_value(table.row_at(
        context), n)`` exactly, so a caller pricing many n at one context can interpolate the row once."""
        return max(_interp(self.tokens, row, n), 1e-6)

    def despiked(self, tolerance: float = 0.25) -> tuple["CostTable", int]:
        """This table with isolated upward spikes along the token axis replaced, and how many were.

        A forward that a preemption or a page-fault burst slowed is a spike: far above what its neighbours in the
        same row predict. The controller trusts the table literally, so one spiked plain step at a long context
        makes every round there look cheap next to it. A value more than ``tolerance`` above its reference becomes
        the reference: inside a row, the line between its neighbours (so cost growing with tokens, as on a
        compute-bound device, is no spike); the first point, the second one's value (fewer tokens do not cost
        more), but only beyond ``FIRST_POINT_TOLERANCE``; the last point, the line through the two before it.
        Genuine shape stays: on the reference CPU in bf16 a 1-token forward costs 15-28% more than a 2-token one at
        contexts 128-1024, so the row's tolerance would replace it about half the time and the table would price
        plain steps too cheap (and stop padding them). Then across contexts: a longer context never costs less,
        so a point more than ``tolerance`` above the same token count at the next longer context becomes that value
        (a slow spell over the first row's first points, which no neighbour in the row reveals).
        """
        rows, replaced = [], 0
        xs = self.tokens
        for row in self.seconds:
            out = list(row)
            if len(row) >= 3:
                for i, value in enumerate(row):
                    allowed = tolerance
                    if i == 0:
                        reference, allowed = row[1], max(tolerance, FIRST_POINT_TOLERANCE)
                    elif i == len(row) - 1:
                        reference = max(out[i - 1], _line(xs[i - 2], out[i - 2], xs[i - 1], out[i - 1], xs[i]))
                    else:
                        reference = _line(xs[i - 1], out[i - 1], xs[i + 1], row[i + 1], xs[i])
                    if value > reference * (1 + allowed):
                        out[i], replaced = reference, replaced + 1
            rows.append(out)
        for r in range(len(rows) - 2, -1, -1):
            for i, (value, longer) in enumerate(zip(rows[r], rows[r + 1])):
                if value > longer * (1 + tolerance):
                    rows[r][i], replaced = longer, replaced + 1
        return CostTable(tokens=self.tokens, contexts=self.contexts, seconds=rows), replaced  # a fresh memo


def _line(x0: float, y0: float, x1: float, y1: float, x: float) -> float:
    """The line through (x0, y0) and (x1, y1) at x: interpolation between two points, extrapolation past them."""
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def _interp(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    if len(xs) == 1:
        return ys[0]
    i = min(max(bisect.bisect_right(xs, x) - 1, 0), len(xs) - 2)
    return _line(xs[i], ys[i], xs[i + 1], ys[i + 1], x)


class CostModel(BaseModel):
    """Measured costs of one target/draft pair on one machine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pair_id: str
    hardware: str  # e.g. "cpu: 2 threads, <model name>" or "cuda: NVIDIA H100"
    dtype: str
    measured_at: str = ""
    target: CostTable  # verify / plain step / prefill
    drafts: dict[str, CostTable] = Field(default_factory=dict)  # per model-type drafter: catch-up or one step
    prefill: CostTable | None = None  # target forward over a whole prompt (tokens = prompt lengths, context 0)
    lookup_s: float = Field(3e-4, ge=0)  # one prompt-lookup proposal
    round_overhead_s: float = Field(1e-3, ge=0)  # engine bookkeeping per round, outside model forwards
    draft_step_overhead_s: float = Field(2e-4, ge=0)  # drafter bookkeeping per drafted token

    @field_validator("lookup_s", "round_overhead_s", "draft_step_overhead_s")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be finite")
        return v

    def despiked(self, tolerance: float = 0.25) -> tuple["CostModel", int]:
        """This model with every forward table's isolated spikes replaced (``CostTable.despiked``), and how many."""
        target, replaced = self.target.despiked(tolerance)
        drafts = {}
        for name, table in self.drafts.items():
            drafts[name], n = table.despiked(tolerance)
            replaced += n
        return self.model_copy(update={"target": target, "drafts": drafts}), replaced

    # --- times ------------------------------------------------------------------------------------------------

    def verify_s(self, n: int, context: int) -> float:
        """Target forward over n tokens (pending + n - 1 proposals); n = 1 is a plain step."""
        return self.target(n, context) + self.round_overhead_s

    def plain_step_s(self, context: int) -> float:
        return self.verify_s(1, context)

    def prefill_s(self, prompt_len: int) -> float:
        table = self.prefill or self.target
        return table(prompt_len, 0)

    @property
    def draft(self) -> CostTable | None:
        """The generic model draft's table (the drafter named "model")."""
        return self.drafts.get("model")

    def draft_s(self, proposed: int, context: int, catchup: int = 1, drafter: str = "model") -> float:
        """A model-type drafter: one catch-up forward of ``catchup`` tokens, then proposed - 1 single steps."""
        table = self.drafts.get(drafter)
        if table is None:
            raise ValueError(f"this cost model has no measurements for drafter {drafter!r}")
        if proposed <= 0:
            return 0.0
        steps = table(catchup, context) + sum(table(1, context + catchup + j) for j in range(proposed - 1))
        return steps + proposed * self.draft_step_overhead_s

    def round_s(self, drafter: str, proposed: int, context: int, catchup: int = 1,
                verified: int | None = None) -> float:  # fmt: skip
        """Drafting plus the verify forward, over ``verified`` tokens (default: the pending token and the proposals;
        a recorded round's ``RoundRecord.verified`` also counts its extension, siblings and guess)."""
        if drafter == "lookup":
            draft = self.lookup_s
        elif drafter == "none":
            draft = 0.0
        else:
            draft = self.draft_s(proposed, context, catchup, drafter)
        return draft + self.verify_s(proposed + 1 if verified is None else verified, context)

    def draft_cost_ratio_of(self, drafter: str = "model") -> float:
        """c: one draft step relative to one plain target step, at a short context."""
        ctx = self.target.contexts[0]
        return self.draft_s(1, ctx, 1, drafter) / self.plain_step_s(ctx) if drafter in self.drafts else float("nan")

    @property
    def draft_cost_ratio(self) -> float:
        return self.draft_cost_ratio_of("model")

    def verify_growth(self, n: int = 4, context: int | None = None) -> float:
        """A verify forward over n tokens in plain steps: ~1 where a wide forward is nearly free (GPUs, CPUs with
        bf16 matrix units), up to n where a forward costs its tokens one by one, and nothing is left to win."""
        ctx = self.target.contexts[0] if context is None else context
        return self.verify_s(n, ctx) / self.plain_step_s(ctx)

    # --- expectations -------------------------------------------------------------------------------------------

    def expected_speedup(self, drafter: str, acceptance: Sequence[float], k: int, context: int = 256) -> float:
        """Expected speedup over plain decoding of drafting k tokens with the given per-position acceptance."""
        if k <= 0:
            return 1.0
        tokens = expected_tokens(acceptance, k)
        return (tokens / self.round_s(drafter, k, context)) * self.plain_step_s(context)

    def best_k(self, drafter: str, acceptance: Sequence[float], max_k: int, context: int = 256) -> tuple[int, float]:
        """The k (0 = don't speculate) with the highest expected speedup, and that speedup."""
        best = (0, 1.0)
        for k in range(1, max_k + 1):
            s = self.expected_speedup(drafter, acceptance, k, context)
            if s > best[1]:
                best = (k, s)
        return best

    def break_even_alpha(self, drafter: str, k: int, context: int = 256) -> float:
        """The constant acceptance rate at which drafting k tokens is exactly as fast as plain decoding."""
        lo, hi = 0.0, 1.0
        if self.expected_speedup(drafter, [hi] * k, k, context) < 1.0:
            return float("nan")  # never pays at this k
        for _ in range(40):
            mid = (lo + hi) / 2
            if self.expected_speedup(drafter, [mid] * k, k, context) < 1.0:
                lo = mid
            else:
                hi = mid
        return hi


def expected_tokens(acceptance: Sequence[float], k: int) -> float:
    """1 + sum over j <= k of P(first j proposals all accepted); positions past the list reuse its last value."""
    total, survive = 1.0, 1.0
    for j in range(k):
        a = acceptance[min(j, len(acceptance) - 1)] if acceptance else 0.0
        survive *= a
        total += survive
    return total
