"""Incremental detokenization: the text each new token adds, without re-decoding the whole output.

Decoding a token on its own loses context (SentencePiece's leading-space marker, byte-level BPE
splitting one UTF-8 character over several tokens), so we decode a short window: the text of
ids[prefix:] minus the text of ids[prefix:read]. While the window ends inside a multi-byte
character (U+FFFD at the end) the token adds "" and the bytes wait for the next token.
"""

from __future__ import annotations

from typing import Any

__all__ = ["IncrementalDetokenizer"]

# Tokens of context kept before the first new token (enough for any merge or space rule).
_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, context_ids: list[int], skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._ids: list[int] = list(context_ids[-_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self.text = ""  # every piece returned so far, joined

    def add(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset :])
        if len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd"):
            piece = full_text[len(prefix_text) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            # Keep the window short: only the last few tokens matter for the next decode.
            if self._prefix_offset > 4 * _CONTEXT_TOKENS:
                drop = self._prefix_offset
                self._ids = self._ids[drop:]
                self._prefix_offset -= drop
                self._read_offset -= drop
            self.text += piece
            return piece
        return ""

    def flush(self) -> str:
        """Whatever is still held back at the end of generation (a truncated character)."""
        if self._read_offset >= len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        rest = self._decode(self._ids[self._prefix_offset :])[len(prefix_text) :]
        self._prefix_offset = self._read_offset = len(self._ids)
        self.text += rest
        return rest

    def _decode(self, ids: list[int]) -> str:
        return str(
            self._tokenizer.decode(
                ids, skip_special_tokens=self._skip_special, clean_up_tokenization_spaces=False
            )
        )
