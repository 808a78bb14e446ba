"""``adaptive-spec stats``: what the workers have learned, read from Redis (in-memory stats live in each process).

    adaptive-spec stats [--redis URL] [--pair ID] [--json]
    adaptive-spec stats reset --class CLASS [--drafter NAME] [--pair ID] [--yes]

The URL defaults to ``$ADAPTIVE_SPEC_REDIS_URL`` (then ``redis://localhost:6379/0``); the prior and the interval
level come from the ``ADAPTIVE_SPEC_STATS_*`` settings, as in the workers.
"""

from __future__ import annotations

import json
import math
import time
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from .report_console import report_console
from .stats.counters import CounterSpec, Counters, InvalidCounters
from .stats.estimate import Estimate, Prior
from .stats.keys import StatsKey
from .stats.settings import RedisSettings, StatsSettings, describe_error, redacted

stats_app = typer.Typer(
    help="Acceptance statistics pooled in Redis, per (class, drafter).",
    pretty_exceptions_enable=False,
)

RedisOption = Annotated[
    str | None, typer.Option("--redis", help="Redis URL (default: $ADAPTIVE_SPEC_REDIS_URL).", show_default=False)
]
PairOption = Annotated[str | None, typer.Option("--pair", help="Only this model pair id.")]
_POSITIONS_SHOWN = 8


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _settings(url: str | None) -> tuple[RedisSettings, StatsSettings]:
    """Both settings, validated before anything connects; a bad value exits 2 with one line."""
    try:
        redis_settings = RedisSettings(url=url) if url else RedisSettings()
        stats_settings = StatsSettings()
    except ValidationError as error:
        raise _fail(describe_error(error), code=2) from None
    # A CLI call may wait a little longer than a worker's round.
    redis_settings = redis_settings.model_copy(
        update={"socket_timeout_s": max(redis_settings.socket_timeout_s, 2.0), "connect_timeout_s": max(redis_settings.connect_timeout_s, 2.0)}
    )
    return redis_settings, stats_settings


def _client(settings: RedisSettings) -> Any:
    from .stats.redis_admin import make_client

    return make_client(settings)


def _scan(redis_settings: RedisSettings, stats: StatsSettings, pair: str | None) -> dict[StatsKey, Counters | InvalidCounters]:
    from .stats.redis_admin import StatsStoreUnavailable, scan_keys

    spec = CounterSpec(stats.half_life_tokens, stats.half_life_seconds, stats.max_positions)
    try:
        return scan_keys(_client(redis_settings), redis_settings, spec, pair_id=pair, log_invalid=False)
    except StatsStoreUnavailable as error:
        raise _fail(f"cannot read Redis at {error}") from None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def _table(estimates: list[Estimate], level: float, now: float) -> Table:
    table = Table(title=f"Acceptance per (class, drafter) — {level:.0%} credible intervals", show_lines=False)
    for name, justify in (
        ("pair", "left"),
        ("class", "left"),
        ("drafter", "left"),
        ("α (interval)", "right"),
        ("acc/round", "right"),
        ("per-position acceptance", "left"),
        ("tokens eff. / total", "right"),
        ("req α ± spread", "right"),
        ("updated", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for e in estimates:
        speculative = e.draft_tokens > 0
        if speculative:
            lo, hi = e.alpha.interval(level)
            alpha = f"{e.alpha.mean:.3f} ({lo:.2f}–{hi:.2f})"
            tried = [(j + 1, p.mean) for j, (p, n) in enumerate(zip(e.positions, e.tried)) if n > 0]
            positions = " ".join(f"{j}:{m:.2f}" for j, m in tried[:_POSITIONS_SHOWN])
            positions += " …" if len(tried) > _POSITIONS_SHOWN else ""
        else:
            alpha, positions = "—", "(no proposals)"
        table.add_row(
            e.key.pair_id,
            e.key.request_class,
            e.key.drafter,
            alpha,
            _fmt(e.mean_accepted),
            positions,
            f"{e.draft_tokens:,.0f} / {e.total_tokens:,}",
            _request_alpha(e),
            _age(e.age_s(now)),
        )
    return table


def _request_alpha(e: Estimate) -> str:
    """Mean of the requests' own alpha, and how far requests differ beyond their noise (once 3 have finished)."""
    spread = e.request_spread()
    return _fmt(e.request_alpha, 3) + ("" if spread is None else f" ±{math.sqrt(spread):.2f}")


@stats_app.callback(invoke_without_command=True)
def show(
    ctx: typer.Context,
    redis_url: RedisOption = None,
    pair: PairOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show α with its interval, mean accepted per round, per-position acceptance, tokens and age per key."""
    ctx.obj = {"redis": redis_url, "pair": pair}
    if ctx.invoked_subcommand is not None:
        return
    redis_settings, stats = _settings(redis_url)
    found = _scan(redis_settings, stats, pair)
    now = time.time()
    prior = Prior(stats.prior_mean, stats.prior_strength)
    estimates = [
        Estimate.from_counters(key, counters, prior, stats.max_positions, now)
        for key, counters in sorted(found.items())
        if isinstance(counters, Counters)
    ]
    invalid = {key: str(reason) for key, reason in sorted(found.items()) if isinstance(reason, InvalidCounters)}
    level = stats.interval_level
    if as_json:
        payload = {
            "redis": redacted(redis_settings.url),
            "keys": [e.to_dict(level, now) for e in estimates],
            "invalid": [{"pair_id": k.pair_id, "request_class": k.request_class, "drafter": k.drafter, "reason": r} for k, r in invalid.items()],
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    console = report_console()
    if not estimates:
        console.print(f"No statistics in {redacted(redis_settings.url)}" + (f" for pair {pair!r}" if pair else "") + ".")
    else:
        console.print(_table(estimates, level, now))
    for key, reason in invalid.items():
        console.print(f"[yellow]ignored invalid key[/] {key.pair_id}/{key.request_class}/{key.drafter}: {reason}")


@stats_app.command()
def reset(
    ctx: typer.Context,
    request_class: Annotated[str, typer.Option("--class", help="The request class to forget.")],
    drafter: Annotated[str | None, typer.Option("--drafter", help="Only this drafter.")] = None,
    redis_url: RedisOption = None,
    pair: PairOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete the pooled statistics of a request class (all pairs and drafters unless narrowed)."""
    parent = ctx.obj or {}
    redis_url = redis_url or parent.get("redis")
    pair = pair or parent.get("pair")
    redis_settings, stats = _settings(redis_url)
    from .stats.redis_admin import StatsStoreUnavailable, delete_keys

    found = _scan(redis_settings, stats, pair)
    matching = [k for k in found if k.request_class == request_class and (drafter is None or k.drafter == drafter)]
    if not matching:
        typer.echo(f"Nothing to reset for class {request_class!r} in {redacted(redis_settings.url)}.")
        return
    listing = ", ".join(f"{k.pair_id}/{k.request_class}/{k.drafter}" for k in sorted(matching))
    if not yes and not typer.confirm(f"Delete {len(matching)} key(s) ({listing})?", default=False):
        typer.echo("Aborted; nothing deleted.")
        raise typer.Exit(1)
    try:
        gone = []
        for p in sorted({k.pair_id for k in matching}):
            gone += delete_keys(_client(redis_settings), redis_settings, p, request_class, drafter)
    except StatsStoreUnavailable as error:
        raise _fail(f"cannot reset at {error}") from None
    typer.echo(f"Deleted {len(gone)} key(s).")
