"""Grammars the output must match: TGI's `parameters.grammar` and OpenAI's `response_format`,
turned into the llguidance grammar text that travels to the worker (SamplingParams.grammar).

A request names a grammar as a `GrammarSpec` (parsed from the body, shape checks only);
`compile_grammar` applies the content rules and builds the text, once per distinct grammar: a TGI
schema must have top-level `properties`, and llguidance must accept the result; a schema it
refuses is then checked against the draft 2020-12 meta-schema (TGI's rule, jsonschema here) so
that the message says what is wrong as TGI would. An object schema that lists
`properties` and says nothing of others gets only those (`additionalProperties: false`), as TGI's
outlines and xgrammar's strict mode do: a model left free to add keys rambles on. It checks the grammar without
a tokenizer in about a millisecond; the worker compiles it against the model's vocabulary. Every
failure is a 422 with TGI's message, before anything is queued.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Literal

import jsonschema
import llguidance

from common.errors import ValidationError

__all__ = ["GrammarSpec", "parse_tgi_grammar", "parse_response_format", "compile_grammar", "JSON_OPTIONS",
           "ANY_JSON_OBJECT", "closed_schema"]

# How generated JSON is laid out: one space after `:` and `,`, no other whitespace. Free whitespace
# lets a small model pad with newlines until its budget runs out; a schema's own "x-guidance"
# options override these.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}  # OpenAI's json_object: any object
_TGI_TYPES = ("json", "json_object", "regex", "json_schema")


@dataclass(frozen=True)
class GrammarSpec:
    kind: Literal["json", "regex", "lark"]
    text: str  # json: the schema serialised (its key order is the order properties are generated in)
    require_properties: bool = False  # TGI's rule: a schema needs top-level `properties`

    @classmethod
    def json_schema(cls, schema: Any, *, require_properties: bool = False) -> GrammarSpec:
        return cls("json", json.dumps(schema), require_properties)


def parse_tgi_grammar(raw: Any) -> GrammarSpec | None:
    """TGI's GrammarType: {"type": "json"|"json_object", "value": schema or a string of JSON},
    {"type": "regex", "value": str}, {"type": "json_schema", "value": {"name"?, "schema"}}."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or "type" not in raw or "value" not in raw:
        raise ValidationError("`grammar` must be an object with `type` and `value`")
    kind, value = raw["type"], raw["value"]
    if kind not in _TGI_TYPES:
        raise ValidationError(f"`grammar.type` must be one of {', '.join(map(repr, _TGI_TYPES))}. Given: {kind!r}")
    if kind == "regex":
        if not isinstance(value, str):
            raise ValidationError("`grammar.value` must be a string for a regex grammar")
        return GrammarSpec("regex", value)
    if kind == "json_schema":
        if not isinstance(value, dict) or "schema" not in value:
            raise ValidationError("`grammar.value` must be an object with `schema` for a json_schema grammar")
        if value.get("name") is not None and not isinstance(value["name"], str):
            raise ValidationError("`grammar.value.name` must be a string")
        value = value["schema"]
    if isinstance(value, str):  # TGI takes a schema serialised into a string too
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"grammar is not valid: {exc}") from exc
    return GrammarSpec.json_schema(value, require_properties=True)


