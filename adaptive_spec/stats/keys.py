"""What the statistics are keyed by: (model pair, request class, drafter), and how that becomes a Redis key.

Redis keys look like ``adaptive-spec:v1:qwen2.5-coder-1.5b+0.5b:code:model`` — namespace, schema version,
then the three parts percent-encoded so that ``:`` and glob characters in a name cannot collide or match
a SCAN pattern by accident. The schema version in the key means a new layout never reads an old one.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import quote, unquote

SCHEMA_VERSION = 1
_SAFE = "-_.~+@=,"  # kept readable; ':', '*', '?', '[', ']', '%', '/' and whitespace are escaped
MAX_NAME_CHARS = 200


class StatsKey(NamedTuple):
    """One stream of observations: a drafter serving one request class of one model pair."""

    pair_id: str  # caller-given id of the (target, draft) pair, e.g. "qwen2.5-coder-1.5b+0.5b"
    request_class: str  # caller-given, e.g. "code", "chat"
    drafter: str  # RoundRecord.drafter, e.g. "model", "lookup", "none"


def check_name(kind: str, name: str) -> str:
    """Raise ``ValueError`` for names that cannot be keys; called once per new key, not per round."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} must be a non-empty string, got {name!r}")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"{kind} is longer than {MAX_NAME_CHARS} characters: {name[:40]!r}...")
    return name


def check_key(key: StatsKey) -> StatsKey:
    check_name("pair_id", key.pair_id)
    check_name("request_class", key.request_class)
    check_name("drafter", key.drafter)
    return key


def _enc(part: str) -> str:
    return quote(part, safe=_SAFE)


def prefix(namespace: str) -> str:
    return f"{namespace}:v{SCHEMA_VERSION}:"


def redis_key(namespace: str, key: StatsKey) -> str:
    return prefix(namespace) + ":".join(_enc(part) for part in key)


def scan_pattern(
    namespace: str, pair_id: str | None = None, request_class: str | None = None, drafter: str | None = None
) -> str:
    """A SCAN MATCH pattern; ``None`` parts match anything."""
    parts = [_enc(p) if p is not None else "*" for p in (pair_id, request_class, drafter)]
    return prefix(namespace) + ":".join(parts)


def parse_redis_key(namespace: str, raw: str | bytes) -> StatsKey | None:
    """The key a Redis key name encodes, or None if it is not one of ours (wrong namespace/version/shape)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    head = prefix(namespace)
    if not text.startswith(head):
        return None
    parts = text[len(head) :].split(":")
    if len(parts) != 3 or not all(parts):
        return None
    return StatsKey(*(unquote(p) for p in parts))


def writer_key(namespace: str, writer_id: str) -> str:
    """Per-process key holding the last flush sequence number Redis applied (makes retries idempotent)."""
    return f"{namespace}:writer:v{SCHEMA_VERSION}:{writer_id}"
