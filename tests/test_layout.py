"""The layering the design promises: engine knows no policy/stats/Redis; stats never imports torch."""

from __future__ import annotations

import subprocess
import sys


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_stats_never_imports_torch():
    modules = imported_after("import adaptive_spec.stats, adaptive_spec.stats_cli")
    assert "torch" not in modules and "transformers" not in modules


def test_engine_imports_no_policy_stats_or_redis():
    modules = imported_after("import adaptive_spec.engine")
    assert not {m for m in modules if m.startswith(("adaptive_spec.policy", "adaptive_spec.stats", "redis"))}
