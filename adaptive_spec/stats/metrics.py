"""Optional Prometheus metrics (prometheus-client, imported only when a ``StatsMetrics`` is created).

Counters follow vLLM's naming (``vllm:spec_decode_num_draft_tokens``) with our prefix; rates are left to
PromQL, e.g. ``rate(adaptive_spec:spec_decode_num_accepted_tokens_total[5m]) /
rate(adaptive_spec:spec_decode_num_draft_tokens_total[5m])``. The alpha gauge holds the pooled posterior mean
as of the latest ``estimate()`` for that key.
"""

from __future__ import annotations

from typing import Any

from ..records import NO_DRAFTER, RoundRecord
from .keys import StatsKey

_LABELS = ("pair_id", "request_class", "drafter")


class StatsMetrics:
    """Prometheus counters and gauges per (pair, class, drafter). Pass one to ``AlphaEstimator(metrics=...)``."""

    def __init__(self, registry: Any = None, prefix: str = "adaptive_spec:"):
        try:
            import prometheus_client as prom
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError("StatsMetrics needs prometheus-client: pip install 'adaptive-spec[metrics]'") from error
        registry = prom.REGISTRY if registry is None else registry
        p = prefix

        def counter(name: str, doc: str) -> Any:
            return prom.Counter(p + name, doc, _LABELS, registry=registry)

        self.rounds = counter("spec_decode_num_rounds", "Rounds run, by drafter (plain steps under 'none').")
        self.draft_tokens = counter("spec_decode_num_draft_tokens", "Draft tokens proposed.")
        self.accepted_tokens = counter("spec_decode_num_accepted_tokens", "Draft tokens accepted.")
        self.emitted_tokens = counter("spec_decode_num_emitted_tokens", "Tokens emitted.")
        self.alpha = prom.Gauge(p + "spec_decode_alpha", "Estimated token-level acceptance rate.", _LABELS, registry=registry)
        self.speculating = prom.Gauge(
            p + "spec_decode_enabled", "1 if the latest round of this class speculated, else 0.", _LABELS[:2], registry=registry
        )
        self._children: dict[StatsKey, tuple[Any, ...]] = {}

    def observe_round(self, key: StatsKey, record: RoundRecord) -> None:
        children = self._children.get(key)
        if children is None:
            labels = tuple(key)
            children = self._children[key] = (
                self.rounds.labels(*labels),
                self.draft_tokens.labels(*labels),
                self.accepted_tokens.labels(*labels),
                self.emitted_tokens.labels(*labels),
                self.speculating.labels(*labels[:2]),
            )
        rounds, drafted, accepted, emitted, speculating = children
        rounds.inc()
        emitted.inc(record.emitted)
        if record.proposed:
            drafted.inc(record.proposed)
            accepted.inc(record.accepted)
        speculating.set(0 if record.drafter == NO_DRAFTER else 1)

    def set_alpha(self, key: StatsKey, alpha: float) -> None:
        self.alpha.labels(*key).set(alpha)

    def set_speculation(self, pair_id: str, request_class: str, on: bool) -> None:
        """For a policy that switches speculation off for a class before any round runs."""
        self.speculating.labels(pair_id, request_class).set(1 if on else 0)
