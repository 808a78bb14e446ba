"""Draft cost per token, measured the way the engine pays it: a drafter proposing k tokens after a context."""

from __future__ import annotations

import statistics
import time

import torch

from ..engine.drafters import Drafter, DraftRequest


def draft_cost_per_token(drafter: Drafter, context: torch.Tensor, k: int = 8, reps: int = 5) -> float:
    """Median seconds per drafted token over ``reps`` proposals of ``k`` tokens after ``context`` ([L] long).

    The drafter's cache holds the context before timing starts, so each proposal is k one-token forwards (plus
    the drafter's own per-token work: distributions, id mapping), as in steady-state decoding.
    """
    drafter.reset()
    drafter.propose(context, DraftRequest(1))  # catch up on the context (not timed)
    times = []
    for _ in range(reps + 1):  # the first proposal warms up
        start = time.perf_counter()
        draft = drafter.propose(context, DraftRequest(k))
        times.append((time.perf_counter() - start) / max(len(draft), 1))
    drafter.reset()
    return statistics.median(times[1:])
