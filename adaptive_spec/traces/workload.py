"""Reading a file of user prompts: JSONL rows (field names configurable) or plain text, one prompt per line.

Spec-Bench's question file works as is: a row without the prompt field but with ``turns`` uses its first turn,
and ``category`` is used as the class when there is no ``class`` field. Malformed rows are reported with their
line numbers and skipped; the rest is processed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


class WorkloadError(ValueError):
    """The file cannot be used at all (missing, empty, no usable row, unknown class field)."""


@dataclass(frozen=True)
class PromptRow:
    line: int
    prompt: str
    request_class: str
    row_id: str | None = None
    response: str | None = None  # a given response (used by distillation), if the row has one


@dataclass
class Workload:
    rows: list[PromptRow]
    errors: list[str] = field(default_factory=list)  # "path:line: why" for each skipped row

    def classes(self) -> list[str]:
        return sorted({r.request_class for r in self.rows})


def read_workload(
    path: str | Path,
    prompt_field: str = "prompt",
    class_field: str = "class",
    response_field: str = "response",
    default_class: str = "default",
) -> Workload:
    path = Path(path)
    if not path.is_file():
        raise WorkloadError(f"prompt file not found: {path}")
    lines = path.read_text().splitlines()
    if not any(line.strip() for line in lines):
        raise WorkloadError(f"{path} is empty")
    rows: list[PromptRow] = []
    errors: list[str] = []
    seen_class_field = False
    jsonl = lines[next(i for i, line in enumerate(lines) if line.strip())].lstrip().startswith("{")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not jsonl:
            rows.append(PromptRow(number, line, default_class))
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            errors.append(f"{path}:{number}: not valid JSON ({error.msg})")
            continue
        if not isinstance(row, dict):
            errors.append(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            continue
        prompt = row.get(prompt_field)
        if prompt is None and isinstance(row.get("turns"), list) and row["turns"]:
            prompt = row["turns"][0]
        if not isinstance(prompt, str) or not prompt.strip():
            errors.append(f"{path}:{number}: no non-empty string field {prompt_field!r}")
            continue
        cls = row.get(class_field)
        if cls is None and class_field == "class":
            cls = row.get("category")
        seen_class_field |= cls is not None
        response = row.get(response_field)
        row_id = row.get("id", row.get("question_id"))
        rows.append(
            PromptRow(
                number, prompt, str(cls) if cls is not None else default_class,
                str(row_id) if row_id is not None else None, response if isinstance(response, str) else None,
            )
        )  # fmt: skip
    if jsonl and class_field != "class" and not seen_class_field and rows:
        raise WorkloadError(f"{path}: no row has the class field {class_field!r}")
    if not rows:
        raise WorkloadError(f"{path}: no usable rows ({len(errors)} malformed; first: {errors[0] if errors else '-'})")
    return Workload(rows, errors)
