"""Would a draft head gain from drafting a token tree (EAGLE-2 style) instead of a chain? Measured, teacher forced.

For every response position of a head collection (``distill --kind head`` with hidden states), the head drafts from
the target's true feature, then from its own predicted features along the *true* path, and we record the rank of
the target's token among the head's candidates at each depth. With greedy verification a static tree that expands
the top-b_j candidates at depth j accepts exactly as long as the true token stays inside those top-b_j, so the
expected accepted length of any tree shape follows from those ranks; the ranks are exact for the true path, whatever
else the tree holds.

The price of a shape is read from a saved calibration: the target's verify forward over 1 + nodes tokens, plus one
head forward per depth (a depth's nodes go through the head together; at these widths that costs about one token).
Only shapes the calibrated table covers (1 + nodes <= its widest forward) are priced.

    # the head's held-out code rows, collected here (given responses, ~2 min), then measured
    python benchmarks/head_tree.py --head-dir heads/qwen2.5-coder-code --rows heads/qwen2.5-coder-code/heldout.jsonl \
        --collection runs/heldout-given --only given
    # the target's own responses: a collection of `distill --kind head` on rows without responses
    python benchmarks/head_tree.py --head-dir heads/qwen2.5-coder-code --collection runs/head/collection \
        --only generated --out benchmarks/results/head_tree_generated
    # two heads trained on different rows, compared on rows neither trained on
    python benchmarks/head_tree.py --head-dir runs/big --collection runs/big/collection --only given \
        --select runs/big/heldout.jsonl --exclude head_traffic.jsonl --out runs/small_vs_big
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaptive import saved_cost_model  # noqa: E402  (benchmarks/adaptive.py)

from adaptive_spec.distill.collect import ChatEncoder, Collection, CollectSettings, collect, example_id  # noqa: E402
from adaptive_spec.distill.head import head_inputs, load_head, own_feature_passes  # noqa: E402
from adaptive_spec.distill.traffic import read_traffic  # noqa: E402
from adaptive_spec.models import configure_threads, load_pair  # noqa: E402
from results_files import write_results  # noqa: E402  (benchmarks/results_files.py)

RESULTS = ROOT / "benchmarks" / "results"
# chains, then trees widening at the root (where the head is most often second-best), up to 16 nodes
SHAPES = [(1,), (1, 1), (1, 1, 1), (1, 1, 1, 1), (1, 1, 1, 1, 1), (2,), (2, 1), (2, 1, 1), (2, 1, 1, 1), (3, 1),
          (3, 1, 1), (4, 1, 1), (2, 2), (2, 2, 1), (2, 2, 2), (3, 2), (3, 2, 1), (4, 2), (4, 1, 1, 1)]  # fmt: skip


@torch.inference_mode()
def true_path_ranks(head, embed, collection: Collection, ids: list[str], depth: int) -> torch.Tensor:
    """[anchors, depth]: rank of the target's top-1 token among the head's candidates at each depth of the true
    path, from every anchor that drafts response tokens (a token outside the head's vocabulary: rank = V')."""
    to_head = torch.full((int(head.vocab_map.max()) + 1,), -1, dtype=torch.long)
    to_head[head.vocab_map] = torch.arange(head.vocab_map.numel())
    out = []
    for ex in collection.examples(ids, hidden=True):
        n = ex.hidden.shape[0]
        anchors = torch.arange(max(ex.record.prompt_len - 2, 0), n - 1 - depth)
        if len(anchors) == 0:
            continue
        top1 = ex.topk_ids[:, 0]
        features, tokens = head_inputs(ex, embed, torch.float32)
        ranks = []
        for j, (_, logits) in enumerate(own_feature_passes(head, features, tokens, depth)):
            # row r guesses x_{r+2}, whose truth is top1[r + 1]
            rows = anchors + j
            truth = top1[rows + 1]
            idx = torch.where(truth < to_head.numel(), to_head[truth.clamp(max=to_head.numel() - 1)], -1)
            scores = logits[0, rows]
            rank = (scores > scores.gather(1, idx.clamp(min=0)[:, None])).sum(1)
            ranks.append(torch.where(idx < 0, head.vocab_map.numel(), rank))
        out.append(torch.stack(ranks, 1))
    return torch.cat(out)


def row_ids(path: Path) -> set[str]:
    """The ids a collection stores a traffic file's rows under."""
    return {example_id(row) for row in read_traffic(path).rows}


