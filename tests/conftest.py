"""Shared fixtures: tiny random-init Qwen2 models (the real models' code path, milliseconds per forward)."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import tiny_pair


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def pair():
    """(target, draft): a tiny target and a noisy copy of it as draft, float32, vocab 128."""
    return tiny_pair()
