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
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPEC_BENCH = HERE.parents[2] / "shared" / "data" / "spec_bench_questions.jsonl"


def build(code_rows: int = 560, math_rows: int = 24, seed: int = 0, target_responses: bool = False) -> list[dict]:
    rows = [json.loads(line) for line in (HERE / "code.jsonl").read_text().splitlines() if line.strip()]
    modules = sorted({r["id"].split("/")[0] for r in rows})
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
    return picked + [{"id": f"sb-{q['question_id']}", "class": "math_reasoning", "prompt": q["turns"][0]} for q in math]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--code-rows", type=int, default=560, help="whole modules are taken until this many rows")
    parser.add_argument("--math-rows", type=int, default=24)
    parser.add_argument("--target-responses", action="store_true",
                        help="leave the code rows without responses: the target writes them during collection")
    args = parser.parse_args()
    rows = build(args.code_rows, args.math_rows, target_responses=args.target_responses)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