def shape_figures(ranks: torch.Tensor, shape: tuple[int, ...], cost, context: int, head_s: float) -> dict:
    covered = torch.ones(len(ranks), dtype=torch.bool)
    accepted, nodes, width, alphas = 0.0, 0, 1, []
    for j, b in enumerate(shape):
        before = int(covered.sum())
        covered &= ranks[:, j] < b
        alphas.append(int(covered.sum()) / before if before else 0.0)
        accepted += float(covered.float().mean())
        width *= b
        nodes += width
    entry = {"shape": list(shape), "nodes": nodes, "accepted": round(accepted, 3),
             "alpha": [round(a, 3) for a in alphas]}
    widest = max(cost.target.tokens)
    if 1 + nodes <= widest:
        plain = cost.verify_s(1, context)
        round_s = cost.verify_s(1 + nodes, context) + len(shape) * head_s
        entry["speedup"] = round((1 + accepted) * plain / round_s, 3)
    return entry


def shown(path: Path) -> str:
    """A path as the reader can find it: relative to the repository when inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def needed_alpha(cost, context: int, head_s: float, goal: float) -> float | None:
    """The smallest uniform per-position acceptance at which a chain (best k) reaches ``goal``x over plain."""
    plain = cost.verify_s(1, context)
    for step in range(500, 1000):
        alpha = step / 1000
        best = max((1 - alpha ** (k + 1)) / (1 - alpha) * plain / (cost.verify_s(k + 1, context) + k * head_s)
                   for k in range(1, max(cost.target.tokens)))  # fmt: skip
        if best >= goal:
            return alpha
    return None


def markdown(result: dict) -> str:
    m = result["meta"]
    lines = ["# Draft head: chain or tree? (teacher forced, true-path ranks)", "",
             f"Head `{m['head_dir']}` on {m['anchors']} response positions of {m['examples']} examples of "
             f"`{m['collection']}`; priced with `{m['cost_model']}` at context {m['context']} (head "
             f"{m['head_vs_target']:.3f} of a target forward per depth).", ""]
    if m.get("select") or m.get("exclude"):
        lines += [f"Examples: those of `{m['select'] or 'all'}`, less those of "
                  f"{', '.join(f'`{e}`' for e in m['exclude']) or 'none'}.", ""]
    lines += ["Top-b coverage per depth along the true path (α_j: the target's token is inside the head's top b at "
              "depth j, given it was at every earlier depth):", "",
              "| b | " + " | ".join(f"α_{j + 1}" for j in range(m["depth"])) + " |",
              "|---|" + "---|" * m["depth"]]  # fmt: skip
    for b, alphas in result["coverage"].items():
        lines.append(f"| {b} | " + " | ".join(f"{a:.3f}" for a in alphas) + " |")
    lines += ["", "| shape (candidates per depth) | nodes | accepted per round | est. speedup over plain |",
              "|---|---|---|---|"]
    for e in result["shapes"]:
        lines.append(f"| {e['shape']} | {e['nodes']} | {e['accepted']:.2f} | {e.get('speedup', '-')} |")
    best_chain = max((e for e in result["shapes"] if max(e["shape"]) == 1), key=lambda e: e.get("speedup", 0))
    best = max(result["shapes"], key=lambda e: e.get("speedup", 0))
    lines += ["", f"Best chain: {best_chain['shape']} at {best_chain.get('speedup')}×; best shape: {best['shape']} at "
              f"{best.get('speedup')}×. Decode only (no prefill, no loop overhead), so real runs land lower.", "",
              f"A chain reaches {m['goal']}× over plain (issue 9's bar on code) only with a uniform per-position "
              f"acceptance of {result['needed_alpha']} or more at these costs.", ""]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head-dir", type=Path, required=True)
    parser.add_argument("--collection", type=Path, required=True, help="a collection with hidden states")
    parser.add_argument("--rows", type=Path, default=None,
                        help="traffic rows to collect into --collection first (rows with responses; resumes)")
    parser.add_argument("--only", choices=["generated", "given", "all"], default="generated",
                        help="which examples: responses the target wrote, given ones, or both")
    parser.add_argument("--select", type=Path, default=None,
                        help="traffic rows (JSONL) whose ids are measured, e.g. a run's heldout.jsonl (default: all)")
    parser.add_argument("--exclude", type=Path, action="append", default=[],
                        help="traffic rows (JSONL) whose ids are left out, e.g. another head's training traffic, "
                             "so heads trained on different rows meet on rows neither saw (repeatable)")
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--cost", type=Path, default=RESULTS / "adaptive_siblings.json",
                        help="a calibrated run's result (adaptive.py --calibrate) for the verify widths")
    parser.add_argument("--head-vs-target", type=float, default=None,
                        help="head cost per depth / target forward (default: benchmarks/results/head.json)")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--goal", type=float, default=2.5, help="speedup over plain to find the needed alpha for")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "head_tree")
    args = parser.parse_args()

    configure_threads(args.threads)
    started = time.perf_counter()
    pair = load_pair(dtype="bfloat16", with_draft=False)
    target = pair.target
    if args.rows is not None:
        rows = [r for r in read_traffic(args.rows).rows if r.response]
        settings = CollectSettings(hidden_states=True, max_tokens=384)
        collect(target, ChatEncoder(pair.tokenizer), rows, args.collection, settings)
    head = load_head(args.head_dir, target).float()
    collection = Collection(args.collection)
    ids = [e.id for e in collection.manifest.examples if args.only == "all" or e.response == args.only]
    if args.select is not None:
        chosen = row_ids(args.select)
        ids = [i for i in ids if i in chosen]
    left_out = set().union(*map(row_ids, args.exclude))
    ids = [i for i in ids if i not in left_out]
    if not ids:
        raise SystemExit(f"{args.collection} has no {args.only!r} examples (after --select / --exclude)")
    ranks = true_path_ranks(head, target.get_input_embeddings(), collection, ids, args.depth)
    cost = saved_cost_model(args.cost)
    ratio = args.head_vs_target or json.loads((RESULTS / "head.json").read_text())["cost"]["head_vs_target"]
    head_s = ratio * cost.verify_s(1, args.context)
    coverage = {}
    for b in (1, 2, 3, 4):
        coverage[b] = shape_figures(ranks, (b,) * args.depth, cost, args.context, head_s)["alpha"]
    shapes = [shape_figures(ranks, s, cost, args.context, head_s) for s in SHAPES if len(s) <= args.depth]
    result = {"meta": {"head_dir": str(args.head_dir), "collection": str(args.collection), "only": args.only,
                       "select": shown(args.select) if args.select else None,
                       "exclude": [shown(p) for p in args.exclude],
                       "examples": len(ids), "anchors": len(ranks), "depth": args.depth, "cost_model": shown(args.cost),
                       "context": args.context, "head_vs_target": ratio, "torch": torch.__version__,
                       "goal": args.goal, "seconds": round(time.perf_counter() - started, 1)},
              "coverage": coverage, "shapes": shapes,
              "needed_alpha": needed_alpha(cost, args.context, head_s, args.goal)}  # fmt: skip
    write_results(args.out, result, markdown(result))


if __name__ == "__main__":
    main()
