"""The ``adaptive-spec`` command line."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Speculative decoding that decides, per request and per round, whether speculation pays off.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """adaptive-spec."""


if __name__ == "__main__":
    app()
