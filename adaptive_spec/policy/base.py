"""What a policy is: per request, a session that decides each round and hears how each round went.

The engine takes plain callables (``decide``, ``on_round``); a policy hands out one ``Session`` per request, so
per-request state lives in the session and shared state (class statistics) in the policy's store. The same
sessions drive the real engine and the trace simulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

from ..engine import PLAIN_STEP, Decision, RoundState
from ..records import RoundRecord


@dataclass
class RequestInfo:
    """What a policy knows about a request before it starts."""

    prompt: str | None = None  # the user's text (features come from it); None when only ids are known
    prompt_ids: torch.Tensor | None = None
    request_class: str | None = None  # given by the caller: wins over any classifier
    max_k: int | None = None  # cap on draft length for this request
    speculation: str = "auto"  # "auto" | "on" | "off"
    do_sample: bool = False  # sampled rather than greedy (some drafting options, e.g. siblings, are greedy-only)
    # a recorded request replayed (``traces.simulate``), not one being served: its end is not logged, since tuning
    # (train-policy, notebooks) replays thousands and would bury the log in them
    replayed: bool = False


@dataclass
class RequestReport:
    """What a session did, for logs and the caller (``AdaptiveGenerator`` returns it)."""

    request_class: str | None
    class_source: str  # "caller" | "classifier" | "fixed"
    decisions: dict[str, int] = field(default_factory=dict)  # "drafter:k" -> rounds
    rounds: int = 0
    proposed: int = 0
    accepted: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def alpha(self) -> float:
        return self.accepted / self.proposed if self.proposed else float("nan")


class Session(Protocol):
    """Also, optionally, ``on_prefill(prompt_len, seconds)``: told the prompt's prefill time before the first round
    (the controller's cost tracking reads it as one wide forward)."""

    def decide(self, state: RoundState) -> Decision: ...

    def on_round(self, record: RoundRecord) -> None: ...

    def finish(self) -> RequestReport: ...


class Policy(Protocol):
    name: str

    def start(self, request: RequestInfo) -> Session: ...


class _FixedSession:
    def __init__(self, decision: Decision, request_class: str | None):
        self.decision = decision
        self.report = RequestReport(request_class, "fixed")

    def decide(self, state: RoundState) -> Decision:
        return self.decision

    def on_round(self, record: RoundRecord) -> None:
        key = f"{record.drafter}:{record.k}"
        self.report.decisions[key] = self.report.decisions.get(key, 0) + 1
        self.report.rounds += 1
        self.report.proposed += record.proposed
        self.report.accepted += record.accepted

    def finish(self) -> RequestReport:
        return self.report


class FixedPolicy:
    """The same decision every round (target-only, a fixed k, a fixed hybrid)."""

    def __init__(self, drafter: str = "none", k: int = 0, threshold: float = 0.0, name: str | None = None,
                 extend: int = 0, sibling_below: float = 0.0, pad_plain: bool = False):  # fmt: skip
        self.decision = Decision(drafter, k, threshold, extend, sibling_below, pad_plain)
        label = (f"{drafter} k={k}" + (f" thr={threshold:g}" if threshold else "") + (f" +lookup {extend}" if extend else "")
                 + (f" +siblings<{sibling_below:g}" if sibling_below else ""))  # fmt: skip
        self.name = name or (label if k else "target (padded)" if pad_plain else "target")

    def start(self, request: RequestInfo) -> _FixedSession:
        decision = self.decision
        if request.speculation == "off":  # the caller's per-request switch wins over any fixed choice
            decision = PLAIN_STEP
        elif request.max_k is not None and decision.k > request.max_k:
            decision = replace(decision, k=request.max_k)
        return _FixedSession(decision, request.request_class)


class PerClassPolicy:
    """A fixed policy chosen per request class (e.g. the per-category oracle); ``default`` for unknown classes."""

    def __init__(self, by_class: dict[str, FixedPolicy], default: FixedPolicy, name: str = "per-class"):
        self.by_class = by_class
        self.default = default
        self.name = name

    def start(self, request: RequestInfo) -> _FixedSession:
        return self.by_class.get(request.request_class or "", self.default).start(request)