def parse_response_format(raw: Any) -> GrammarSpec | None:
    """OpenAI's response_format: {"type": "text"}, {"type": "json_object"} (any object) or
    {"type": "json_schema", "json_schema": {"name", "schema"?, "strict"?, "description"?}};
    TGI's own shape ({"type": "json"|"json_schema"|"regex", "value": ...}) is taken as TGI reads it."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise ValidationError("`response_format` must be an object with a string `type`")
    if "value" in raw:
        return parse_tgi_grammar(raw)
    kind = raw["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return GrammarSpec.json_schema(ANY_JSON_OBJECT)
    if kind != "json_schema":
        raise ValidationError(f"`response_format.type` must be 'text', 'json_object' or 'json_schema'. Given: {kind!r}")
    spec = raw.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ValidationError("`response_format.json_schema` must be an object with a string `name`")
    if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
        raise ValidationError("`response_format.json_schema.strict` must be a boolean")
    schema = spec.get("schema", ANY_JSON_OBJECT)
    if not isinstance(schema, dict):
        raise ValidationError("`response_format.json_schema.schema` must be an object")
    return GrammarSpec.json_schema(schema)


def compile_grammar(spec: GrammarSpec) -> str:
    """The llguidance grammar text of `spec`, or ValidationError (TGI's messages)."""
    return _compile(spec.kind, spec.text, spec.require_properties)


@functools.lru_cache(maxsize=256)
def _compile(kind: str, text: str, require_properties: bool) -> str:
    if kind == "json":
        schema = json.loads(text)
        if not isinstance(schema, dict):
            raise ValidationError("grammar is not valid: a JSON schema must be an object")
        if require_properties and "properties" not in schema:
            raise ValidationError("grammar is not valid: Grammar must have a 'properties' field")
        grammar = llguidance.LLMatcher.grammar_from_json_schema(closed_schema(schema), defaults=JSON_OPTIONS)  # type: ignore[arg-type]
        error = llguidance.LLMatcher.validate_grammar(grammar)
        if error:
            # The meta-schema check says what is wrong in TGI's words; it costs tens of ms in
            # Python for a large schema, so only a schema llguidance refused pays it.
            try:
                jsonschema.Draft202012Validator.check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise ValidationError(f"grammar is not valid: {exc.message}") from exc
            raise ValidationError(f"cannot compile regex from schema: {error.strip()}")  # TGI's words
        return grammar
    if kind == "regex":
        grammar = llguidance.LLMatcher.grammar_from_regex(_ascii_classes(text))
    else:
        grammar = llguidance.LLMatcher.grammar_from_lark(text)
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise ValidationError(f"grammar is not valid: {error.strip()}")
    return grammar


# `\d` and `\w` mean ASCII in TGI's engine (outlines) and to most users; in llguidance's Rust
# syntax they are Unicode, and a small model then writes digits from other scripts.
_ASCII = {"d": "[0-9]", "D": "[^0-9]", "w": "[0-9A-Za-z_]", "W": "[^0-9A-Za-z_]"}


def _ascii_classes(regex: str) -> str:
    """`regex` with \\d \\D \\w \\W as ASCII classes (nested classes are valid inside [...] too)."""
    out, i = [], 0
    while i < len(regex):
        if regex[i] == "\\" and i + 1 < len(regex):
            out.append(_ASCII.get(regex[i + 1], regex[i : i + 2]))
            i += 2
        else:
            out.append(regex[i])
            i += 1
    return "".join(out)


# Where subschemas sit: keyword -> how many (one schema, a list, or a map of them).
_ONE = ("items", "additionalItems", "not", "if", "then", "else", "contains", "additionalProperties")
_LIST = ("anyOf", "oneOf", "prefixItems")
_MAP = ("properties", "$defs", "definitions", "patternProperties")


def closed_schema(node: Any) -> Any:
    """A copy of schema `node` where every object schema listing `properties` forbids other keys
    unless it says otherwise. allOf members stay open: they share one object's keys."""
    if not isinstance(node, dict):
        return node
    out = dict(node)
    for key in _ONE:
        if isinstance(out.get(key), dict):
            out[key] = closed_schema(out[key])
    for key in _LIST:
        if isinstance(out.get(key), list):
            out[key] = [closed_schema(s) for s in out[key]]
    for key in _MAP:
        if isinstance(out.get(key), dict):
            out[key] = {name: closed_schema(s) for name, s in out[key].items()}
    if isinstance(out.get("pattern"), str):  # ECMA-262's \d and \w, as JSON Schema means them: ASCII
        out["pattern"] = _ascii_classes(out["pattern"])
    if isinstance(out.get("allOf"), list):
        out["allOf"] = [_open_members(s) for s in out["allOf"]]
    if "properties" in out and not {"additionalProperties", "patternProperties", "unevaluatedProperties"} & out.keys():
        out["additionalProperties"] = False
    return out


def _open_members(node: Any) -> Any:
    closed = closed_schema(node)
    if isinstance(closed, dict) and "additionalProperties" not in node:
        closed.pop("additionalProperties", None)
    return closed
