"""Chat templates rendered by the gateway equal transformers' apply_chat_template, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tokenizers
import tokenizers.models
from transformers import AutoTokenizer

from common.errors import GenfleetError
from gateway.tokenizer import Tokenizer

REAL = {k: v for k, v in json.loads((Path(__file__).parent / "chat_templates.json").read_text()).items()
        if not k.startswith("_")}

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city, «today»",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

CHATS: dict[str, dict[str, Any]] = {
    "one_turn": {"messages": [{"role": "user", "content": "Hi there"}]},
    "turns": {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": " 4 "},
                           {"role": "user", "content": "Et 3+3 ? Ça fait 6 ✓"}]},
    "system": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]},
    "tools": {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER]},
    "no_prompt": {"messages": [{"role": "user", "content": "Hi"}], "add_generation_prompt": False},
}


def _model_dir(tmp: Path, config: dict[str, Any], files: dict[str, str] | None = None) -> Path:
    # Templates do not depend on the vocabulary: a tiny word-level tokenizer loads in milliseconds.
    tmp.mkdir(parents=True, exist_ok=True)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3}
    tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>")).save(str(tmp / "tokenizer.json"))
    (tmp / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", **config}))
    for name, text in (files or {}).items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(text)
    return tmp


def _renderings(model_dir: Path, chats: list[dict[str, Any]]) -> list[tuple[str | Exception, str | Exception]]:
    """(ours, transformers') for each chat: a rendering or the exception it raised."""
    mine, hf = Tokenizer(model_dir), AutoTokenizer.from_pretrained(str(model_dir))
    out: list[tuple[str | Exception, str | Exception]] = []
    for chat in chats:
        ours: str | Exception
        theirs: str | Exception
        kwargs = {k: v for k, v in chat.items() if k != "messages"}
        kwargs.setdefault("add_generation_prompt", True)
        try:
            ours = mine.apply_chat_template(chat["messages"], **kwargs)
        except GenfleetError as exc:
            ours = exc
        try:
            theirs = hf.apply_chat_template(chat["messages"], tokenize=False, **kwargs)
        except Exception as exc:  # noqa: BLE001 - whatever transformers raises, we must refuse too
            theirs = exc
        out.append((ours, theirs))
    return out


def test_the_default_models_template(default_model_dir: Path) -> None:
    for ours, theirs in _renderings(default_model_dir, list(CHATS.values())):
        assert ours == theirs


@pytest.mark.parametrize("model", sorted(REAL))
def test_released_templates_render_as_transformers_does(tmp_path: Path, model: str) -> None:
    spec = REAL[model]
    special = {k: spec[k] for k in ("bos_token", "eos_token") if spec[k]}
    model_dir = _model_dir(tmp_path, {"chat_template": spec["template"], **special})
    rendered = 0
    for name, (ours, theirs) in zip(CHATS, _renderings(model_dir, list(CHATS.values()))):
        if isinstance(theirs, Exception):  # e.g. gemma refuses a system turn with raise_exception()
            assert isinstance(ours, GenfleetError) and ours.error_type == "template_error", (name, ours)
            assert str(theirs) in ours.message
        else:
            assert ours == theirs, name
            rendered += 1
    assert rendered >= 3


def test_raise_exception_is_a_template_error_naming_the_message(tmp_path: Path) -> None:
    spec = REAL["google-gemma-2-2b-it"]
    tok = Tokenizer(_model_dir(tmp_path, {"chat_template": spec["template"]}))
    with pytest.raises(GenfleetError, match="System role not supported") as info:
        tok.apply_chat_template(CHATS["system"]["messages"])
    assert info.value.status_code == 422


FEATURES = {
    # tojson keeps non-ASCII text and takes indent / sort_keys; loop controls; `generation` blocks.
    "tojson": "{{ messages | tojson(indent=2, sort_keys=true) }}{{ tools | tojson }}",
    "loop_controls": "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}",
    "generation": "{% for m in messages %}{% generation %}{% set x = m.content %}[{{ x }}]{% endgeneration %}{% endfor %}",
    "documents": "{% for d in documents %}{{ d.title }}: {{ d.text }}\n{% endfor %}{{ messages[-1].content }}",
    "specials": "{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ pad_token }}|{{ add_generation_prompt }}",
    "date": "{{ strftime_now('%Y') }}",
}


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_what_templates_rely_on(tmp_path: Path, feature: str) -> None:
    model_dir = _model_dir(tmp_path, {"chat_template": FEATURES[feature], "bos_token": "<s>",
                                                        "eos_token": "</s>", "unk_token": "<unk>"})
    chat = {"messages": CHATS["turns"]["messages"], "tools": [WEATHER],
            "documents": [{"title": "Pâté", "text": "A spread."}, {"title": "B", "text": "Two"}]}
    [(ours, theirs)] = _renderings(model_dir, [chat])
    assert isinstance(ours, str) and ours == theirs


def test_named_templates_pick_tool_use_when_tools_are_given(tmp_path: Path) -> None:
    files = {"chat_template.jinja": "plain:{{ messages[0].content }}",
             "additional_chat_templates/tool_use.jinja": "tools:{{ tools | length }}:{{ messages[0].content }}"}
    model_dir = _model_dir(tmp_path, {"chat_template": "ignored, the files win"}, files)
    for ours, theirs in _renderings(model_dir, [CHATS["one_turn"], CHATS["tools"]]):
        assert ours == theirs
    assert Tokenizer(model_dir).apply_chat_template(CHATS["tools"]["messages"], tools=[WEATHER]).startswith("tools:1")


def test_a_namespace_refuses_underscore_attributes(tmp_path: Path) -> None:
    template = "{% set ns = namespace(_x=1) %}{{ ns._x }}"
    tok = Tokenizer(_model_dir(tmp_path, {"chat_template": template}))
    with pytest.raises(GenfleetError, match="Template error"):
        tok.apply_chat_template(CHATS["one_turn"]["messages"])


def test_no_template_is_a_template_error(tmp_path: Path) -> None:
    tok = Tokenizer(_model_dir(tmp_path, {}))
    with pytest.raises(GenfleetError, match="no chat template"):
        tok.apply_chat_template(CHATS["one_turn"]["messages"])


def test_a_template_that_does_not_parse_fails_chat_only(tmp_path: Path) -> None:
    tok = Tokenizer(_model_dir(tmp_path, {"chat_template": "{% for m in messages %}{{ m.content }}"}))
    assert tok.encode("hello", add_special_tokens=False) == [3]  # the tokenizer itself still serves
    with pytest.raises(GenfleetError, match="does not parse"):
        tok.apply_chat_template(CHATS["one_turn"]["messages"])
