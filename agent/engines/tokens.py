"""The tokenizer side of an engine (encode, decode, chat prefix), shared by the in-process and
the HTTP engine so both turn text and chats into exactly the same ids."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class TokenizerOps:
    tokenizer: PreTrainedTokenizerBase

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without added special tokens (a piece of a conversation)."""
        return [int(i) for i in self.tokenizer.encode(text, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        """All ids, special tokens included (a faithful rendering of a token sequence)."""
        return str(self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))

    def chat_prefix(self, messages: list[dict[str, str]]) -> list[int]:
        """The chat template applied to ``messages``, ending with the assistant turn opener."""
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        return [int(i) for i in ids]
