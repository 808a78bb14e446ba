"""structlog set-up for the command line: events go to stderr, so stdout stays clean for --json output.

A library embedding adaptive-spec configures structlog itself; nothing here runs on import.
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
