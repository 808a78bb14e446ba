"""The trace format: everything needed to replay any drafting policy on a greedy request exactly.

One JSON object per line (JSONL), one line per request; per-position data is stored column-wise. Positions are
0-based indices into the generated tokens: position ``i`` is the token generated after the prompt and
``target[:i]``. Position 0 comes from the prefill, so speculative rounds start at position 1.

Why greedy makes replay exact: with greedy decoding the target's output ``target`` does not depend on how it was
drafted, and the outcome of any drafter at any position depends only on the prefix. For each model drafter
(``drafts[name]``, e.g. ``drafts["model"]``):

- ``top[i]``, ``p[i]``: the draft's greedy token and its probability given the true prefix.
  Its greedy continuation from position i follows the true path while it matches, so
- ``match[i]``: how many of its greedy tokens from position i match ``target[i:]`` (capped at ``depth``).
- ``second[i]`` (optional, traces from before it lack it): the draft's second choice given the true prefix: a
  *sibling* verified beside a wrong ``top[q]`` is accepted exactly when ``second[q] == target[q]``.
- ``diverge[q]``: at a position q where the draft's token is wrong (``top[q] != target[q]``), the
  probabilities of the draft's own continuation after its wrong token (what a confidence-threshold draft would
  still propose), recorded until a probability falls below ``theta_min`` or for at most 8 tokens. Replay of a
  threshold below ``theta_min`` (or of a confident wrong draft running past 8 tokens) is approximate; else exact.
- ``chain[i]`` (a drafter that drafts over its own predictions, like a draft head: its later tokens do not follow
  from the teacher-forced ``p``): the probabilities along its own greedy chain from position i, recorded until one
  falls below ``theta_min`` (that one included) or for ``depth`` tokens; ``match[i]`` counts its tokens up to the
  first wrong one within the recorded chain, ``top[i]``/``p[i]`` are the chain's first token, ``second[i]`` its
  second choice at that first wrong token (-1: none recorded), ``diverge`` is absent. Replay reads ``chain``
  instead of ``p`` and ``diverge``.
- ``lookup.len[i]``, ``lookup.match[i]``: the prompt-lookup proposal's length (capped at ``depth``) and how many
  of its tokens match ``target[i:]``; ``lookup.ngram[i]``: the n-gram size that produced it (0: no proposal).

In bfloat16 the target's output itself can depend on how it was batched (near-tie argmax flips between 1-token
and multi-token forwards); a trace records one run, and replays are exact with respect to that run.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SCHEMA = "adaptive-spec/trace"
VERSION = 1


class TraceError(ValueError):
    """A trace file is malformed, from another schema version, or from another model pair."""


class DraftColumns(BaseModel):
    """One model drafter's view of every position (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    top: list[int]
    p: list[float]
    match: list[int]
    diverge: dict[int, list[float]] = Field(default_factory=dict)
    second: list[int] | None = None
    chain: list[list[float]] | None = None  # a drafter over its own predictions (a head): see the module docstring


class LookupColumns(BaseModel):
    model_config = ConfigDict(extra="forbid")

    len: list[int]
    match: list[int]
    ngram: list[int]


class RequestTrace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_: Literal["adaptive-spec/trace"] = Field(SCHEMA, alias="schema")
    version: int = VERSION
    pair_id: str
    dtype: str
    request_id: str
    request_class: str = Field(alias="class")
    prompt: str
    prompt_ids: list[int]
    max_new_tokens: int
    stop_reason: str
    depth: int = Field(ge=1)  # cap on recorded match lengths (the largest k a replay can price exactly)
    theta_min: float = Field(ge=0.0, le=1.0)
    target: list[int]
    drafts: dict[str, DraftColumns]
    lookup: LookupColumns
    target_s: float = 0.0  # seconds the target spent producing this trace (for information)

    @model_validator(mode="after")
    def _consistent(self) -> "RequestTrace":
        if self.version != VERSION:
            raise ValueError(f"trace schema version {self.version}, this library reads version {VERSION}")
        n = len(self.target)
        if n == 0:
            raise ValueError("a trace needs at least one generated token")
        columns = {f"lookup.{f}": getattr(self.lookup, f) for f in ("len", "match", "ngram")}
        for name, d in self.drafts.items():
            columns.update({f"drafts.{name}.{f}": getattr(d, f) for f in ("top", "p", "match", "second", "chain")
                            if getattr(d, f) is not None})  # fmt: skip
            if any(m > self.depth or m < 0 for m in d.match):
                raise ValueError(f"drafts.{name}.match out of range [0, {self.depth}]")
            if d.chain is not None and any(not 0 <= m <= len(c) <= self.depth for m, c in zip(d.match, d.chain)):
                raise ValueError(f"drafts.{name}.chain: each holds at most {self.depth} probabilities, at least "
                                 "its match's")  # fmt: skip
        for name, column in columns.items():
            if len(column) != n:
                raise ValueError(f"{name} has {len(column)} entries, target has {n}")
        return self

    @property
    def num_tokens(self) -> int:
        return len(self.target)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    def dump_line(self) -> str:
        return json.dumps(self.model_dump(by_alias=True, exclude_none=True), separators=(",", ":"))


def read_traces(paths: str | os.PathLike | Iterable[str | os.PathLike], pair_id: str | None = None) -> list[RequestTrace]:
    """Read trace files; any bad line is an error naming file and line (traces feed exact replays)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    traces = []
    for path in paths:
        for lineno, trace in _parse(Path(path)):
            if pair_id is not None and trace.pair_id != pair_id:
                raise TraceError(f"{path}:{lineno}: trace is for model pair {trace.pair_id!r}, expected {pair_id!r}")
            traces.append(trace)
    if not traces:
        raise TraceError(f"no traces in {', '.join(str(p) for p in paths)}")
    return traces


def _parse(path: Path) -> Iterator[tuple[int, RequestTrace]]:
    if not path.is_file():
        raise TraceError(f"trace file not found: {path}")
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, RequestTrace.model_validate_json(line)
            except ValidationError as error:
                e = error.errors()[0]
                where = ".".join(str(p) for p in e["loc"])
                raise TraceError(f"{path}:{lineno}: {where + ': ' if where else ''}{e['msg']}") from None


def write_traces(path: str | os.PathLike, traces: Iterable[RequestTrace]) -> None:
    """Write atomically: the file appears complete or not at all."""
    atomic_write_text(Path(path), "".join(t.dump_line() + "\n" for t in traces))


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would make the result private
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
