"""adaptive-spec: speculative decoding that decides, per request and per round, whether it pays off.

The top-level names load lazily, so ``import adaptive_spec.stats`` (which never imports torch) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "AdaptiveGenerator": "adaptive_spec.generator",
    "AdaptiveOutput": "adaptive_spec.generator",
    "make_adaptive": "adaptive_spec.generator",
    "SpeculativeEngine": "adaptive_spec.engine",
    "AlphaEstimator": "adaptive_spec.stats",
    "load_pair": "adaptive_spec.models",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'adaptive_spec' has no attribute {name!r}")
