"""The gateway's tokenizer: `tokenizers` for text and jinja2 for chat templates (as TGI's router does).

Never torch or transformers: a gateway starts in a fraction of a second and maps no libtorch.
It reads what transformers reads from a model directory and gives the same ids and the same
prompt: tokenizer.json (its post-processor adds BOS/EOS; transformers, too, ignores the config's
add_bos_token when tokenizer.json exists); tokenizer_config.json (named special tokens,
`clean_up_tokenization_spaces`, the chat template); special_tokens_map.json for what the config
leaves out; chat_template.jinja and additional_chat_templates/*.jinja.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tokenizers

from common.errors import ValidationError
from common.model_source import read_json_object
from gateway.chat_template import ChatTemplate, template_error

__all__ = ["Tokenizer", "TokenizerFilesMissing"]

# The named special tokens a template sees (transformers' SPECIAL_TOKENS_ATTRIBUTES).
_NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class TokenizerFilesMissing(FileNotFoundError):
    pass


class Tokenizer:
    def __init__(self, model_dir: Path | str, chat_template: str | None = None) -> None:
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise TokenizerFilesMissing(
                f"{model_dir} has no tokenizer.json: the gateway needs the model's fast-tokenizer file "
                f"(save it with transformers' `tokenizer.save_pretrained(dir)` or copy it from the model's repository)"
            )
        self._tok = tokenizers.Tokenizer.from_file(str(path))
        config = read_json_object(model_dir / "tokenizer_config.json")
        legacy = read_json_object(model_dir / "special_tokens_map.json")
        self.special_tokens = {name: text for name in _NAMED_TOKENS
                               if (text := _token_text(config.get(name, legacy.get(name)))) is not None}
        self._add_missing_special_tokens()
        # transformers skips this clean-up for BPE models, where it would eat real spaces.
        self._clean_up_spaces = bool(config.get("clean_up_tokenization_spaces")) and type(self._tok.model).__name__ != "BPE"
        templates = _chat_templates(model_dir, config, chat_template)
        self._template = ChatTemplate(templates, self.special_tokens) if templates else None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._run(text, add_special_tokens).ids)

    def offsets(self, text: str, add_special_tokens: bool = True) -> list[tuple[int, str, int, int]]:
        enc = self._run(text, add_special_tokens)
        return [(i, text[a:b], a, b) for i, (a, b) in zip(enc.ids, enc.offsets)]

    def _run(self, text: str, add_special_tokens: bool) -> tokenizers.Encoding:
        try:
            text.encode("utf-8")  # a lone surrogate (JSON "\ud800") is not text the tokenizer can take
            return self._tok.encode(text, add_special_tokens=add_special_tokens)
        except (UnicodeEncodeError, TypeError, ValueError, AttributeError) as exc:
            raise ValidationError(f"tokenizer error: the input is not valid text ({exc})") from exc

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        text = self._tok.decode(ids, skip_special_tokens=skip_special_tokens)
        return _clean_up_spaces(text) if self._clean_up_spaces else text

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
        if self._template is None:
            raise template_error("the model has no chat template")
        return self._template.render(messages, **kwargs)

    def template_reads(self, name: str, *, tools: bool = False) -> bool:
        """Whether the chat template mentions `name` (`tools`, `tool_calls`): else the caller spells it out."""
        return self._template is not None and self._template.reads(name, tools=tools)

    def _add_missing_special_tokens(self) -> None:
        # transformers adds a named special token that tokenizer.json lacks; so do we.
        missing = [t for t in self.special_tokens.values() if self._tok.token_to_id(t) is None]
        if missing:
            self._tok.add_special_tokens([tokenizers.AddedToken(t, special=True) for t in missing])


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # a serialized AddedToken
        value = value.get("content")
    return value if isinstance(value, str) else None


def _chat_templates(model_dir: Path, config: dict[str, Any], override: str | None) -> str | dict[str, str] | None:
    """The model's template(s), in transformers' order: the files beside tokenizer_config.json win."""
    if override:
        path = Path(override)
        return path.read_text(encoding="utf-8") if path.is_file() else override
    found: dict[str, str] = {}
    inline = config.get("chat_template")
    if isinstance(inline, list):  # [{"name": ..., "template": ...}]
        found.update({t["name"]: t["template"] for t in inline if isinstance(t, dict)})
    elif isinstance(inline, dict):
        found.update(inline)
    elif isinstance(inline, str):
        found["default"] = inline
    files = {"default": model_dir / "chat_template.jinja"}
    files.update({p.stem: p for p in sorted((model_dir / "additional_chat_templates").glob("*.jinja"))})
    if any(p.is_file() for p in files.values()):
        found = {name: p.read_text(encoding="utf-8") for name, p in files.items() if p.is_file()}
    if not found:
        return None
    return found["default"] if list(found) == ["default"] else found


def _clean_up_spaces(text: str) -> str:
    # transformers' clean_up_tokenization: no space before punctuation and English contractions.
    for spaced, tight in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(spaced, tight)
    return text
