"""Evaluating drafts on held-out traffic: acceptance from the collection, and end-to-end speed with the engine.

*Teacher-forced acceptance* (cheap: one draft forward per example, no generation). At each row that predicts a
response token, given the true prefix:

- greedy alpha: the draft's argmax equals the target's (what greedy verification accepts there);
- sampled alpha: sum over the target's top-k ids of min(p_target, q_draft), at temperature 1 (the acceptance
  probability of speculative sampling, slightly under-counted by the top-k cut).

The engine's alpha (accepted / proposed) also counts only proposals made after accepted ones, so it differs
a little from these per-position rates; both are reported.

*End to end*: target-only and every (drafter, k) configuration run on the same prompt back to back, the order
rotated from prompt to prompt, in one process; tokens/s = new tokens / wall seconds including prefill.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from transformers import PreTrainedModel

from ..engine import NO_DRAFTER, SpeculativeEngine, StopRule, fixed
from .collect import Collection
from .vocab import VocabMap

Progress = Callable[[int, int], None]


@dataclass
class AlphaCounts:
    rows: int = 0
    agree: int = 0  # greedy: draft argmax == target argmax
    overlap: float = 0.0  # sampled: sum of min(p, q) over the target's top-k

    @property
    def greedy(self) -> float:
        return self.agree / self.rows if self.rows else float("nan")

    @property
    def sampled(self) -> float:
        return self.overlap / self.rows if self.rows else float("nan")

    def add(self, other: AlphaCounts) -> None:
        self.rows += other.rows
        self.agree += other.agree
        self.overlap += other.overlap

    def to_json(self) -> dict:
        return {"rows": self.rows, "greedy_alpha": round(self.greedy, 4), "sampled_alpha": round(self.sampled, 4)}


@torch.inference_mode()
def _draft_rows(model: PreTrainedModel, tokens: torch.Tensor, rows: torch.Tensor, topk_ids: torch.Tensor,
                vmap: VocabMap | None, target_vocab: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The draft's argmax (target ids) [r] and its probabilities at the target's top-k ids [r, K]."""
    inputs = vmap.to_draft(tokens) if vmap is not None else tokens
    hidden = model.get_decoder()(input_ids=inputs[None].to(model.device), use_cache=False).last_hidden_state[0]
    vocab = vmap.size if vmap is not None else target_vocab
    logits = model.get_output_embeddings()(hidden.index_select(0, rows.to(model.device)))[:, :vocab]
    q = torch.softmax(logits.float(), dim=-1).cpu()  # [r, V or V']
    if vmap is None:
        return q.argmax(-1), q.gather(1, topk_ids)
    ids = vmap.to_draft(topk_ids)
    covered = ids < vmap.size
    return vmap.to_target(q.argmax(-1)), q.gather(1, ids.clamp_max(vmap.size - 1)) * covered


def teacher_forced_alpha(model: PreTrainedModel, collection: Collection, example_ids: Sequence[str],
                         vmap: VocabMap | None = None, progress: Progress | None = None) -> dict[str, AlphaCounts]:  # fmt: skip
    """Per class (and "all"): acceptance counts of ``model`` on the response rows of the examples.

    ``vmap`` given: ``model`` is a custom draft (inputs mapped, outputs over its kept ids); else a draft that
    shares the target's vocabulary.
    """
    out: dict[str, AlphaCounts] = defaultdict(AlphaCounts)
    target_vocab = collection.manifest.target.vocab_size
    for n, example in enumerate(collection.examples(example_ids), 1):
        rows = torch.arange(example.response_rows.start, example.response_rows.stop)
        top, q = _draft_rows(model, example.tokens, rows, example.topk_ids[rows], vmap, target_vocab)
        p = example.topk_probs[rows]
        counts = AlphaCounts(rows.numel(), int((top == example.topk_ids[rows, 0]).sum()),
                             float(torch.minimum(p, q).sum()))  # fmt: skip
        out[example.record.request_class].add(counts)
        out["all"].add(counts)
        if progress:
            progress(n, len(example_ids))
    return dict(out)


