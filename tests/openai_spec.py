"""OpenAI's official spec as JSON Schema validators, for the schema tests and the live contract hook.

The spec enters through ``schema_cases/openai_spec_subset.json``: the components of openapi.yaml that
our schemas correspond to and everything they reference, copied unmodified.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SUBSET = Path(__file__).parent / "schema_cases" / "openai_spec_subset.json"
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

# Our schemas the spec gives no component for, and why (their bodies are still validated against ours).
NO_COMPONENT = {
    "response_deleted": "The spec's DELETE /responses/{response_id} declares a 200 without a body schema; "
                        "its example, {id, object: 'response', deleted: true}, is what response_deleted follows.",
}


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




@cache
def validators() -> dict[str, Draft202012Validator]:
    """The spec's validators, built once per process."""
    return spec_validators(nullable_as_json_schema(json.loads(SUBSET.read_text(encoding="utf-8"))))
