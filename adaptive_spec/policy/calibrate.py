"""Measuring the cost model on the machine at hand (``adaptive-spec calibrate``).

Every number is a median over repetitions of the real forward, on random token ids at the given context length,
so the table is what the engine will pay here: the same models, dtype, threads and device.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel

from ..engine import PromptLookupDrafter
from ..engine.kv import CachedLM
from ..engine.sampling import GREEDY, distribution
from ..logs import get_logger
from .cost import CostModel, CostTable

log = get_logger("adaptive_spec.calibrate")

TARGET_TOKENS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 17)
DRAFT_TOKENS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
CONTEXTS = (128, 1024)
PREFILL_TOKENS = (32, 128, 512, 1024)

Progress = Callable[[str, int, int], None]


def hardware() -> str:
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name()}"
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    # the vector extensions torch dispatches to: two "AMD EPYC" machines differ 3x in multi-token bf16 forwards
    # between AVX2 and AVX-512 (the README's measurements)
    capability = torch.backends.cpu.get_cpu_capability()
    return f"cpu: {model} ({capability}), {torch.get_num_threads()} threads, {os.cpu_count()} cpus"


# A 4-token verify costing this many plain steps or more: the model draft pays only at very high acceptance.
STEEP_VERIFY = 2.0


def steep_verify_warning(cost: CostModel) -> str | None:
    """What to tell a user whose machine prices wide forwards near their tokens one by one (None where it does
    not): there the controller decodes plainly almost everywhere, which is right, but the reason is the hardware."""
    ctx = cost.target.contexts[0]
    growth = cost.verify_growth(4, ctx)
    if growth < STEEP_VERIFY:
        return None

    def break_even(drafter: str, k: int) -> str:
        alpha = cost.break_even_alpha(drafter, k, ctx)
        return f"{alpha:.2f} at k={k}" if math.isfinite(alpha) else f"never at k={k}"

    evens = [f"prompt lookup {break_even('lookup', 2)}"]
    if cost.draft is not None:
        evens.append(f"the model draft {break_even('model', 1)}")
    text = (f"On this machine a 4-token verify costs {growth:.1f} plain steps (context {ctx}): speculative "
            f"decoding has little to win here. Break-even acceptance: {', '.join(evens)}. The controller decodes "
            "plainly where drafting does not pay.")
    if cost.hardware.startswith("cpu"):  # hardware() names the vector extensions torch found there
        text += (f" Measured on {cost.hardware}: without AVX-512 bf16 or AMX a bf16 forward costs about what its "
                 "tokens cost one by one (README, Loading).")
    return text


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _forward_s(lm: CachedLM, n: int, vocab: int) -> float:
    tokens = torch.randint(100, vocab, (n,), device=lm.device)
    _sync()
    start = time.perf_counter()
    lm.forward(tokens)
    _sync()
    elapsed = time.perf_counter() - start
    lm.rollback(n)
    return elapsed


def measure_table(model: PreTrainedModel, tokens: Sequence[int], contexts: Sequence[int], reps: int,
                  progress: Progress | None = None, label: str = "") -> CostTable:  # fmt: skip
    """Median forward times; the repetitions sweep all token counts in turn (alternating direction), so a slow
    spell of the machine lands on one repetition of many points, not on every repetition of one point, and the
    median removes it. Isolated spikes that survive are replaced (``CostTable.despiked``)."""
    lm = CachedLM(model)
    vocab = min(lm.vocab_size, 30_000)
    rows = []
    for c, context in enumerate(contexts):
        lm.reset()
        lm.forward(torch.randint(100, vocab, (context,), device=lm.device), last_only=True)
        for n in tokens[:3]:  # warm-up
            _forward_s(lm, n, vocab)
        samples: dict[int, list[float]] = {n: [] for n in tokens}
        for rep in range(reps):
            for n in tokens if rep % 2 == 0 else reversed(tokens):
                samples[n].append(_forward_s(lm, n, vocab))
        rows.append([statistics.median(samples[n]) for n in tokens])
        if progress:
            progress(label, c + 1, len(contexts))
    lm.reset()
    return _despiked(CostTable(tokens=list(tokens), contexts=list(contexts), seconds=rows), label)


def _despiked(table: CostTable, label: str) -> CostTable:
    table, replaced = table.despiked()
    if replaced:
        log.info("calibration_spikes_replaced", table=label, points=replaced)
    return table


def measure_prefill(model: PreTrainedModel, lengths: Sequence[int], reps: int) -> CostTable:
    lm = CachedLM(model)
    vocab = min(lm.vocab_size, 30_000)
    row = []
    for n in lengths:
        times = []
        for _ in range(reps):
            lm.reset()
            ids = torch.randint(100, vocab, (n,), device=lm.device)
            _sync()
            start = time.perf_counter()
            lm.forward(ids, last_only=True)
            _sync()
            times.append(time.perf_counter() - start)
        row.append(statistics.median(times))
    lm.reset()
    return CostTable(tokens=list(lengths), contexts=[0], seconds=[row])


def measure_lookup(context: int = 512, reps: int = 50) -> float:
    lookup = PromptLookupDrafter()
    ids = torch.randint(0, 1000, (context,))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        lookup.match(ids, 8)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_draft_step_overhead(vocab: int, reps: int = 50) -> float:
    """What a model drafter does per token besides the forward: softmax, argmax, bookkeeping."""
    logits = torch.randn(1, vocab)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        q = distribution(logits, GREEDY)[0]
        token = q.argmax()
        q[token].item()
        torch.stack([token, token])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def calibrate(
    target: PreTrainedModel,
    draft: PreTrainedModel | None,
    pair_id: str,
    dtype: str,
    reps: int = 3,
    contexts: Sequence[int] = CONTEXTS,
    progress: Progress | None = None,
    round_overhead_s: float | None = None,
) -> CostModel:
    """Measure target (and draft) forward times here; ~1 minute on a 2-core CPU for the reference pair."""
    target_table = measure_table(target, TARGET_TOKENS, contexts, reps, progress, "target forwards")
    draft_table = measure_table(draft, DRAFT_TOKENS, contexts, reps, progress, "draft forwards") if draft else None
    prefill = measure_prefill(target, PREFILL_TOKENS, max(1, reps - 1))
    return CostModel(
        pair_id=pair_id,
        hardware=hardware(),
        dtype=dtype,
        measured_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        target=target_table,
        drafts={"model": draft_table} if draft_table is not None else {},
        prefill=prefill,
        lookup_s=measure_lookup(),
        round_overhead_s=round_overhead_s if round_overhead_s is not None else 1e-3,
        draft_step_overhead_s=measure_draft_step_overhead(CachedLM(target).vocab_size),
    )


def measure_round_overhead(engine, tokens: int = 24, reps: int = 2) -> float:
    """Seconds per round the engine spends outside model forwards (accept, roll back, bookkeeping)."""
    from ..engine import StopRule, fixed

    vocab = min(engine.target.vocab_size, 30_000)
    drafter = "model" if "model" in engine.drafters else "lookup"
    samples = []
    for _ in range(reps):
        ids = torch.randint(100, vocab, (64,), device=engine.device)
        out = engine.generate(ids, fixed(drafter, 3), stop=StopRule(tokens))
        outside = out.total_s - out.prefill_s - sum(r.draft_s + r.verify_s for r in out.records)
        samples.append(outside / max(len(out.records), 1))
    return max(statistics.median(samples), 0.0)


def measure_drafter_table(engine, name: str, tokens: Sequence[int] = DRAFT_TOKENS, contexts: Sequence[int] = CONTEXTS,
                          reps: int = 3) -> CostTable:  # fmt: skip
    """A drafter's table measured through its own ``propose``: catch up on n context tokens, then draft one.

    For drafters that are not a plain causal LM, e.g. a draft head, which reads the target's features of the
    context (so the target runs over the context first, as the engine's own forwards would have). Rows have the
    meaning ``CostModel.draft_s`` expects: (catch-up n, context) -> seconds for that first draft step.
    """
    from ..engine.drafters import DraftRequest

    drafter, target = engine.drafters[name], engine.target
    vocab = min(target.vocab_size, 30_000)
    rows = []
    for context in contexts:
        ids = torch.randint(100, vocab, (context + 1,), device=engine.device)
        target.reset()
        target.forward(ids[:-1], last_only=True)
        drafter.reset()
        row = []
        for n in tokens:
            times = []
            for _ in range(reps + 1):  # the first repetition is a warm-up
                drafter.propose(ids[: context + 1 - n], DraftRequest(1))  # back to "all but the last n tokens seen"
                _sync()
                start = time.perf_counter()
                drafter.propose(ids, DraftRequest(1))
                _sync()
                times.append(time.perf_counter() - start)
            row.append(statistics.median(times[1:]))
        rows.append(row)
    target.reset()
    drafter.reset()
    return _despiked(CostTable(tokens=list(tokens), contexts=list(contexts), seconds=rows), name)


def calibrate_pair(target: PreTrainedModel, draft: PreTrainedModel | None, pair_id: str, dtype: str, reps: int = 3,
                   progress: Progress | None = None, heads: dict[str, str | os.PathLike] | None = None,
                   custom_drafts: dict[str, str | os.PathLike] | None = None) -> CostModel:  # fmt: skip
    """What ``adaptive-spec calibrate`` measures: the forward tables plus this engine's own per-round overhead.

    ``heads`` / ``custom_drafts``: draft heads (``distill --kind head``) and custom drafts (``distill``) to price too,
    {drafter name: directory}; each gets its own table in ``drafts``, measured through its own ``propose``.
    """
    from ..distill.artifact import load_custom_draft
    from ..distill.head import attach_saved_head
    from ..engine import SpeculativeEngine
    from ..runtime import standard_drafters

    engine = SpeculativeEngine(target, standard_drafters(target, draft))
    for name, directory in (heads or {}).items():
        attach_saved_head(engine, directory, name)
    for name, directory in (custom_drafts or {}).items():
        engine.add_drafter(load_custom_draft(directory, target, name=name))
    overhead = measure_round_overhead(engine)
    cost = calibrate(target, draft, pair_id, dtype, reps, progress=progress, round_overhead_s=overhead)
    extra = [*(heads or {}), *(custom_drafts or {})]
    if not extra:
        return cost
    tables = {name: measure_drafter_table(engine, name, reps=reps) for name in extra}
    if progress:
        progress("extra drafters", len(extra), len(extra))
    return cost.model_copy(update={"drafts": {**cost.drafts, **tables}})
