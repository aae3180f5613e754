"""OpenAI's official spec as JSON Schema validators: the other half of every contract check.

The spec enters through ``openai_spec_subset.json``, next to this module: the components of
openapi.yaml that our schemas correspond to and everything they reference, copied unmodified
(the full file is 3 MB of YAML and not part of this repository). It ships with the package so
that ``coursekit conform`` can hold any server to OpenAI's own components, on a machine that
has never seen the full spec. ``python tests/test_schemas.py PATH/TO/openapi.yaml`` regenerates
it; tests/test_schemas.py checks that it is still exactly what the full spec contains.

    >>> from schemas import openai_spec
    >>> openai_spec.problems({"object": "list", "data": []}, "model_list")
    []
    >>> openai_spec.problems({"error": {"message": "x"}}, "error")[0][0]
    'error'
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from .validation import _path

SUBSET = Path(__file__).with_name("openai_spec_subset.json")
SPEC_URI = "https://openai.local/openapi.json"

COMPONENTS = {
    "chat_completion_request": "CreateChatCompletionRequest",
    "chat_completion_response": "CreateChatCompletionResponse",
    "chat_completion_chunk": "CreateChatCompletionStreamResponse",
    "completion_request": "CreateCompletionRequest",
    "completion_response": "CreateCompletionResponse",
    "completion_chunk": "CreateCompletionResponse",  # the spec uses one component for both
    "embedding_request": "CreateEmbeddingRequest",
    "embedding_response": "CreateEmbeddingResponse",
    "model": "Model",
    "model_list": "ListModelsResponse",
    "error": "ErrorResponse",
}

# Where our schemas deliberately accept more than the spec (tests/test_schemas.py lists why):
# legacy completion chunks (the spec describes them with the non-streamed component, whose
# finish_reason is never null) and base64 embeddings (the spec types embedding as floats only).
SPEC_LOOSER = {"completion_chunk"}


def extract_subset(spec: dict[str, Any], spec_bytes: bytes) -> dict[str, Any]:
    """The components COMPONENTS names and all they reference, unmodified, with their provenance."""
    every = spec["components"]["schemas"]
    wanted, todo = set(), list(COMPONENTS.values())
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo += [ref.rsplit("/", 1)[-1] for ref in _refs(every[name])]
    return {
        "x-source": {"file": "openapi.yaml of github.com/openai/openai-openapi",
                     "version": spec["info"]["version"], "sha256": hashlib.sha256(spec_bytes).hexdigest(),
                     "regenerate": "python tests/test_schemas.py PATH/TO/openapi.yaml"},
        "components": {"schemas": {name: every[name] for name in sorted(wanted)}},
    }


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return ([node["$ref"]] if "$ref" in node else []) + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def nullable_as_json_schema(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true``, still used across the 3.1 spec, means "or null"; JSON Schema
    ignores the unknown keyword and would refuse null. Rewritten as ``anyOf: [schema, null]``, which
    also covers schemas without a ``type`` (a bare oneOf) and enums that do not list null.
    ``discriminator`` and ``x-*`` need nothing: a JSON Schema validator ignores unknown keywords, and
    each oneOf branch pins its discriminating property with an enum anyway. ``format`` is an annotation.
    """
    if isinstance(node, list):
        return [nullable_as_json_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: nullable_as_json_schema(v) for k, v in node.items() if not (k == "nullable" and isinstance(v, bool))}
    return {"anyOf": [out, {"type": "null"}]} if node.get("nullable") is True else out


def spec_validators(document: dict[str, Any]) -> dict[str, Draft202012Validator]:
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry = Registry().with_resource(SPEC_URI, resource)
    return {name: Draft202012Validator({"$ref": f"{SPEC_URI}#/components/schemas/{component}"}, registry=registry)
            for name, component in COMPONENTS.items()}


def subset() -> dict[str, Any]:
    """The committed subset as it is on disk (with OpenAPI's ``nullable``)."""
    return json.loads(SUBSET.read_text(encoding="utf-8"))


@cache
def validators() -> dict[str, Draft202012Validator]:
    """The spec's validators, built once per process."""
    return spec_validators(nullable_as_json_schema(subset()))


def exempt(instance: Any, name: str) -> bool:
    """Whether the spec cannot judge ``instance`` fairly (see SPEC_LOOSER)."""
    return name in SPEC_LOOSER or (
        name == "embedding_response" and isinstance(instance, dict) and isinstance(instance.get("data"), list)
        and any(isinstance(d, dict) and isinstance(d.get("embedding"), str) for d in instance["data"]))


def problems(instance: Any, name: str) -> list[tuple[str, str]]:
    """(path, message) for every way ``instance`` breaks OpenAI's component for our schema ``name``.

    Each top-level error is narrowed to its most relevant cause (jsonschema's ``best_match``), so
    a value that fits no branch of a oneOf says why it fails the branch it was meant for. Empty
    when valid, and when ``exempt``.
    """
    if exempt(instance, name):
        return []
    out = []
    for error in validators()[name].iter_errors(instance):
        best = best_match([error])
        message = best.message if len(best.message) <= 300 else best.message[:297] + "..."
        out.append((_path(best.absolute_path), message))
    return sorted(set(out))
