"""Validated request configuration (pydantic): bad values fail with one clear line before any model work."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .engine import SamplingParams

Mode = Literal["target", "draft", "lookup", "hybrid", "adaptive"]


class GenerateConfig(BaseModel):
    """One generation request as the CLI and the generator accept it. Fields map one-to-one to CLI flags."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(description="user message; the chat template is applied")
    mode: Mode = Field("adaptive", description="target-only, model draft, prompt lookup, lookup-else-draft, adaptive")
    k: int = Field(4, ge=0, le=64, description="draft tokens per round for fixed modes")
    threshold: float = Field(0.0, ge=0.0, le=1.0, description="model draft stops after a token below this prob.")
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy")
    top_k: int = Field(0, ge=0, description="0 = off")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the prompt is empty")
        return value

    def sampling(self) -> SamplingParams:
        if self.temperature == 0:
            return SamplingParams()
        return SamplingParams(True, self.temperature, self.top_k, self.top_p)


def first_error(error: Exception) -> str:
    """A pydantic ValidationError as one line: 'field: message'."""
    errors = getattr(error, "errors", None)
    if callable(errors):
        e = errors()[0]
        where = ".".join(str(p) for p in e["loc"]) or "input"
        return f"{where}: {e['msg']}"
    return str(error)
