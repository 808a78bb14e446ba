"""Draft-head shapes compared on what decides them: cost per drafted token and the acceptance a vocabulary allows.

- Cost: a head of each shape (draft vocabulary V', MLP width of its one layer), random weights, bf16, drafting one
  token after a context of 256 through the engine's own ``HeadDrafter`` (``measure_drafter_table``), against one
  target forward at the same context. Weights do not change the cost, so no training is needed for this part.
- Vocabulary ceiling: V' is chosen from the training examples of a ``distill --kind head`` collection as the run
  does (token counts + the target's predicted mass); on the held-out examples, the share of response positions
  whose target top-1 lies in V' is the most a head with that vocabulary can reach for alpha_1.

Writes ``benchmarks/results/head_variants.{json,md}``.

    python benchmarks/head_variants.py --head-dir runs/head        # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaptive_spec.distill.collect import Collection  # noqa: E402
from adaptive_spec.distill.pipeline import token_statistics  # noqa: E402
from adaptive_spec.distill.vocab import choose_vocab  # noqa: E402
from adaptive_spec.engine import SpeculativeEngine  # noqa: E402
from adaptive_spec.engine.head import DraftHead, attach_head, head_config  # noqa: E402
from adaptive_spec.models import configure_threads, load_pair  # noqa: E402
from adaptive_spec.policy.calibrate import measure_drafter_table, measure_table  # noqa: E402
from results_files import write_results  # noqa: E402  (benchmarks/results_files.py)

RESULTS = ROOT / "benchmarks" / "results"
CONTEXT = 256


def vocabulary_ceiling(directory: Path, sizes: list[int]) -> dict:
    collection = Collection(directory / "collection")
    held_lines = {json.loads(line)["line"] for line in (directory / "heldout.jsonl").read_text().splitlines() if line.strip()}
    examples = collection.manifest.examples
    train = [e.id for e in examples if e.line not in held_lines]
    held = [e.id for e in examples if e.line in held_lines]
    vocab = collection.manifest.target.vocab_size
    counts, mass = token_statistics(collection, train)
    top1 = torch.cat([ex.topk_ids[ex.response_rows, 0] for ex in collection.examples(held)])
    out = {"train_examples": len(train), "heldout_examples": len(held), "heldout_positions": int(top1.numel())}
    for size in sizes:
        kept = torch.zeros(vocab, dtype=torch.bool)
        kept[choose_vocab(counts, mass, size)] = True
        out[str(size)] = float(kept[top1].double().mean())
    return out


def head_costs(target, sizes: list[int], widths: list[int], reps: int) -> dict:
    engine = SpeculativeEngine(target, [])
    plain = measure_table(target, (1,), (CONTEXT,), reps).seconds[0][0]
    out = {"context": CONTEXT, "target_forward_ms": plain * 1e3, "heads": []}
    for width in widths:
        for size in sizes:
            name = f"v{size}-w{width}"
            torch.manual_seed(0)
            head = DraftHead(head_config(target.config, width), torch.arange(size)).to(target.dtype)
            attach_head(engine, head, name)
            seconds = measure_drafter_table(engine, name, tokens=(1,), contexts=(CONTEXT,), reps=reps).seconds[0][0]
            out["heads"].append({"vocab": size, "mlp_width": width, "ms_per_token": seconds * 1e3,
                                 "vs_target": seconds / plain})  # fmt: skip
            print(out["heads"][-1], flush=True)
    return out


def markdown(doc: dict) -> str:
    cost, ceiling = doc["cost"], doc["ceiling"]
    lines = ["# Draft-head shapes: cost per drafted token and the vocabulary's acceptance ceiling", "",
             f"bf16, {doc['threads']} threads; one target forward at context {cost['context']}: "
             f"{cost['target_forward_ms']:.1f} ms. Random-weight heads drafting one token through `HeadDrafter`.", "",
             "| draft vocabulary V' | MLP width | ms per drafted token | / target forward | held-out top-1 inside V' |",
             "|---|---|---|---|---|"]  # fmt: skip
    for h in cost["heads"]:
        inside = ceiling.get(str(h["vocab"]))
        lines.append(f"| {h['vocab']} | {h['mlp_width']} | {h['ms_per_token']:.1f} | {h['vs_target']:.3f} | "
                     + (f"{inside:.3f}" if inside is not None else "-") + " |")  # fmt: skip
    lines += ["", f"Ceiling measured on {ceiling['heldout_positions']} response positions of "
              f"{ceiling['heldout_examples']} held-out examples, V' chosen from {ceiling['train_examples']} training "
              f"examples of `{doc['head_dir']}`."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head-dir", type=Path, required=True, help="output directory of `distill --kind head`")
    parser.add_argument("--sizes", default="4096,8192,16384,32768,151936")
    parser.add_argument("--widths", default="2048,8960")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS / "head_variants")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    widths = [int(w) for w in args.widths.split(",")]
    configure_threads(args.threads)
    ceiling = vocabulary_ceiling(args.head_dir, sizes)
    print(json.dumps(ceiling), flush=True)
    target = load_pair(dtype="bfloat16", with_draft=False).target
    doc = {"head_dir": str(args.head_dir), "threads": args.threads, "ceiling": ceiling,
           "cost": head_costs(target, sizes, widths, args.reps)}  # fmt: skip
    write_results(args.out, doc, markdown(doc))


if __name__ == "__main__":
    main()
