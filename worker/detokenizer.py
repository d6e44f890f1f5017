"""Incremental detokenization: the text each new token adds, without re-decoding the whole output.

Decoding a token on its own loses context (SentencePiece's leading-space marker, byte-level BPE
splitting one UTF-8 character over several tokens), so we decode a short window: the text of
ids[prefix:] minus the text of ids[prefix:read]. While the window ends inside a multi-byte
character (U+FFFD at the end) the token adds "" and the bytes wait for the next token.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

__all__ = ["IncrementalDetokenizer", "Decoder"]

# Tokens of context kept before the first new token (enough for any merge or space rule).
_CONTEXT_TOKENS = 5


class Decoder:
    """`tokenizer.decode(ids, skip_special_tokens=..., clean_up_tokenization_spaces=False)`, faster.

    A transformers fast tokenizer's decode is its Rust backend's decode plus Python bookkeeping
    (argument conversion, the clean-up flag) that costs twice the decode itself; where the
    tokenizer class does not override decoding, the backend is called directly. Single-token
    decodes are cached: in steady state every incremental step decodes the previous token alone
    (see IncrementalDetokenizer), so the cache halves the decodes per token. Share one Decoder
    between requests.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        backend = _plain_backend(tokenizer)
        # A byte-level decoder maps each token to its bytes and joins them: the text of a token that
        # is whole UTF-8 by itself, after text that ends on a character, is its own decode.
        self.concatenative = backend is not None and _byte_level(backend)
        self._decode: Callable[[list[int]], str]
        if backend is not None:
            self._decode = partial(backend.decode, skip_special_tokens=skip_special_tokens)
        else:
            self._decode = partial(_decode_with, tokenizer, skip_special_tokens)
        self._single: dict[int, str] = {}  # bounded by the vocabulary

    def __call__(self, ids: list[int]) -> str:
        if len(ids) == 1:
            text = self._single.get(ids[0])
            if text is None:
                text = self._single[ids[0]] = str(self._decode(ids))
            return text
        return str(self._decode(ids))


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, context_ids: list[int], skip_special_tokens: bool = True,
                 decoder: Decoder | None = None) -> None:
        """`decoder`, when given, must decode with the same `skip_special_tokens`."""
        self._decode = decoder or Decoder(tokenizer, skip_special_tokens)
        self._ids: list[int] = list(context_ids[-_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        # Every token so far is read and its text ends on a whole character (a piece was just
        # returned): under a concatenative decoder the next token's text may be decoded alone.
        self._whole = False
        self.text = ""  # every piece returned so far, joined

    def add(self, token_id: int) -> str:
        self._ids.append(token_id)
        piece = ""
        if self._whole and self._decode.concatenative:
            piece = self._decode([token_id])  # cached per token: no window decode in steady state
            if "\ufffd" in piece:
                piece = ""
        if not piece:
            prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
            full_text = self._decode(self._ids[self._prefix_offset :])
            self._whole = len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd")
            piece = full_text[len(prefix_text) :] if self._whole else ""
        if piece:
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


def _byte_level(backend: Any) -> bool:
    import tokenizers.decoders

    return isinstance(backend.decoder, tokenizers.decoders.ByteLevel)


def _decode_with(tokenizer: Any, skip_special_tokens: bool, ids: list[int]) -> str:
    return str(tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False))


def _plain_backend(tokenizer: Any) -> Any:
    """The `tokenizers.Tokenizer` whose decode is exactly this tokenizer's decode (with
    clean_up_tokenization_spaces=False), or None when that is not certain."""
    try:
        import tokenizers
    except ImportError:
        return None
    backend = getattr(tokenizer, "_tokenizer", None)
    if not isinstance(backend, tokenizers.Tokenizer):
        return None
    cls = type(tokenizer)
    # The transformers class that wraps the backend (v5 TokenizersBackend, v4 PreTrainedTokenizerFast):
    # its _decode is backend.decode plus the optional clean-up. Any override below it may differ.
    base = next((c for c in cls.__mro__ if c.__name__ in ("TokenizersBackend", "PreTrainedTokenizerFast")), None)
    if base is None or cls._decode is not base._decode or cls.decode is not base.decode:
        return None
    return backend
