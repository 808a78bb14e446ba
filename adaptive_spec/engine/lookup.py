"""Prompt lookup's n-gram index, kept incrementally as the context grows (O(new tokens) per round).

The proposal rule: for n from ``max_ngram`` down to ``min_ngram``, find the first earlier occurrence of the
context's last n tokens and propose the tokens that followed it. Plain Python on token ids, so the policy can ask
"what would lookup propose here?" in microseconds, in the engine and in the trace simulator alike.
"""

from __future__ import annotations

from collections.abc import Sequence


class LookupIndex:
    """First start position of every n-gram (n in [min_ngram, max_ngram]) of one growing context."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.reset()

    def reset(self) -> None:
        self.tokens: list[int] = []
        self.first: dict[tuple[int, ...], int] = {}

    def extend(self, tokens: Sequence[int]) -> None:
        """Append tokens to the context and index the n-grams that end in them."""
        seq = self.tokens
        old = len(seq)
        seq.extend(tokens)
        first = self.first
        for end in range(old + 1, len(seq) + 1):
            for n in range(self.min_ngram, min(self.max_ngram, end) + 1):
                first.setdefault(tuple(seq[end - n : end]), end - n)

    def propose(self, k: int) -> tuple[list[int], int]:
        """Up to k tokens that followed the first earlier occurrence of the longest matching suffix, and its n."""
        seq = self.tokens
        length = len(seq)
        for n in range(min(self.max_ngram, length - 1), self.min_ngram - 1, -1):
            start = self.first.get(tuple(seq[length - n :]))
            if start is not None and start < length - n:
                return seq[start + n : start + n + k], n
        return [], 0
