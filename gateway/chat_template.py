"""Chat templates rendered with jinja2, with the semantics of HF's `apply_chat_template`.

What a template on the Hub may rely on, and gets here: a sandboxed environment with
trim_blocks/lstrip_blocks and the loop controls; `raise_exception(msg)`, `strftime_now(fmt)`,
a `tojson` filter that keeps non-ASCII text and takes indent/separators/sort_keys; the
`{% generation %}` block (rendered as its body); the variables `messages`, `tools`,
`documents`, `add_generation_prompt` and the tokenizer's named special tokens (`bos_token`,
`eos_token`, ...). A model may carry several named templates: "tool_use" is picked when tools
are given, else "default".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from common.errors import GenfleetError

__all__ = ["ChatTemplate", "template_error"]


def template_error(message: str) -> GenfleetError:
    return GenfleetError("template_error", f"Template error: {message}")


class ChatTemplate:
    def __init__(self, templates: str | Mapping[str, str], special_tokens: Mapping[str, str]) -> None:
        named = {"default": templates} if isinstance(templates, str) else dict(templates)
        # A template that does not parse fails the chat routes only, as in transformers: /generate still serves.
        self._compiled: dict[str, jinja2.Template | GenfleetError] = {name: _compile(t) for name, t in named.items()}
        self._sources = named
        self._special_tokens = dict(special_tokens)

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        template = self._pick(tools)
        if isinstance(template, GenfleetError):
            raise template
        # None-valued keys are dropped, as HF does: templates test `is defined`, not `is none`.
        clean = [{k: v for k, v in m.items() if v is not None} for m in messages]
        try:
            return template.render(messages=clean, tools=tools, documents=documents,
                                   add_generation_prompt=add_generation_prompt, **{**self._special_tokens, **extra})
        except jinja2.TemplateError as exc:  # the template's own raise_exception() included
            raise template_error(str(exc)) from exc
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError) as exc:
            raise template_error(f"{type(exc).__name__}: {exc}") from exc

    def reads(self, name: str, *, tools: bool) -> bool:
        """Whether the template picked for a request (with or without tools) mentions `name`."""
        return name in self._sources[self._pick_name(tools)]

    def _pick(self, tools: list[dict[str, Any]] | None) -> jinja2.Template | GenfleetError:
        return self._compiled[self._pick_name(tools is not None)]

    def _pick_name(self, tools: bool) -> str:
        if tools and "tool_use" in self._compiled:
            return "tool_use"
        if "default" in self._compiled:
            return "default"
        if len(self._compiled) == 1:
            return next(iter(self._compiled))
        raise template_error(f"the model has several chat templates and no default: {sorted(self._compiled)}")


def _compile(text: str) -> jinja2.Template | GenfleetError:
    try:
        return _ENV.from_string(text)
    except jinja2.TemplateError as exc:
        return template_error(f"the chat template does not parse: {exc}")


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; serving renders the body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Not jinja2's own tojson, which escapes HTML characters and has no ensure_ascii.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _Namespace(jinja2.utils.Namespace):
    """jinja2's namespace() without underscore attributes, the way into CPython internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - jinja2's own signature trick
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template may not set {name!r} on a namespace")


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _Namespace
    return env


_ENV = _environment()
