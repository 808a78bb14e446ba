"""One process at a time builds a cached model file: the others wait for it, then use what it built.

Worker processes started together on a fresh machine each load the pair; without a lock they fetch the same wheels
and write the same ``.partial`` file or dense directory at once, and one deletes what another is writing. The lock
is a file beside what it guards (``filelock``: ``flock`` on POSIX, released if its holder dies), so it also covers
threads and processes that share nothing but the cache directory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from ..logs import get_logger

log = get_logger(__name__)


def build_once(path: Path, done: Callable[[], bool], build: Callable[[], None]) -> bool:
    """``build()`` unless ``done()``, one process at a time; one that waited asks ``done()`` again (the other may
    have built it meanwhile). True when this call built it."""
    if done():
        return False
    with _held(path):
        if done():
            return False
        build()
        return True


@contextmanager
def _held(path: Path) -> Iterator[None]:
    """The lock for ``path`` (``<path>.lock``); says so in the log when another process holds it first."""
    lock = FileLock(path.with_name(path.name + ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("cache_wait", path=str(path), reason="another process is building it")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
