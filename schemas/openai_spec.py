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
    "response_request": "CreateResponse",
    "response": "Response",
    "response_stream_event": "ResponseStreamEvent",
    "response_input_item_list": "ResponseItemList",
}

# Our schemas the spec gives no component for: why, and the spec's example body they follow instead
# (the operation, and the example copied from its x-oaiMeta). Live bodies are validated against ours.
NO_COMPONENT = {
    "response_deleted": {
        "reason": "DELETE /responses/{response_id} declares a 200 without a body schema, only an example.",
        "operation": ("/responses/{response_id}", "delete"),
        "example": {"id": "resp_6786a1bec27481909a17d673315b29f6", "object": "response", "deleted": True},
    },
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
    ``x-*`` need nothing: a JSON Schema validator ignores unknown keywords. ``format`` is an annotation.
    ``discriminator`` is the subject of ``discriminated_as_any_of``.
    """
    if isinstance(node, list):
        return [nullable_as_json_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: nullable_as_json_schema(v) for k, v in node.items() if not (k == "nullable" and isinstance(v, bool))}
    return {"anyOf": [out, {"type": "null"}]} if node.get("nullable") is True else out


def discriminated_as_any_of(node: Any) -> Any:
    """In OpenAPI, a ``oneOf`` with a ``discriminator`` picks its branch by that property; JSON Schema's
    ``oneOf`` instead refuses a value that two branches accept. The Responses components overlap: a
    message item with input_text parts is both an EasyInputMessage and an InputMessage (both say type
    "message"), so a literal ``oneOf`` would refuse the most ordinary input. Such a ``oneOf`` is read as
    ``anyOf``; a ``oneOf`` without a discriminator keeps its meaning.
    """
    if isinstance(node, list):
        return [discriminated_as_any_of(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: discriminated_as_any_of(v) for k, v in node.items()}
    if "discriminator" in node and "oneOf" in node:
        out["anyOf"] = out.pop("oneOf")
    return out


def as_json_schema(document: dict[str, Any]) -> dict[str, Any]:
    """The spec's components as a JSON Schema validator must read them (both rewrites above)."""
    return discriminated_as_any_of(nullable_as_json_schema(document))


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
    return spec_validators(as_json_schema(subset()))


def exempt(instance: Any, name: str) -> bool:
    """Whether the spec cannot judge ``instance`` fairly (see SPEC_LOOSER), or has no component for it."""
    return name in SPEC_LOOSER or name in NO_COMPONENT or (
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
