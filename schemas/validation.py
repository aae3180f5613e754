"""Validate a JSON value against one of the schemas and say every problem in plain words.

jsonschema finds the errors; this module only turns each one into a sentence that names the
field (``choices[0].finish_reason``), what was expected and what was found. The schemas are
resolved through a ``referencing.Registry`` built from the files of this package, so a
``$ref`` never reaches the network. Validators are built once per schema and cached: the
test suite validates every server response with them.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource

BASE_URI = "https://llamacpp-course.local/schemas/"
NAMES = (
    "chat_completion_request", "chat_completion_response", "chat_completion_chunk",
    "completion_request", "completion_response", "completion_chunk",
    "embedding_request", "embedding_response",
    "model", "model_list", "error",
    "response_request", "response", "response_stream_event", "response_input_item_list", "response_deleted",
    # The other protocols the server speaks (api/ollama.py, api/anthropic.py, api/llamacpp.py)
    "ollama_chat_response", "ollama_generate_response", "ollama_embed_response", "ollama_embeddings_response",
    "ollama_model_list", "ollama_process_list", "ollama_show", "ollama_version", "ollama_error",
    "anthropic_message", "anthropic_stream_event", "anthropic_count_tokens", "anthropic_error",
    "llamacpp_tokenize", "llamacpp_detokenize", "llamacpp_props", "llamacpp_error",
)
_FILES = files(__package__)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a value: where (a JSON path, ``$`` for the root), and why."""

    path: str
    message: str
    expected: str
    found: str

    def __str__(self) -> str:
        return self.message


class SchemaError(ValueError):
    """Raised by ``check``; ``str()`` lists every problem, one per line."""

    def __init__(self, name: str, problems: list[Problem]) -> None:
        super().__init__("\n".join(map(str, problems)))
        self.name, self.problems = name, problems


def names() -> list[str]:
    return list(NAMES)


@functools.cache
def _raw(name: str) -> dict[str, Any]:
    if name not in NAMES and name != "common":
        raise ValueError(f"unknown schema {name!r}; the schemas are: {', '.join(NAMES)}")
    return json.loads(_FILES.joinpath(f"{name}.schema.json").read_text(encoding="utf-8"))


def load(name: str) -> dict[str, Any]:
    """A copy of the schema, so a caller's edits cannot change what ``validate`` checks."""
    return copy.deepcopy(_raw(name))


@functools.cache
def registry() -> Registry:
    """Every schema under its ``$id``; a ``$ref`` to anything else fails instead of fetching."""
    return Registry().with_resources(
        (BASE_URI + f"{n}.schema.json", Resource.from_contents(_raw(n))) for n in (*NAMES, "common")
    ).crawl()


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(_raw(name), registry=registry())


def validate(instance: Any, name: str) -> list[Problem]:
    """Every problem of ``instance`` as a ``name``; an empty list means valid."""
    errors = [s for e in _validator(name).iter_errors(instance) for s in _specific(e)]
    typed = {tuple(e.absolute_path) for e in errors if e.validator == "type"}
    # A value of the wrong type also fails its enum, minimum...: the type error says it all.
    errors = [e for e in errors if e.validator == "type" or tuple(e.absolute_path) not in typed]
    problems = {p for e in errors for p in _problems(e)}
    if "usage" in _raw(name).get("properties", {}) and not any(p.path.startswith("usage") for p in problems):
        problems.update(_usage_total(instance))
    return sorted(problems, key=lambda p: (_path_key(p.path), p.message))


def check(instance: Any, name: str) -> None:
    """Like ``validate``, for code that should stop at an invalid value."""
    problems = validate(instance, name)
    if problems:
        raise SchemaError(name, problems)


# ---- from jsonschema errors to sentences ---------------------------------------------------------

def _specific(error: ValidationError) -> list[ValidationError]:
    """For anyOf/oneOf, the errors of the branch the value was meant for, not of every branch.

    If one branch alone has the value's type (an object, when the choice is "usage or null"),
    its errors are the useful ones; otherwise jsonschema's ``best_match`` guesses, and when it
    cannot decide, the anyOf error itself stands and lists the accepted forms.
    """
    if error.validator not in ("anyOf", "oneOf") or not error.context:
        return [error]
    branches: dict[int, list[ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    fitting = [subs for subs in branches.values()
               if not any(sub.validator == "type" and not sub.relative_path for sub in subs)]
    if len(fitting) == 1:
        return [e for sub in fitting[0] for e in _specific(sub)]
    best = best_match([error])
    return [best] if best is error else _specific(best)


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out or "$"


def _path_key(path: str) -> list[tuple[int, Any]]:
    """Sorts choices[2] before choices[10]."""
    return [(0, int(i)) if i else (1, k) for i, k in re.findall(r"\[(\d+)\]|([^.\[\]]+)", path)]


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"an array of {len(value)} item{'s' * (len(value) != 1)}"
    return json.dumps(value)


_KINDS = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "a boolean",
          "object": "an object", "array": "an array", "null": "null"}


def _kind(value: Any) -> str:
    for json_type, python in (("boolean", bool), ("integer", int), ("number", float), ("string", str),
                              ("object", dict), ("array", list), ("null", type(None))):
        if isinstance(value, python):  # bool before int: True is an int in Python
            return _KINDS[json_type]
    return type(value).__name__


def _found(value: Any) -> str:
    shown = _show(value)
    return shown if isinstance(value, (dict, list)) or value is None else f"{_kind(value)} {shown}"


def _one_of(values: Iterable[Any]) -> str:
    return ", ".join(map(_show, values))


def _describe(schema: Any) -> str:
    """A few words for a schema: its constant, its values or its type."""
    if not isinstance(schema, dict):
        return "anything" if schema else "nothing"
    if "const" in schema:
        return _show(schema["const"])
    if "enum" in schema:
        return "one of " + _one_of(schema["enum"])
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        items = schema.get("items", {}).get("type") if isinstance(schema.get("items"), dict) else None
        if types == ["array"] and isinstance(items, str):
            return f"an array of {items}s"
        return _or([_KINDS[t] for t in types])
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1].removesuffix(".schema.json")
    return "another form"


