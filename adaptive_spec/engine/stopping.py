"""When generation stops: EOS ids, stop strings, the new-token budget.

Tokens arrive several per round; ``StopRule.cut`` says how many of them to keep so the output ends exactly where
token-by-token generation would have stopped (EOS and stop-string tokens included, as in ``transformers``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StopRule:
    max_new_tokens: int
    eos_token_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = ()
    tokenizer: Any = None  # needed only for stop strings
    _window: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.stop_strings and self.tokenizer is None:
            raise ValueError("stop_strings need a tokenizer to decode the output")
        # A stop string of c characters spans at most c tokens; one more covers a token overhanging its start.
        self._window = max((len(s) for s in self.stop_strings), default=0) + 1

    def cut(self, generated: Sequence[int], new: Sequence[int]) -> tuple[int, str | None]:
        """Of ``new`` tokens following ``generated``, how many to keep, and why generation stops (None: go on)."""
        for i, token in enumerate(new):
            count = len(generated) + i + 1
            if token in self.eos_token_ids:
                return i + 1, "eos"
            if self.stop_strings and self._completes_stop_string(list(generated) + list(new[: i + 1])):
                return i + 1, "stop_string"
            if count >= self.max_new_tokens:
                return i + 1, "max_new_tokens"
        return len(new), None

    def _completes_stop_string(self, tokens: list[int]) -> bool:
        tail = tokens[-self._window :]
        text = self.tokenizer.decode(tail)
        before = self.tokenizer.decode(tail[:-1])
        return any(s in text and s not in before for s in self.stop_strings)


def as_id_set(ids: int | Iterable[int] | None) -> frozenset[int]:
    if ids is None:
        return frozenset()
    if isinstance(ids, int):
        return frozenset([ids])
    return frozenset(int(i) for i in ids)