@dataclass
class Run:
    """One end-to-end generation."""

    prompt: int
    request_class: str
    drafter: str
    k: int
    tokens: int
    seconds: float
    proposed: int
    accepted: int
    output_sha: str

    @property
    def config(self) -> str:
        return config_name(self.drafter, self.k)


def config_name(drafter: str, k: int) -> str:
    return "target" if k == 0 else f"{drafter} k={k}"


def end_to_end(engine: SpeculativeEngine, prompts: Sequence[tuple[str, torch.Tensor]], configs: Sequence[tuple[str, int]],
               stop: StopRule, progress: Progress | None = None) -> list[Run]:  # fmt: skip
    """Every config on every prompt ([(class, ids [L])]), interleaved per prompt with the order rotated."""
    import hashlib

    configs = list(configs)
    engine.generate(prompts[0][1][:8], fixed(*configs[-1]), stop=StopRule(4))  # warm-up: one-off allocations
    runs = []
    for p, (cls, ids) in enumerate(prompts):
        order = configs[p % len(configs) :] + configs[: p % len(configs)]
        for drafter, k in order:
            decide = fixed(drafter, k) if k else fixed(NO_DRAFTER, 0)
            start = time.perf_counter()
            out = engine.generate(ids, decide, stop=stop)
            seconds = time.perf_counter() - start
            digest = hashlib.sha1(str(out.new_tokens.tolist()).encode()).hexdigest()[:12]
            runs.append(Run(p, cls, drafter if k else NO_DRAFTER, k, out.num_new_tokens, seconds, out.proposed,
                            out.accepted, digest))  # fmt: skip
            if progress:
                progress(len(runs), len(prompts) * len(configs))
    return runs


def summarize(runs: Sequence[Run], drafters: Sequence[str] = ("model", "custom")) -> dict:
    """Per class and "all": tokens/s and engine alpha per config, each drafter's best k, speedups, the ratio.

    ``ratio`` = custom's best speedup / generic ("model") best speedup, both over target-only on the same prompts;
    with more drafters than those two, ``ratio_over`` has custom's best over each one's.
    """
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        groups[r.request_class].append(r)
        groups["all"].append(r)
    table = {}
    for cls in sorted(groups, key=lambda c: (c == "all", c)):
        rs = groups[cls]
        by_config: dict[str, list[Run]] = defaultdict(list)
        for r in rs:
            by_config[r.config].append(r)
        configs = {
            name: {
                "tokens_per_s": sum(r.tokens for r in group) / sum(r.seconds for r in group),
                "alpha": (sum(r.accepted for r in group) / sum(r.proposed for r in group))
                if sum(r.proposed for r in group) else None,
                "prompts": len(group),
            }
            for name, group in by_config.items()
        }  # fmt: skip
        base = configs["target"]["tokens_per_s"] if "target" in configs else float("nan")
        for c in configs.values():
            c["speedup"] = c["tokens_per_s"] / base
        best = {}
        for drafter in drafters:
            mine = {n: c for n, c in configs.items() if n.startswith(f"{drafter} k=")}
            if mine:
                name = max(mine, key=lambda n: mine[n]["tokens_per_s"])
                best[drafter] = {"config": name, **mine[name]}
        entry = {"configs": configs, "best": best}
        if "model" in best and "custom" in best:
            entry["ratio"] = best["custom"]["speedup"] / best["model"]["speedup"]
        if "custom" in best and len(best) > 2:  # several generic drafters (e.g. bf16 and int8): custom over each
            entry["ratio_over"] = {d: best["custom"]["speedup"] / b["speedup"] for d, b in best.items() if d != "custom"}
        table[cls] = entry
    prompts = len({r.prompt for r in runs})
    same = _agreement(runs)
    return {"classes": table, "prompts": prompts, "outputs_equal_target_share": same}


def _agreement(runs: Sequence[Run]) -> float:
    """Share of speculative runs whose output equals target-only's on the same prompt (1.0 in float32)."""
    reference = {r.prompt: r.output_sha for r in runs if r.k == 0}
    spec = [r for r in runs if r.k > 0 and r.prompt in reference]
    return sum(r.output_sha == reference[r.prompt] for r in spec) / len(spec) if spec else float("nan")


def runs_to_json(runs: Sequence[Run]) -> list[dict]:
    return [asdict(r) for r in runs]
