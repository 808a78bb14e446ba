"""Where a benchmark's figures go: ``OUT.json`` (everything measured) and ``OUT.md`` (the table a reader wants),
also printed. One function for every script, so that results are written, and shown, the same way."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(out: Path, doc: dict, text: str) -> None:
    """Write ``doc`` to OUT.json and ``text`` (its markdown) to OUT.md, making OUT's folder; print ``text``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    out.with_suffix(".md").write_text(text)
    print(text)
