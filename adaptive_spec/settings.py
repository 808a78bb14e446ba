"""Process-wide settings, read from ``ADAPTIVE_SPEC_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "adaptive-spec"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ADAPTIVE_SPEC_", extra="ignore")

    cache: Path = Field(default_factory=_default_cache, description="models, converted weights, calibrations")
    threads: int | None = Field(default=None, ge=1, description="torch intra-op threads; None = physical cores")

    @property
    def models_dir(self) -> Path:
        return self.cache / "models"


def get_settings() -> Settings:
    return Settings()
