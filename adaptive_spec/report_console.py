"""Where the CLI's report tables go: stdout, wide enough to read when piped or in a CI log."""

from __future__ import annotations

from rich.console import Console

PIPED_WIDTH = 160  # rich assumes 80 columns without a terminal, which folds a 7-column report into word stubs


def report_console() -> Console:
    """A console on stdout: the terminal's width, or ``PIPED_WIDTH`` columns when stdout is not a terminal."""
    out = Console()
    return out if out.is_terminal else Console(width=PIPED_WIDTH)
