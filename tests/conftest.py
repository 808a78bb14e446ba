"""Shared fixtures: tiny random-init Qwen2 models (the real models' code path, milliseconds per forward)."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import tiny_pair


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # Tiny models gain nothing from more threads, and one thread keeps a test run from thrashing the cores of a
    # benchmark running beside it. The real-model fixtures set their own thread count.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def pair():
    """(target, draft): a tiny target and a noisy copy of it as draft, float32, vocab 128."""
    return tiny_pair()


@pytest.fixture(autouse=True)
def _default_structlog():
    """CLI tests configure structlog globally; put the defaults back so one test's set-up never leaks."""
    yield
    import structlog

    structlog.reset_defaults()
