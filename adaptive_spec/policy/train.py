"""Fitting a policy to traces (``adaptive-spec train-policy``): shared and per-class settings chosen by exact replay.

Coordinate descent over the controller's class settings (confidence threshold, draft caps, which lookup proposals
to trust, which drafters to use) maximises the simulated throughput of training traces, replayed twice through one
estimator (the first pass warms its statistics, as a running service would be): first one shared setting over all
classes, then, per class, departures from it that gain more than ``CLASS_MARGIN`` on the class's own traces.
Global settings are then chosen the same way over all classes. Regret is reported against the per-request oracle:
the best fixed configuration for each request, chosen knowing its outcome.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..stats import AlphaEstimator
from .base import FixedPolicy
from .controller import AdaptivePolicy, ClassSettings, ControllerConfig
from .cost import CostModel

GRID: dict[str, list] = {  # a dotted path into ClassSettings -> the values tried
    "model.threshold": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95],
    "model.max_k": [1, 2, 3, 4, 6, 8, 16],
    "lookup_min_ngram": [1, 2, 3],
    "lookup_max_k": [4, 8, 16],
    "model.enabled": [True, False],
    "use_lookup": [True, False],
}
DRAFTER_GRID: dict[str, list] = {  # for each further model-type drafter (custom draft, head), under drafters.<name>
    "threshold": [0.3, 0.5, 0.7, 0.8, 0.9],
    "max_k": [2, 4, 8, 16],
    "enabled": [True, False],
}


def with_setting(settings: ClassSettings, path: str, value) -> ClassSettings:
    """A copy of ``settings`` with the dotted ``path`` (e.g. "model.threshold", "drafters.head.max_k") set."""
    parts = path.split(".")
    if parts[0] == "model":
        return settings.model_copy(update={"model": settings.model.model_copy(update={parts[1]: value})})
    if parts[0] == "drafters":
        current = settings.for_drafter(parts[1])
        drafters = {**settings.drafters, parts[1]: current.model_copy(update={parts[2]: value})}
        return settings.model_copy(update={"drafters": drafters})
    return settings.model_copy(update={parts[0]: value})


def get_setting(settings: ClassSettings, path: str):
    parts = path.split(".")
    if parts[0] == "model":
        return getattr(settings.model, parts[1])
    if parts[0] == "drafters":
        return getattr(settings.for_drafter(parts[1]), parts[2])
    return getattr(settings, parts[0])


def without_priors(settings: ClassSettings) -> ClassSettings:
    """``settings`` with no profiled cold-start priors (the controller's generic prior applies)."""
    clear = {"prior_accepted": None, "prior_proposed": None}
    return settings.model_copy(update={
        "model": settings.model.model_copy(update=clear),
        "drafters": {name: d.model_copy(update=clear) for name, d in settings.drafters.items()},
    })  # fmt: skip


def grid_for(cost: CostModel) -> dict[str, list]:
    grid = dict(GRID)
    for name in cost.drafts:
        if name != "model":
            grid.update({f"drafters.{name}.{key}": values for key, values in DRAFTER_GRID.items()})
    return grid


CLASS_MARGIN = 0.03  # a class departs from the shared setting only for a larger relative gain on its traces

GLOBAL_GRID: dict[str, list] = {
    "prior_weight": [4.0, 8.0, 16.0, 32.0],
    "hysteresis": [0.0, 0.05, 0.1],
    "probe_every": [8, 16, 32, 64],
    "sibling_below": [0.0, 0.7, 0.9],  # priced only where the traces have the draft's second choices
}

# Fixed configurations the oracles choose from (and the "best single fixed configuration" baseline).
FIXED_CANDIDATES: list[FixedPolicy] = (
    [FixedPolicy()]
    + [FixedPolicy("model", k) for k in range(1, 9)]
    + [FixedPolicy("lookup", k) for k in (2, 4, 6, 8, 16)]
    + [FixedPolicy("hybrid", k, t) for k in (4, 8, 16) for t in (0.5, 0.7)]
    + [FixedPolicy("model", k, t) for k in (4, 8, 16) for t in (0.5, 0.7)]
)


@dataclass
class TrainReport:
    settings: dict[str, ClassSettings]
    config: ControllerConfig
    train_split: dict[str, list[str]]  # class -> request ids used for fitting
    held_out: dict[str, list[str]]
    rows: list[dict] = field(default_factory=list)  # per class: throughputs and regret on held-out traces


def split_by_class(traces: Sequence, held_out_share: float = 0.5, seed: int = 0) -> tuple[list, list]:
    """Stratified split: per class, a shuffled ``held_out_share`` of the traces (at least one each side if >= 2 and
    the share is above 0; a share of 0 holds out nothing)."""
    rng = random.Random(seed)
    by_class: dict[str, list] = defaultdict(list)
    for t in traces:
        by_class[t.request_class].append(t)
    train, test = [], []
    for cls in sorted(by_class):
        items = sorted(by_class[cls], key=lambda t: t.request_id)
        rng.shuffle(items)
        n_test = round(len(items) * held_out_share)
        if len(items) >= 2 and held_out_share > 0:
            n_test = min(max(n_test, 1), len(items) - 1)
        test += items[:n_test]
        train += items[n_test:]
    return train, test


def _simulate(traces, policy, cost):
    from ..traces.simulate import simulate  # traces -> policy import direction: keep policy importable alone

    return simulate(traces, policy, cost)


def adaptive(cost: CostModel, config: ControllerConfig, pair_id: str | None = None) -> AdaptivePolicy:
    """A fresh controller with an empty in-memory store."""
    return AdaptivePolicy(cost, AlphaEstimator(pair_id=pair_id or cost.pair_id), config)


def warm_throughput(traces: Sequence, cost: CostModel, config: ControllerConfig, warm: Sequence | None = None) -> float:
    """Throughput on ``traces`` after the controller's store has seen ``warm`` (default: the traces themselves)."""
    policy = adaptive(cost, config)
    _simulate(warm if warm is not None else traces, policy, cost)
    return _simulate(traces, policy, cost).throughput()


class ProfiledPriors:
    """Per model-type drafter, its accepted and proposed tokens per round on some traces at (max_k, threshold).

    Measured by replaying the drafter alone (a fixed policy) over the traces, memoised, so coordinate descent pays
    for each (drafter, max_k, threshold) once.
    """

    def __init__(self, traces: Sequence, cost: CostModel):
        self.traces = traces
        self.cost = cost
        self.drafters = [n for n in cost.drafts if traces and all(n in t.drafts for t in traces)]
        self._memo: dict[tuple[str, int, float], tuple[float, float] | None] = {}

    def measure(self, name: str, max_k: int, threshold: float) -> tuple[float, float] | None:
        key = (name, max_k, threshold)
        if key not in self._memo:
            rounds = accepted = proposed = 0
            for result in _simulate(self.traces, FixedPolicy(name, max_k, threshold), self.cost).results:
                for r in result.records:
                    if r.drafter == name and r.proposed:
                        rounds, accepted, proposed = rounds + 1, accepted + r.accepted, proposed + r.proposed
            self._memo[key] = (accepted / rounds, proposed / rounds) if rounds else None
        return self._memo[key]

    def apply(self, settings: ClassSettings) -> ClassSettings:
        """``settings`` with each measured drafter's prior set for its current max_k and threshold."""
        for name in self.drafters:
            d = settings.for_drafter(name)
            measured = self.measure(name, d.max_k, d.threshold)
            prior = {"prior_accepted": None, "prior_proposed": None}
            if measured is not None:
                prior = {"prior_accepted": round(measured[0], 3), "prior_proposed": round(measured[1], 3)}
            path = "model" if name == "model" else f"drafters.{name}"
            for field_name, value in prior.items():
                settings = with_setting(settings, f"{path}.{field_name}", value)
        return settings


def tune_class(traces: Sequence, cost: CostModel, config: ControllerConfig, cls: str | None,
               grid: dict[str, list] | None = None, passes: int = 2, margin: float = 0.001,
               start: ClassSettings | None = None) -> tuple[ClassSettings, float]:  # fmt: skip
    """Coordinate descent on one class's settings (``cls=None``: the shared default); returns the best settings
    and their warm throughput.

    A change is kept only if it gains more than ``margin`` (relative) on these traces: on a handful of requests
    per class, small gains are noise that does not transfer to the class's next requests. Every candidate carries
    the cold-start priors profiled on these traces for its own max_k and threshold.
    """
    grid = grid or grid_for(cost)
    priors = ProfiledPriors(traces, cost)
    current = priors.apply(start or config.for_class(cls))

    def score(settings: ClassSettings) -> float:
        if cls is None:
            trial = config.model_copy(update={"default": settings})
        else:
            trial = config.model_copy(update={"classes": {**config.classes, cls: settings}})
        return warm_throughput(traces, cost, trial)

    best = score(current)
    for _ in range(passes):
        improved = False
        for path, values in grid.items():
            for value in values:
                if get_setting(current, path) == value:
                    continue
                candidate = priors.apply(with_setting(current, path, value))
                usable = [candidate.for_drafter(n).enabled for n in cost.drafts] + [candidate.use_lookup]
                if not any(usable):
                    continue
                s = score(candidate)
                if s > best * (1 + margin):
                    best, current, improved = s, candidate, True
        if not improved:
            break
    return current, best


def tune_global(traces: Sequence, cost: CostModel, config: ControllerConfig,
                grid: dict[str, list] = GLOBAL_GRID) -> ControllerConfig:  # fmt: skip
    best = warm_throughput(traces, cost, config)
    for name, values in grid.items():
        for value in values:
            candidate = config.model_copy(update={name: value})
            s = warm_throughput(traces, cost, candidate)
            if s > best * 1.001:
                best, config = s, candidate
    return config


def per_request_oracle(traces: Sequence, cost: CostModel, candidates: Sequence[FixedPolicy] = FIXED_CANDIDATES):
    """Per request, the fastest fixed configuration in hindsight: {request_id: (policy name, seconds, tokens)}."""
    best: dict[str, tuple[str, float, int]] = {}
    for policy in candidates:
        for r in _simulate(traces, policy, cost).results:
            if r.request_id not in best or r.seconds < best[r.request_id][1]:
                best[r.request_id] = (policy.name, r.seconds, r.tokens)
    return best


def train(traces: Sequence, cost: CostModel, held_out_share: float = 0.5, seed: int = 0,
          base: ControllerConfig | None = None, progress: Callable[[str, int, int], None] | None = None,
          class_margin: float = CLASS_MARGIN) -> TrainReport:  # fmt: skip
    """Fit shared, then per-class, then global settings on a training split; evaluate on the held-out split.

    The shared setting is tuned on all training traces; each class starts from it and departs from it only
    where that gains more than ``class_margin`` on the class's own traces (shrinkage toward the shared setting:
    per-class knobs tuned freely on a few requests fitted noise and lost to one shared hybrid on new requests).
    Each class keeps its own profiled cold-start priors either way.
    """
    base = base or ControllerConfig()
    train_set, test_set = split_by_class(traces, held_out_share, seed)
    by_class: dict[str, list] = defaultdict(list)
    for t in train_set:
        by_class[t.request_class].append(t)
    classes = sorted(by_class)
    shared, _ = tune_class(train_set, cost, base.model_copy(update={"classes": {}}), None)
    shared = without_priors(shared)  # priors profiled on all classes at once describe none of them
    base = base.model_copy(update={"default": shared, "classes": {}})
    if progress:
        progress("tuning classes", 0, len(classes))
    settings: dict[str, ClassSettings] = {}
    for n, cls in enumerate(classes, 1):
        settings[cls], _ = tune_class(by_class[cls], cost, base, cls, margin=class_margin, start=shared)
        if progress:
            progress("tuning classes", n, len(classes))
    config = base.model_copy(update={"classes": settings})
    config = tune_global(train_set, cost, config)
    report = TrainReport(
        settings, config,
        {c: [t.request_id for t in ts] for c, ts in by_class.items()},
        _ids_by_class(test_set),
    )  # fmt: skip
    report.rows = evaluate(test_set or train_set, cost, config, warm=train_set)
    return report


def _ids_by_class(traces) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for t in traces:
        out[t.request_class].append(t.request_id)
    return dict(out)


def evaluate(traces: Sequence, cost: CostModel, config: ControllerConfig, warm: Sequence | None = None) -> list[dict]:
    """Per class and overall: target-only, best fixed, adaptive (warm) and per-request-oracle throughputs."""
    policy = adaptive(cost, config)
    if warm:
        _simulate(warm, policy, cost)
    adaptive_run = _simulate(traces, policy, cost)
    plain = _simulate(traces, FixedPolicy(), cost)
    fixed_runs = {p.name: _simulate(traces, p, cost) for p in FIXED_CANDIDATES[1:]}
    oracle = per_request_oracle(traces, cost)
    rows = []
    for cls in sorted({t.request_class for t in traces}) + [None]:
        ids = {t.request_id for t in traces if cls is None or t.request_class == cls}
        o_tokens = sum(v[2] for k, v in oracle.items() if k in ids)
        o_seconds = sum(v[1] for k, v in oracle.items() if k in ids)
        best_fixed = max(fixed_runs.items(), key=lambda kv: kv[1].throughput(cls))
        row = {
            "class": cls or "all",
            "requests": len(ids),
            "target_only": plain.throughput(cls),
            "best_fixed": best_fixed[0],
            "best_fixed_tps": best_fixed[1].throughput(cls),
            "adaptive_tps": adaptive_run.throughput(cls),
            "oracle_tps": o_tokens / o_seconds,
        }
        row["adaptive_speedup"] = row["adaptive_tps"] / row["target_only"]
        row["adaptive_vs_oracle"] = row["adaptive_tps"] / row["oracle_tps"]
        row["regret"] = 1 - row["adaptive_vs_oracle"]
        rows.append(row)
    return rows
