"""Deciding when speculation pays: cost model, prompt classifier, the adaptive controller, policy files.

Imports stay lazy so that reading a policy file or computing features does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "AdaptivePolicy": "controller",
    "ControllerConfig": "controller",
    "ClassSettings": "controller",
    "CostModel": "cost",
    "CostTable": "cost",
    "FixedPolicy": "base",
    "PerClassPolicy": "base",
    "RequestInfo": "base",
    "RequestReport": "base",
    "PolicyFile": "file",
    "load_policy_file": "file",
    "PromptClassifier": "classifier",
    "resolve_request_class": "classifier",
    "PromptFeatures": "features",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
