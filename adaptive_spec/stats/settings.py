"""Configuration for the estimator and the Redis store (pydantic-settings, ``ADAPTIVE_SPEC_*`` variables).

Both models validate on construction, so a bad value fails before any work starts, with a one-line message
from :func:`describe_error` (the CLI prints it as is)::

    ADAPTIVE_SPEC_REDIS_URL=http://x adaptive-spec stats
    error: url: scheme must be redis://, rediss:// or unix:// (got 'http')
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REDIS_SCHEMES = ("redis", "rediss", "unix")


class StatsSettings(BaseSettings):
    """How observations are weighted and summarised. Variables: ``ADAPTIVE_SPEC_STATS_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="ADAPTIVE_SPEC_STATS_", extra="ignore", frozen=True)

    # Decay: old observations lose half their weight every half-life. Either, both or neither may be set.
    half_life_tokens: float | None = Field(
        default=20_000.0, gt=0, description="half-life in observed tokens of one (class, drafter); None: no decay"
    )
    half_life_seconds: float | None = Field(default=None, gt=0, description="half-life in wall-clock seconds")
    max_positions: int = Field(default=16, ge=1, le=64, description="draft positions tracked per key")
    # Cold-start prior per position: Beta(mean * strength, (1 - mean) * strength).
    prior_mean: float = Field(default=0.5, gt=0, lt=1, description="prior acceptance per position")
    prior_strength: float = Field(default=2.0, gt=0, description="prior weight, in pseudo-rounds")
    interval_level: float = Field(default=0.9, gt=0, lt=1, description="credible level shown by default")
    # A request whose alpha is within `extreme_margin` of 0 or 1 over at least `extreme_min_rounds`
    # speculative rounds is flagged: it often signals a repetition loop (alpha ~ 1) or a useless drafter.
    extreme_margin: float = Field(default=0.02, ge=0, lt=0.5)
    extreme_min_rounds: int = Field(default=16, ge=1)


class RedisSettings(BaseSettings):
    """Where and how to reach Redis. Variables: ``ADAPTIVE_SPEC_REDIS_<FIELD>`` (``ADAPTIVE_SPEC_REDIS_URL``)."""

    model_config = SettingsConfigDict(env_prefix="ADAPTIVE_SPEC_REDIS_", extra="ignore", frozen=True)

    url: str = Field(default="redis://localhost:6379/0", description="redis://, rediss:// (TLS) or unix://")
    password: SecretStr | None = Field(default=None, description="overrides a password given in the URL")
    socket_timeout_s: float = Field(default=0.05, gt=0, le=60, description="per command, background thread")
    connect_timeout_s: float = Field(default=0.1, gt=0, le=60)
    read_timeout_s: float = Field(
        default=0.05, ge=0, le=10, description="longest estimate() waits for a class it has never read"
    )
    cache_ttl_s: float = Field(default=1.0, ge=0, description="a read class is re-fetched after this")
    flush_interval_s: float = Field(default=0.25, gt=0, le=60, description="background flush period")
    max_buffered_keys: int = Field(
        default=4096, ge=1, description="pending (class, drafter) keys; beyond it the oldest is dropped"
    )
    max_batch_keys: int = Field(default=256, ge=1, description="keys per flush script call")
    key_ttl_s: float = Field(default=7 * 24 * 3600.0, gt=0, description="a key untouched this long expires")
    backoff_initial_s: float = Field(default=0.1, gt=0)
    backoff_max_s: float = Field(default=5.0, gt=0)
    close_timeout_s: float = Field(default=2.0, ge=0, description="close() waits this long for a last flush")
    namespace: str = Field(default="adaptive-spec", min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str) -> str:
        scheme = urlsplit(url).scheme
        if scheme not in REDIS_SCHEMES:
            raise ValueError(f"scheme must be redis://, rediss:// or unix:// (got {scheme or redacted(url)!r})")
        if scheme != "unix" and not urlsplit(url).hostname:
            raise ValueError(f"no host in {redacted(url)!r}")
        return url

    @model_validator(mode="after")
    def _backoff(self) -> RedisSettings:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        return self


def redacted(url: str) -> str:
    """The URL with any password replaced by ``***`` (for logs and errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def describe_error(error: ValidationError) -> str:
    """One line per problem, ``field: message``, joined by ``; `` (no pydantic URL footer)."""
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or error.title
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{field}: {message}")
    return "; ".join(problems)
