"""The gateway's tokenizer: encoding, decoding, chat templates. transformers without torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.errors import GenfleetError, ValidationError

__all__ = ["Tokenizer", "model_limits"]


class Tokenizer:
    def __init__(self, model_dir: Path, chat_template: str | None = None) -> None:
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(str(model_dir))
        if chat_template:
            path = Path(chat_template)
            self._tok.chat_template = path.read_text() if path.is_file() else chat_template

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._run(text, add_special_tokens=add_special_tokens).input_ids)

    def offsets(self, text: str, add_special_tokens: bool = True) -> list[tuple[int, str, int, int]]:
        enc = self._run(text, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
        return [(i, text[a:b], a, b) for i, (a, b) in zip(enc.input_ids, enc.offset_mapping)]

    def _run(self, text: str, **kwargs: Any) -> Any:
        try:
            text.encode("utf-8")  # a lone surrogate (JSON "\ud800") is not text the tokenizer can take
            return self._tok(text, **kwargs)
        except (UnicodeEncodeError, TypeError, ValueError) as exc:
            raise ValidationError(f"tokenizer error: the input is not valid text ({exc})") from exc

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=skip_special_tokens))

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
        if not self._tok.chat_template:
            raise GenfleetError("template_error", "Template error: the model has no chat template")
        try:
            text = self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
        except Exception as exc:  # jinja2 errors, including the template's own raise_exception()
            raise GenfleetError("template_error", f"Template error: {exc}") from exc
        return str(text)

    @property
    def eos_token(self) -> str | None:
        return self._tok.eos_token  # type: ignore[no-any-return]


def model_limits(model_dir: Path) -> int:
    """The model's context length from config.json (what --max-total-tokens defaults to)."""
    raw = json.loads((model_dir / "config.json").read_text())
    return int(raw.get("max_position_embeddings") or raw.get("n_positions") or 4096)
