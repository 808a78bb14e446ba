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

    def extend(self, tokens: Sequence[int], added: list | None = None) -> None:
        """Append tokens to the context and index the n-grams that end in them (``added`` collects the n-grams
        seen for the first time, so the extension can be undone)."""
        seq, first = self.tokens, self.first
        lo, hi = self.min_ngram, self.max_ngram
        for token in tokens:
            seq.append(token)
            end = len(seq)
            tail = tuple(seq[max(0, end - hi) :])  # the longest n-gram ending here; shorter ones are its suffixes
            for n in range(lo, min(hi, end) + 1):
                gram = tail[-n:]
                if added is None:
                    first.setdefault(gram, end - n)
                elif gram not in first:
                    first[gram] = end - n
                    added.append(gram)

    def _match(self) -> tuple[int, int]:
        """(start, n) of the first earlier occurrence of the longest matching suffix; (-1, 0) if none."""
        seq = self.tokens
        length = len(seq)
        tail = tuple(seq[max(0, length - self.max_ngram) :])
        for n in range(min(self.max_ngram, length - 1), self.min_ngram - 1, -1):
            start = self.first.get(tail[-n:])
            if start is not None and start < length - n:
                return start, n
        return -1, 0

    def propose(self, k: int) -> tuple[list[int], int]:
        """Up to k tokens that followed the first earlier occurrence of the longest matching suffix, and its n."""
        start, n = self._match()
        if n == 0:
            return [], 0
        return self.tokens[start + n : start + n + k], n

    def propose_after(self, extra: Sequence[int], k: int) -> list[int]:
        """What ``propose(k)`` would return were ``extra`` (e.g. a model draft's tokens) appended to the context,
        leaving the index as it was: the continuation lookup offers if the draft turns out right."""
        if k <= 0 or not extra:
            return []
        mark, added = len(self.tokens), []
        self.extend(extra, added)
        try:
            return self.propose(k)[0]
        finally:
            del self.tokens[mark:]
            for gram in added:
                del self.first[gram]

    def proposal_length(self, k: int) -> tuple[int, int]:
        """``len(propose(k)[0])`` and its n, without building the proposal (the controller needs only these)."""
        start, n = self._match()
        if n == 0:
            return 0, 0
        return min(k, len(self.tokens) - start - n), n
