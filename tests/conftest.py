"""Shared fixtures: tiny random-init Qwen2 models (the real models' code path, milliseconds per forward)."""

from __future__ import annotations

import os

import pytest
import torch

from tests.tiny import tiny_pair


def _cores_per_worker() -> int:
    """This process's share of the CPUs: ``make test`` runs PYTEST_XDIST_WORKER_COUNT test processes at once."""
    return max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


# the reference pair's tests and the CLI's take their thread count from here (unless the caller set one): more
# threads than cores, across workers, make every forward wait on another's
os.environ.setdefault("ADAPTIVE_SPEC_THREADS", str(_cores_per_worker()))


@pytest.fixture(autouse=True)
def _threads(request):
    """One thread for tiny models (they gain nothing from more, and one keeps a run from thrashing the cores of a
    benchmark beside it); the worker's share of the cores for a test of the reference pair."""
    from adaptive_spec.models import configure_threads

    if request.node.get_closest_marker("real_model"):
        configure_threads()
    else:
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