def _describe_branches(error: ValidationError) -> str:
    """The forms an anyOf accepts; a $ref branch is described by the schema it points to."""
    words = []
    for i, branch in enumerate(error.validator_value):
        target = next((sub.schema for sub in error.context
                       if sub.relative_schema_path[0] == i and not sub.relative_path and "$ref" in branch), branch)
        words.append(_describe(target))
    return _or(words)


def _or(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _unexpected(path: str, field: str, allowed: list[str]) -> Problem:
    hint = ""
    snake = _snake(field)
    guess = difflib.get_close_matches(snake, allowed, n=1, cutoff=0.75)
    if snake != field:
        hint = f" (fields are snake_case: did you mean {guess[0]!r}?)" if guess else " (fields are snake_case)"
    elif guess:
        hint = f" (did you mean {guess[0]!r}?)"
    expected = "only the fields " + ", ".join(map(repr, allowed)) if allowed else "no fields"
    return Problem(path, f"{path}: unexpected field {field!r}{hint}", expected, f"field {field!r}")


def _problems(e: ValidationError) -> list[Problem]:
    path, kw, want, value = _path(e.absolute_path), e.validator, e.validator_value, e.instance
    if kw == "required":
        missing = [(f, _path([*e.absolute_path, f])) for f in want if f not in value]
        return [Problem(at, f"{at}: required field is missing", f"a value for {f!r}", "nothing") for f, at in missing]
    if kw == "additionalProperties":
        allowed = list(e.schema.get("properties", {}))
        return [_unexpected(path, f, allowed) for f in value if f not in allowed]
    if kw == "type":
        expected = _describe({"type": want})
        text = f"expected {expected}, found {_found(value)}"
    elif kw == "enum":
        expected = "one of " + _one_of(want)
        text = f"{_show(value)} is not one of {_one_of(want)}"
    elif kw == "const":
        expected = _show(want)
        text = f"expected {expected}, found {_found(value)}"
    elif kw in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        sign = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[kw]
        noun = "an integer" if "integer" in str(e.schema.get("type")) else "a number"
        expected = f"{noun} {sign} {want}"
        text = f"expected {expected}, found {_show(value)}"
    elif kw in ("minItems", "maxItems", "minLength", "maxLength"):
        unit = "item" if kw.endswith("Items") else "character"
        expected = f"{'at least' if kw.startswith('min') else 'at most'} {want} {unit}{'s' * (want != 1)}"
        text = f"expected {expected}, found {len(value)}"
    elif kw == "pattern":
        expected = f"a string matching {want}"
        text = f"expected {expected}, found {_show(value)}"
    elif kw in ("anyOf", "oneOf"):
        expected = _describe_branches(e)
        several = kw == "oneOf" and not e.context  # oneOf also fails when two branches match
        text = f"{_found(value)} matches several of: {expected}" if several else f"expected {expected}, found {_found(value)}"
    else:
        expected = f"{kw}: {json.dumps(want)}"
        text = e.message
    if {"then", "else"} & set(e.relative_schema_path) and isinstance(e.schema, dict) and "description" in e.schema:
        text += f" ({e.schema['description']})"  # a conditional rule says why it applies
    return [Problem(path, f"{path}: {text}", expected, _found(value))]


# ---- the rule JSON Schema cannot say -------------------------------------------------------------

def _usage_total(instance: Any) -> Iterator[Problem]:
    """total_tokens = prompt_tokens + completion_tokens (input_tokens + output_tokens in the Responses
    API) compares two fields: beyond JSON Schema."""
    usage = instance.get("usage") if isinstance(instance, dict) else None
    if not isinstance(usage, dict):
        return
    first, second = ("input_tokens", "output_tokens") if "input_tokens" in usage else ("prompt_tokens", "completion_tokens")
    prompt, completion, total = usage.get(first), usage.get(second, 0), usage.get("total_tokens")
    if not all(type(n) is int for n in (prompt, completion, total)):
        return  # the schema already reports the wrong types
    if total != prompt + completion:
        yield Problem("usage.total_tokens",
                      f"usage.total_tokens: {total} is not {first} + {second} "
                      f"({prompt} + {completion} = {prompt + completion})",
                      f"{prompt + completion} ({first} + {second})", f"an integer {total}")
