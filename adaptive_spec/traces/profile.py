"""Profiling a workload into traces, resumably.

Traces are appended, one line per finished request, to ``OUT/progress.jsonl``; an interrupted run keeps every
finished request, drops a half-written last line, and continues with the requests not yet traced. When all are
done, ``OUT/traces.jsonl`` is written atomically (it never exists half-written).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from .format import RequestTrace, atomic_write_text
from .workload import PromptRow

PROGRESS = "progress.jsonl"
TRACES = "traces.jsonl"


def load_progress(out_dir: Path) -> dict[str, RequestTrace]:
    """Traces finished by earlier (possibly interrupted) runs, by request id."""
    done: dict[str, RequestTrace] = {}
    path = out_dir / PROGRESS
    if not path.is_file():
        return done
    good_bytes = 0
    with path.open("rb") as f:
        for raw in f:
            try:
                trace = RequestTrace.model_validate_json(raw)
            except (ValidationError, ValueError):
                break  # a line cut short by an interruption: everything after it is redone
            done[trace.request_id] = trace
            good_bytes += len(raw)
    if good_bytes != path.stat().st_size:
        with path.open("r+b") as f:
            f.truncate(good_bytes)
    return done


def select(rows: list[PromptRow], per_class: int | None = None, limit: int | None = None) -> list[PromptRow]:
    """At most ``per_class`` rows of each class (in file order), then at most ``limit`` rows overall."""
    if per_class is not None:
        counts: dict[str, int] = {}
        kept = []
        for row in rows:
            counts[row.request_class] = counts.get(row.request_class, 0) + 1
            if counts[row.request_class] <= per_class:
                kept.append(row)
        rows = kept
    return rows[:limit] if limit is not None else rows


def profile(
    rows: list[PromptRow],
    trace_one: Callable[[PromptRow, str], RequestTrace],
    out_dir: Path,
    request_id: Callable[[PromptRow], str],
    on_done: Callable[[int, int], None] | None = None,
) -> list[RequestTrace]:
    """Trace every row not yet in ``out_dir``'s progress; returns all traces in row order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    done = load_progress(out_dir)
    ids = [request_id(row) for row in rows]
    with (out_dir / PROGRESS).open("a") as progress:
        for n, (row, rid) in enumerate(zip(rows, ids), 1):
            if rid not in done:
                trace = trace_one(row, rid)
                progress.write(trace.dump_line() + "\n")
                progress.flush()
                done[rid] = trace
            if on_done:
                on_done(n, len(rows))
    traces = [done[rid] for rid in ids]
    atomic_write_text(out_dir / TRACES, "".join(t.dump_line() + "\n" for t in traces))
    return traces


def write_json(path: Path, data: object) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
