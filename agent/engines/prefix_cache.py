"""Prompt-prefix KV store of the in-process engine: an agent turn re-sends the whole conversation,
and episodes share their prompt's opening, so most of a prompt was often prefilled before.

What is stored is the keys/values of a prefilled prompt's full chunks (:func:`kvrows.reusable_length`),
copied when its prefill ends. A new prompt starts from the stored entry of the same model version
that shares the most whole chunks with it, and only the rest is prefilled. Chunked prefill makes
those keys/values a function of the tokens alone (see :mod:`agent.engines.kvrows`), so reuse gives
bit-identical results: whether a request hits the store (what ran before it, what runs beside it,
an eviction) never changes its tokens. Generated tokens are not stored: decode steps compute their
keys/values with other kernels than a prefill of the same text, so reusing them would change results.

Bounded by bytes, least recently used first out; an entry that a newer one extends (the previous
turn of a conversation) is dropped for it. The engine's worker thread reads and writes; the event
loop drops a version's entries (hot swap) or clears the store; one lock covers both.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.engines.kvrows import PREFILL_CHUNK, KVPrefix, RowCache, reusable_length

# 1 GiB: ~23k tokens of SmolLM2-135M in float32 (46 KiB of keys/values per token), i.e. the
# prompts of 2 x 16 (the default max_batch) conversations of ~700 tokens.
DEFAULT_PREFIX_CACHE_BYTES = 1 << 30


@dataclass(eq=False)
class _Entry:
    owner: object  # the model version whose forward pass computed ``prefix`` (compared by identity)
    tokens: tuple[int, ...]
    prefix: KVPrefix
    nbytes: int


class PrefixStore:
    """Stored prompt prefixes, LRU within ``max_bytes`` (0 disables the store)."""

    def __init__(self, max_bytes: int = DEFAULT_PREFIX_CACHE_BYTES, chunk: int = PREFILL_CHUNK) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self.chunk = chunk
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # oldest first
        self._next_key = 0
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def tokens(self) -> list[tuple[int, ...]]:
        """The stored token prefixes, least recently used first (for tests and inspection)."""
        with self._lock:
            return [e.tokens for e in self._entries.values()]

    def _shared(self, stored: tuple[int, ...], prompt: tuple[int, ...], limit: int) -> int:
        """Leading tokens the two share, in whole chunks, at most ``limit``."""
        c, n = self.chunk, 0
        while n + c <= limit and stored[n : n + c] == prompt[n : n + c]:
            n += c
        return n

    def lookup(self, owner: object, prompt_ids: Sequence[int]) -> KVPrefix | None:
        """The longest stored prefix of ``prompt_ids`` computed by ``owner``, in whole chunks, short
        of the prompt's last token (a prefill needs one token to produce the next-token logits)."""
        prompt = tuple(prompt_ids)
        with self._lock:
            best_key, best_len = -1, 0
            for key, entry in self._entries.items():
                if entry.owner is owner:
                    n = self._shared(entry.tokens, prompt, min(len(entry.tokens), len(prompt) - 1))
                    if n > best_len:
                        best_key, best_len = key, n
            if best_len == 0:
                return None
            self._entries.move_to_end(best_key)
            return self._entries[best_key].prefix.truncated(best_len)

    def insert(
        self, owner: object, prompt_ids: Sequence[int], cache: RowCache, alive: Callable[[], bool] = lambda: True
    ) -> bool:
        """Store the full chunks of a prefilled prompt (``cache`` holds at least its keys/values).

        ``alive`` is checked under the lock: a version removed while its prompt was prefilling
        stores nothing. Returns whether an entry was added.
        """
        length = reusable_length(len(prompt_ids), self.chunk)
        if length == 0 or self.max_bytes == 0:
            return False
        tokens = tuple(prompt_ids[:length])
        with self._lock:
            if not alive():
                return False
            for key, entry in self._entries.items():
                if entry.owner is owner and entry.tokens[:length] == tokens:  # already covered
                    self._entries.move_to_end(key)
                    return False
            prefix = cache.snapshot(length)
            nbytes = prefix.nbytes
            if nbytes > self.max_bytes:
                return False
            extended = [k for k, e in self._entries.items() if e.owner is owner and tokens[: len(e.tokens)] == e.tokens]
            for key in extended:
                self._remove(key)
            self._entries[self._next_key] = _Entry(owner, tokens, prefix, nbytes)
            self._next_key += 1
            self._bytes += nbytes
            while self._bytes > self.max_bytes:
                self._remove(next(iter(self._entries)))
            return True

    def drop(self, owner: object) -> int:
        """Forget every entry of ``owner``; returns how many there were."""
        with self._lock:
            keys = [k for k, e in self._entries.items() if e.owner is owner]
            for key in keys:
                self._remove(key)
            return len(keys)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _remove(self, key: int) -> None:
        self._bytes -= self._entries.pop(key).nbytes
