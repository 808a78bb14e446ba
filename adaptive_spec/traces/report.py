""""Know your alpha": per-class acceptance and predicted speedups from traces, as tables, markdown and plots.

Per class and drafter:
- alpha: the share of positions where the drafter's next token is the target's (the per-token acceptance of
  Leviathan et al.), with a Beta(1, 1) posterior's 90% credible interval (positions counted as independent);
- mean accepted per round and predicted speedup over target-only at each fixed k, by exact replay priced with
  the calibrated cost model;
- the recommendation: the fastest of target-only, model draft at its best k, lookup at its best k.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..policy.base import FixedPolicy
from ..policy.cost import CostModel
from ..stats.beta import BetaPosterior
from .format import RequestTrace
from .simulate import simulate

KS = (1, 2, 3, 4, 6, 8, 12, 16)


@dataclass
class DrafterProfile:
    drafter: str
    alpha: float
    alpha_interval: tuple[float, float]
    coverage: float  # share of positions where the drafter proposes anything
    accepted_per_round: dict[int, float] = field(default_factory=dict)  # k -> mean accepted tokens
    speedup: dict[int, float] = field(default_factory=dict)  # k -> predicted speedup over target-only

    @property
    def best(self) -> tuple[int, float]:
        return max(self.speedup.items(), key=lambda kv: kv[1])


@dataclass
class ClassProfile:
    request_class: str
    requests: int
    tokens: int
    drafters: dict[str, DrafterProfile]

    @property
    def recommendation(self) -> str:
        best = ("off (target only)", 1.0)
        for name, d in self.drafters.items():
            k, s = d.best
            if s > best[1]:
                best = (f"{name} k={k}", s)
        return f"{best[0]} ({best[1]:.2f}x)"


def _alpha(successes: int, trials: int) -> tuple[float, tuple[float, float]]:
    posterior = BetaPosterior(1.0, 1.0).updated(successes, trials)
    return posterior.mean, posterior.interval(0.9)


def profile_class(traces: Sequence[RequestTrace], cost: CostModel, ks: Sequence[int] = KS) -> ClassProfile:
    plain = simulate(traces, FixedPolicy(), cost).throughput()
    positions = sum(t.num_tokens - 1 for t in traces)
    drafters: dict[str, DrafterProfile] = {}
    for name in sorted({d for t in traces for d in t.drafts} & set(cost.drafts)):  # what the cost model can price
        hits = sum(1 for t in traces for m in t.drafts[name].match[1:] if m > 0)
        mean, interval = _alpha(hits, positions)
        drafters[name] = DrafterProfile(name, mean, interval, 1.0)
    proposals = sum(1 for t in traces for n in t.lookup.len[1:] if n > 0)
    hits = sum(1 for t in traces for n, m in zip(t.lookup.len[1:], t.lookup.match[1:]) if n > 0 and m > 0)
    mean, interval = _alpha(hits, proposals)
    drafters["lookup"] = DrafterProfile("lookup", mean, interval, proposals / max(positions, 1))
    for name, d in drafters.items():
        for k in ks:
            run = simulate(traces, FixedPolicy(name, k), cost)
            rounds = [r for res in run.results for r in res.records if r.proposed > 0]
            d.accepted_per_round[k] = sum(r.accepted for r in rounds) / len(rounds) if rounds else 0.0
            d.speedup[k] = run.throughput() / plain
    return ClassProfile(traces[0].request_class, len(traces), sum(t.num_tokens for t in traces), drafters)


def profile_traces(traces: Sequence[RequestTrace], cost: CostModel, ks: Sequence[int] = KS) -> list[ClassProfile]:
    by_class: dict[str, list[RequestTrace]] = defaultdict(list)
    for t in traces:
        by_class[t.request_class].append(t)
    return [profile_class(by_class[c], cost, ks) for c in sorted(by_class)]


def to_json(profiles: Sequence[ClassProfile], cost: CostModel) -> dict:
    return {
        "cost_model": {"hardware": cost.hardware, "pair_id": cost.pair_id, "draft_cost_ratio": cost.draft_cost_ratio},
        "classes": [
            {
                "class": p.request_class,
                "requests": p.requests,
                "tokens": p.tokens,
                "recommendation": p.recommendation,
                "drafters": {
                    name: {
                        "alpha": d.alpha,
                        "alpha_interval_90": list(d.alpha_interval),
                        "coverage": d.coverage,
                        "accepted_per_round": {str(k): v for k, v in d.accepted_per_round.items()},
                        "predicted_speedup": {str(k): v for k, v in d.speedup.items()},
                    }
                    for name, d in p.drafters.items()
                },
            }
            for p in profiles
        ],
    }


def to_markdown(profiles: Sequence[ClassProfile], cost: CostModel, title: str = "Know your alpha") -> str:
    lines = [f"# {title}", "", f"Cost model: {cost.hardware}, pair `{cost.pair_id}`, {cost.dtype}; "
             f"draft step / target step c = {cost.draft_cost_ratio:.2f}.", "",
             "| class | requests | drafter | alpha (90% CI) | coverage | accepted/round k=2,4,8 | speedup k=1,2,4,8,16 | best |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in profiles:
        for name, d in p.drafters.items():
            lo, hi = d.alpha_interval
            acc = ", ".join(f"{d.accepted_per_round.get(k, float('nan')):.2f}" for k in (2, 4, 8))
            spd = ", ".join(f"{d.speedup.get(k, float('nan')):.2f}" for k in (1, 2, 4, 8, 16))
            k, s = d.best
            lines.append(f"| {p.request_class} | {p.requests} | {name} | {d.alpha:.2f} ({lo:.2f}-{hi:.2f}) | "
                         f"{d.coverage:.2f} | {acc} | {spd} | k={k}: {s:.2f}x |")  # fmt: skip
    lines += ["", "Recommendation per class:", ""]
    lines += [f"- **{p.request_class}**: {p.recommendation}" for p in profiles]
    return "\n".join(lines) + "\n"


def plot(profiles: Sequence[ClassProfile], out_dir: Path) -> list[Path]:
    """alpha_by_class.png and speedup_vs_k.png (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    names = sorted({d for p in profiles for d in p.drafters})
    fig, ax = plt.subplots(figsize=(max(6, len(profiles) * 0.8), 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [j + i * width for j in range(len(profiles))]
        ds = [p.drafters[name] for p in profiles]
        ax.bar(xs, [d.alpha for d in ds], width, label=name,
               yerr=[[d.alpha - d.alpha_interval[0] for d in ds], [d.alpha_interval[1] - d.alpha for d in ds]])  # fmt: skip
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(profiles))], [p.request_class for p in profiles], rotation=45)
    ax.set_ylabel("alpha (per-token acceptance)")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("Acceptance by class (90% credible intervals)")
    fig.tight_layout()
    alpha_png = out_dir / "alpha_by_class.png"
    fig.savefig(alpha_png, dpi=110)
    plt.close(fig)

    cols = min(4, len(profiles))
    rows = (len(profiles) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False, sharey=True)
    for ax, p in zip(axes.flat, profiles):
        for name, d in p.drafters.items():
            ks = sorted(d.speedup)
            ax.plot(ks, [d.speedup[k] for k in ks], marker="o", ms=3, label=name)
        ax.axhline(1.0, color="gray", ls="--", lw=1)
        ax.set_title(p.request_class, fontsize=9)
        ax.set_xlabel("k")
    for ax in list(axes.flat)[len(profiles) :]:
        ax.axis("off")
    axes[0][0].set_ylabel("predicted speedup")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Predicted speedup vs k (dashed: break-even)")
    fig.tight_layout()
    speed_png = out_dir / "speedup_vs_k.png"
    fig.savefig(speed_png, dpi=110)
    plt.close(fig)
    return [alpha_png, speed_png]
