"""Per-request counts: what one request has seen so far, per drafter (the policy keeps one per request).

Plain counts, no decay: a request is short next to a half-life. ``extreme`` flags a request whose alpha sits
at ~0 or ~1 over many rounds, which usually means a repetition loop or a prompt being copied (alpha ~ 1) or
a drafter that cannot follow this request at all (alpha ~ 0); such requests would skew a class's figures.
"""

from __future__ import annotations

from ..records import NO_DRAFTER, RoundRecord


class DrafterCounts:
    """One request's counts for one drafter; the same meaning as the counters in ``counters.py``."""

    __slots__ = ("rounds", "empty_rounds", "draft_tokens", "accepted_tokens", "emitted_tokens", "tried", "accepted")

    def __init__(self, max_positions: int = 16):
        self.rounds = 0
        self.empty_rounds = 0
        self.draft_tokens = 0
        self.accepted_tokens = 0
        self.emitted_tokens = 0
        self.tried = [0] * max_positions  # [K] rounds that judged position j + 1
        self.accepted = [0] * max_positions  # [K] rounds that accepted position j + 1

    def add(self, record: RoundRecord) -> None:
        self.add_round(record.proposed, record.accepted, record.emitted)

    def add_round(self, proposed: int, accepted: int, emitted: int = 0) -> None:
        """A round's counts without its record (the controller judges unrun lookup proposals in its hot path)."""
        self.rounds += 1
        self.emitted_tokens += emitted
        if proposed == 0:
            self.empty_rounds += 1
            return
        self.draft_tokens += proposed
        self.accepted_tokens += accepted
        k = len(self.tried)
        for j in range(min(accepted + 1, proposed, k)):
            self.tried[j] += 1
        for j in range(min(accepted, k)):
            self.accepted[j] += 1

    @property
    def speculative_rounds(self) -> int:
        return self.rounds - self.empty_rounds

    @property
    def alpha(self) -> float | None:
        """accepted / proposed, None before any proposal."""
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else None

    @property
    def mean_accepted(self) -> float | None:
        """Accepted tokens per round (misses included), None before any round."""
        return self.accepted_tokens / self.rounds if self.rounds else None

    def extreme(self, margin: float = 0.02, min_rounds: int = 16) -> str | None:
        """'low' or 'high' when alpha is within ``margin`` of 0 or 1 over ``min_rounds`` speculative rounds."""
        alpha = self.alpha
        if alpha is None or self.speculative_rounds < min_rounds:
            return None
        if alpha <= margin:
            return "low"
        if alpha >= 1.0 - margin:
            return "high"
        return None


class RequestStats:
    """Counts for one request, per drafter. Feed it every round; hand it to the estimator when the request ends."""

    __slots__ = ("max_positions", "by_drafter")

    def __init__(self, max_positions: int = 16):
        self.max_positions = max_positions
        self.by_drafter: dict[str, DrafterCounts] = {}

    def observe(self, record: RoundRecord) -> None:
        self._counts_for(record.drafter).add(record)

    def observe_counts(self, drafter: str, proposed: int, accepted: int, emitted: int = 0) -> None:
        """A round of ``drafter`` from its counts alone (no record to build in the controller's hot path)."""
        self._counts_for(drafter).add_round(proposed, accepted, emitted)

    def _counts_for(self, drafter: str) -> DrafterCounts:
        counts = self.by_drafter.get(drafter)
        if counts is None:
            counts = self.by_drafter[drafter] = DrafterCounts(self.max_positions)
        return counts

    def counts(self, drafter: str) -> DrafterCounts:
        """This request's counts for ``drafter`` (all zero if it never ran)."""
        return self.by_drafter.get(drafter) or DrafterCounts(self.max_positions)

    @property
    def speculative_drafters(self) -> list[str]:
        """Drafters that proposed at least one token in this request."""
        return [d for d, c in self.by_drafter.items() if d != NO_DRAFTER and c.draft_tokens > 0]
