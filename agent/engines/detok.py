"""Incremental detokenisation with stop strings, as vLLM does it with
``include_stop_str_in_output=true``: the text ends right after the matched stop string, the
token ids keep the whole token that completed it, and streamed text deltas concatenate to the
final text (a trailing incomplete UTF-8 character is held back until it completes)."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


class IncrementalText:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: list[str]) -> None:
        self._tok = tokenizer
        self._stop = [s for s in stop if s]
        self._longest = max((len(s) for s in self._stop), default=0)
        self._ids: list[int] = []
        self.text = ""  # decoded text so far (after truncation at a stop string)
        self._emitted = 0
        self.stop_string: str | None = None

    def push(self, token_id: int, special: bool) -> None:
        """Add a sampled token; a special token (eos) adds no text."""
        if special:
            return
        scanned = len(self.text)
        self._ids.append(token_id)
        text = self._tok.decode(self._ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        start = max(0, scanned - self._longest)
        hit: tuple[int, str] | None = None
        for s in self._stop:
            i = text.find(s, start)
            if i >= 0 and (hit is None or i < hit[0]):
                hit = (i, s)
        if hit is not None:
            text = text[: hit[0] + len(hit[1])]
            self.stop_string = hit[1]
        self.text = text

    def delta(self, final: bool) -> str:
        """Text not yet handed out; unless ``final``, without a trailing incomplete character."""
        end = len(self.text)
        if not final:
            while end > self._emitted and self.text[end - 1] == "\ufffd":
                end -= 1
        out = self.text[self._emitted : end]
        self._emitted = end
        return out
