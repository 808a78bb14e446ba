"""structlog set-up for the command line: events go to stderr, so stdout stays clean for --json output.

A library embedding adaptive-spec configures structlog itself; nothing here runs on import.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: str = "warning", as_json: bool = False) -> None:
    renderer = structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
