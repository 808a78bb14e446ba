"""benchmarks/head_replay.py on the committed traces with a head's columns (replay only: no model is loaded)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "head_replay.py"
TRACES = ROOT / "benchmarks" / "data" / "head_traces_ctl18.jsonl"
ARGS = ["--cost-from", str(ROOT / "benchmarks/results/head.json"), "--head-dir", str(ROOT / "heads/qwen2.5-coder-code")]


def _run(tmp_path: Path, traces: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--traces", str(traces), *ARGS, "--out", str(tmp_path / "r"),
                           *extra], capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip


def test_replays_both_configurations_and_writes_results(tmp_path):
    few = tmp_path / "few.jsonl"
    few.write_text("".join(TRACES.read_text().splitlines(keepends=True)[:6]))
    done = _run(tmp_path, few)
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["summary"]["all"]["prompts"] == 6 and (tmp_path / "r.md").is_file()
    with_head = doc["runs"]["with head"]
    assert any("head" in r["rounds"] for r in with_head)
    assert not any("head" in r["rounds"] for r in doc["runs"]["without head"])
    assert sum(r["shadows"] for r in with_head) > 0  # prose classes unseen by the head: scored by shadow tokens
    off = _run(tmp_path, few, "--set", "shadow_rounds=0")
    assert off.returncode == 0
    assert sum(r["shadows"] for r in json.loads((tmp_path / "r.json").read_text())["runs"]["with head"]) == 0


def test_traces_without_head_columns_are_refused(tmp_path):
    done = _run(tmp_path, ROOT / "notebooks" / "data" / "traces_small.jsonl")
    assert done.returncode != 0 and "no head columns" in done.stderr
