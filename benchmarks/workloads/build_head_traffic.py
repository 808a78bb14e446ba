"""The traffic the reference pair's draft head is trained and evaluated on (`benchmarks/head.py`).

Whole modules of the stdlib code workload (`code.jsonl`, shuffled with a fixed seed, taken until 560 rows), plus
the first 24 Spec-Bench `math_reasoning` questions without responses (the target writes its own, 96 tokens, during
collection). `adaptive-spec distill --eval-split 0.12` then holds out whole modules and 3 questions.

    python benchmarks/workloads/build_head_traffic.py --out head_traffic.jsonl
    python benchmarks/workloads/build_head_traffic.py --code-rows 3000 --out head_traffic.jsonl   # the committed head

The committed head (`heads/qwen2.5-coder-code`) is trained on every module (`--code-rows 3000`: 2,680 code rows, all
the workload has); the default 560 rows trained the previous one, in about a quarter of the time.

``--target-responses`` drops the code rows' given responses (the stdlib source) so that the target writes its own
during collection, as it does for the math questions: at serving time the text a head drafts is the target's. The
previous committed head was trained without it, and accepts about as well on the target's own answers as on
held-out stdlib source (first draft token 0.53 vs 0.48, `benchmarks/results/head_tree*.md`), so the amount of
training text matters more than who wrote it. Generation makes collection much slower on a CPU (17-24 s per row at
96 new tokens on the 2-core machine, against 1-2 s for a prefill of a given response).

``--prose-per-category N`` adds Spec-Bench questions of every category without responses (the traffic of a head
that should also draft prose), leaving out the first ``--skip-first`` of each category (the prompts
`benchmarks/head.py --mixed-per-category 1` runs the controller on) and the questions the math rows took; the two
long-prompt categories (summarization, rag: ~850 tokens) take a third as many. ``--exclude-heldout FILE`` drops the
code modules and questions a head's ``heldout.jsonl`` lists, so that a head continued on this traffic
(``distill --init-head``) is still measured on prompts it never saw:

    python benchmarks/workloads/build_head_traffic.py --code-rows 300 --math-rows 0 --prose-per-category 30 \
        --exclude-heldout heads/qwen2.5-coder-code/heldout.jsonl --out head_traffic_mixed.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPEC_BENCH = HERE.parents[2] / "shared" / "data" / "spec_bench_questions.jsonl"


LONG_PROMPTS = ("summarization", "rag")


def build(code_rows: int = 560, math_rows: int = 24, seed: int = 0, target_responses: bool = False,
          prose_per_category: int = 0, skip_first: int = 1, exclude: set[str] = frozenset()) -> list[dict]:  # fmt: skip
    """``exclude``: row ids (``module/name``: the whole module; ``sb-<question id>``) left out."""
    rows = [json.loads(line) for line in (HERE / "code.jsonl").read_text().splitlines() if line.strip()]
    excluded_modules = {i.split("/")[0] for i in exclude if "/" in i}
    modules = sorted({r["id"].split("/")[0] for r in rows} - excluded_modules)
    random.Random(seed).shuffle(modules)
    picked: list[dict] = []
    for module in modules:
        picked += [r for r in rows if r["id"].split("/")[0] == module]
        if len(picked) >= code_rows:
            break
    if target_responses:
        picked = [{k: v for k, v in r.items() if k != "response"} for r in picked]
    questions = [json.loads(line) for line in SPEC_BENCH.read_text().splitlines() if line.strip()]
    math = [q for q in questions if q["category"] == "math_reasoning"][:math_rows]
    picked += [{"id": f"sb-{q['question_id']}", "class": "math_reasoning", "prompt": q["turns"][0]} for q in math
               if f"sb-{q['question_id']}" not in exclude]  # fmt: skip
    return picked + prose_rows(questions, prose_per_category, skip_first, exclude, first_math=math_rows)


def prose_rows(questions: list[dict], per_category: int, skip_first: int, exclude: set[str],
               first_math: int = 0) -> list[dict]:  # fmt: skip
    """Up to ``per_category`` questions per Spec-Bench category (a third for the long-prompt ones), after the first
    ``skip_first`` of each (and, in math_reasoning, after the ``first_math`` the math rows use)."""
    by_category: dict[str, list[dict]] = {}
    for q in questions:
        by_category.setdefault(q["category"], []).append(q)
    out = []
    for category, group in by_category.items():
        start = max(skip_first, first_math if category == "math_reasoning" else 0)
        cap = per_category // 3 if category in LONG_PROMPTS else per_category
        chosen = [q for q in group[start:] if f"sb-{q['question_id']}" not in exclude][:cap]
        out += [{"id": f"sb-{q['question_id']}", "class": category, "prompt": q["turns"][0]} for q in chosen]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--code-rows", type=int, default=560, help="whole modules are taken until this many rows")
    parser.add_argument("--math-rows", type=int, default=24)
    parser.add_argument("--target-responses", action="store_true",
                        help="leave the code rows without responses: the target writes them during collection")
    parser.add_argument("--prose-per-category", type=int, default=0,
                        help="Spec-Bench questions per category, without responses (long-prompt categories: a third)")
    parser.add_argument("--skip-first", type=int, default=1,
                        help="questions left out at the start of each category (the controller benchmark's)")
    parser.add_argument("--exclude-heldout", type=Path,
                        help="a head's heldout.jsonl: its modules and questions left out")
    args = parser.parse_args()
    exclude = set()
    if args.exclude_heldout:
        exclude = {json.loads(line)["id"] for line in args.exclude_heldout.read_text().splitlines() if line.strip()}
    rows = build(args.code_rows, args.math_rows, target_responses=args.target_responses,
                 prose_per_category=args.prose_per_category, skip_first=args.skip_first, exclude=exclude)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
