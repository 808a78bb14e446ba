"""The user's traffic file: rows ``{"prompt": ..., "class": ..., "response": optional, "id": optional}``.

Parsing is ``traces.workload.read_workload`` (JSONL or text lines, Spec-Bench rows work as is), plus one check it
does not make: a ``response`` that is present but not a string. Training data is strict: any malformed row is an
error naming its line, unless the caller chooses to skip such rows.

The held-out split is by *group*, per class: rows whose ``id`` has a ``/`` are grouped by the part before it
(e.g. ``"json.decoder/JSONDecoder.decode"``: all functions of a module stay on the same side), other rows are
their own group. Groups are shuffled with the seed and taken until the class's held-out share is reached.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..traces.workload import PromptRow, WorkloadError, read_workload

T = TypeVar("T")


class TrafficError(ValueError):
    """The traffic file has malformed rows (each named by line) or none to train on."""


@dataclass
class Traffic:
    rows: list[PromptRow]
    skipped: list[str]  # "path:line: why" for each malformed row that was skipped


def read_traffic(path: str | Path, skip_bad_rows: bool = False, max_shown: int = 10) -> Traffic:
    path = Path(path)
    try:
        workload = read_workload(path)
    except WorkloadError as error:
        raise TrafficError(str(error)) from None
    errors = list(workload.errors)
    lines = path.read_text().splitlines()
    rows = []
    for row in workload.rows:
        raw = lines[row.line - 1].lstrip()
        if raw.startswith("{"):
            value = json.loads(raw).get("response")
            if value is not None and not isinstance(value, str):
                errors.append(f"{path}:{row.line}: field 'response' must be a string, got {type(value).__name__}")
                continue
            if isinstance(value, str) and not value.strip():
                errors.append(f"{path}:{row.line}: field 'response' is empty (omit it to let the target answer)")
                continue
        rows.append(row)
    line_of = re.compile(re.escape(str(path)) + r":(\d+):")
    errors.sort(key=lambda e: int(m.group(1)) if (m := line_of.match(e)) else 0)
    if errors and not skip_bad_rows:
        shown = "; ".join(errors[:max_shown]) + (f"; ... ({len(errors) - max_shown} more)" if len(errors) > max_shown else "")
        raise TrafficError(f"{len(errors)} malformed row(s) in the traffic file: {shown}")
    if not rows:
        raise TrafficError(f"{path}: no usable rows")
    return Traffic(rows, errors)


def interleave_classes(rows: list[PromptRow], limit: int | None) -> list[PromptRow]:
    """At most ``limit`` rows, taken round-robin over classes in file order (every class is represented)."""
    return sorted(round_robin_by_class(rows, limit, lambda row: row.request_class), key=lambda row: row.line)


def round_robin_by_class(items: Sequence[T], limit: int | None, class_of: Callable[[T], str]) -> list[T]:
    """At most ``limit`` items, taken round-robin over their classes, in their original order: a cap on examples
    that still reaches every class (the first ``limit`` of a file may all be one class)."""
    if limit is None or limit >= len(items):
        return list(items)
    by_class: dict[str, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        by_class[class_of(item)].append(index)
    queues = [iter(v) for v in by_class.values()]
    picked: list[int] = []
    while len(picked) < limit:
        for queue in queues:
            index = next(queue, None)
            if index is not None and len(picked) < limit:
                picked.append(index)
    return [items[i] for i in sorted(picked)]


def group_of(row: PromptRow) -> str:
    if row.row_id and "/" in row.row_id:
        return row.row_id.split("/", 1)[0]
    return f"line:{row.line}"


def split_rows(rows: list[PromptRow], eval_share: float, seed: int) -> tuple[list[PromptRow], list[PromptRow]]:
    """(train, held-out): per class, whole groups held out until ``eval_share`` of the class's rows is reached."""
    if not 0 <= eval_share < 1:
        raise ValueError(f"eval split must be in [0, 1), got {eval_share}")
    held: set[int] = set()
    by_class: dict[str, dict[str, list[PromptRow]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_class[row.request_class][group_of(row)].append(row)
    for cls in sorted(by_class):
        groups = by_class[cls]
        names = sorted(groups)
        random.Random(f"{seed}:{cls}").shuffle(names)
        total = sum(len(g) for g in groups.values())
        want = round(eval_share * total)
        taken = 0
        for name in names:
            if taken >= want or len(groups) - 1 <= 0:
                break
            if taken + len(groups[name]) > want and taken > 0:
                continue  # a big group would overshoot: try smaller ones
            held.update(r.line for r in groups[name])
            taken += len(groups[name])
    return [r for r in rows if r.line not in held], [r for r in rows if r.line in held]
