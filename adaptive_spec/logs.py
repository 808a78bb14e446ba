"""Logging: structlog events, sent where the host application wants them, never to its stdout unasked.

- ``get_logger(name)``: what library modules log through. Where the application configured structlog, events go
  through its configuration. Where it did not, they go to stdlib ``logging`` (logger ``name``, under
  ``adaptive_spec``), because unconfigured structlog prints every event to stdout: info events (one per request)
  stay silent until the application enables that logger; warnings reach stderr through logging's last resort.
- ``configure_logging``: the command line's set-up (events to stderr, so stdout stays clean for --json output).

Nothing here runs on import.
"""

from __future__ import annotations

import logging
import sys

import structlog


class _CurrentStderr:
    """A file-like that resolves ``sys.stderr`` at write time.

    Binding the stream at configure time breaks when the stream is swapped and closed later
    (test runners, notebook kernels, typer's CliRunner): structlog would then write to a closed file.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class LibraryLogger:
    """A logger that picks, at each call, the application's structlog set-up or stdlib ``logging``."""

    def __init__(self, name: str):
        self._name = name
        self._stdlib = structlog.wrap_logger(
            logging.getLogger(name),
            processors=[structlog.stdlib.filter_by_level, structlog.processors.KeyValueRenderer(key_order=["event"])],
            wrapper_class=structlog.stdlib.BoundLogger,
        )

    def __getattr__(self, method: str):
        logger = structlog.get_logger(self._name) if structlog.is_configured() else self._stdlib
        return getattr(logger, method)


def get_logger(name: str) -> LibraryLogger:
    return LibraryLogger(name)


def configure_logging(level: str = "warning", as_json: bool = False) -> None:
    renderer = structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(_CurrentStderr()),
        cache_logger_on_first_use=False,
    )
