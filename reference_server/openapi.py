"""The OpenAPI document (``/openapi.json``, shown at ``/docs``), made to say what the server does.

FastAPI generates it from the routes and the request models. Left alone, it declares a 422 the
server never sends, no error body, no response schema for routes that return plain dicts
(``response_model=None``: no validation cost per response), and any string as ``model``.
``document`` starts from FastAPI's and corrects it, once, when it is first asked for:

- Statuses. Each route declares those it answers itself (``responses(...)`` in its decorator:
  404, and whether it asks the backend); those a kind of route shares are added here, as the
  settings make them: 400 and 413 where a body is read, 401 where a key is required, 429 and
  503 from the backend (a gateway's 502 and 504), a key's own 429. No 422. Every error has its
  protocol's envelope.
- 200s: the TypedDicts of serving/types.py, or JSON Schemas of schemas/; for a stream, the
  schema of each event.
- Requests: ``model`` is one of the served ids (known from the settings before the model loads),
  the limits (request_limits.py) and the context window bound lists and counts, and the
  refusals that JSON Schema can say are said (``_local_backend_rules``, ``_responses_api_rules``).
  What it cannot say (the vocabulary, the context window in tokens, tool definitions) is
  written on the field.

tests/test_openapi.py checks the result against the server, and tests/test_fuzz.py fuzzes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import TypeAdapter

from . import errors, request_limits
from .api.auth import require_api_key
from .serving.types import ErrorResponse
from .settings import Settings

REF = "#/components/schemas/"

STATUS = {
    200: "OK.",
    400: "Invalid request: the error's `param` names the field at fault.",
    401: "Missing or wrong API key.",
    404: "Not found: an unknown model (`model` must be one of the served ids), or an object that does not exist.",
    413: "Request body larger than the server accepts (setting max_body_bytes).",
    429: "Too many requests: the queue for the model is full (setting max_queue), or a key's limits are reached; "
         "retry after Retry-After seconds.",
    502: "A gateway: no upstream could answer.",
    503: "The model is loading or failed to load, or the server is shutting down; retry after Retry-After.",
    504: "A gateway: no upstream sent a first token in time.",
}

DESCRIPTION = """An OpenAI-compatible API served by a local llama.cpp model.

Every error is OpenAI's envelope, `{"error": {"message", "type", "param", "code"}}`, with one of the
statuses listed on its operation. The request schemas say what the server enforces: the served model
ids, the limits of this server, the rules between fields. What JSON Schema cannot say (the context
window in tokens, the model's vocabulary, whether a tool's JSON Schema can be enforced) is written on
the field, and refused with a 400 that names it."""

_TYPES: dict[str, Any] = {}  # types named by routes, resolved when the document is built


# --8<-- [start:responses]
def responses(ok: Any = None, *, stream: Any = None, done: bool = True, errors: Iterable[int] = (),
              backend: bool = False) -> dict[int | str, Any]:
    """A route decorator's ``responses=``: the 200 body's type, the event type of its stream (which
    ends with ``data: [DONE]`` unless ``done`` is False), and the error statuses the route answers
    itself; ``backend``: also those the configured backend answers (429, 503; a gateway's 502, 504).
    A type is a TypedDict or a model; a string names a schema of schemas/ (``"response"``).
    ``document`` adds the statuses routes share, and every error's body."""
    out: dict[int | str, Any] = {code: {"description": STATUS[code]} for code in errors}
    if ok is not None:
        out[200] = {"description": STATUS[200]}
        if isinstance(ok, str):
            out[200]["content"] = {"application/json": {"x-schema": _named(ok)}}
        else:
            out[200]["model"] = ok
        if stream is not None:  # with "stream": true the same route answers Server-Sent Events
            out[200].setdefault("content", {})["text/event-stream"] = {"x-event-type": _named(stream), "x-done": done}
        if backend:
            out[200]["x-backend"] = True
    return out
# --8<-- [end:responses]


def _named(type_: Any) -> str:
    """A name that survives FastAPI's copy of ``responses`` into the document (a type would not)."""
    name = type_ if isinstance(type_, str) else type_.__name__
    _TYPES[name] = type_
    return name


def install(app: FastAPI, settings: Settings, model_ids: Callable[[], list[str]]) -> None:
    """Serves ``document`` as the app's OpenAPI document, and /docs from files installed with the server.

    The document is built when first asked for, and again only if the served ids have changed:
    the local backend knows its one id from the settings, before the model loads; a gateway
    learns its ids from its upstreams.
    """
    built_for: list[list[str]] = []

    def openapi() -> dict[str, Any]:
        ids = model_ids()
        if app.openapi_schema is None or built_for != [ids]:
            app.openapi_schema, built_for[:] = document(app, settings, ids), [ids]
        return app.openapi_schema
    app.openapi = openapi  # type: ignore[method-assign]
    _offline_docs(app)


DOCS_ASSETS = "/docs/assets"


def _offline_docs(app: FastAPI) -> None:
    """FastAPI's /docs page loads Swagger UI from a CDN, and shows nothing offline, where this course
    runs. With Swagger UI installed (swagger-ui-bundle-v2), /docs uses the installed files instead."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return
    from fastapi.openapi.docs import get_swagger_ui_html
    from starlette.requests import Request
    from starlette.responses import HTMLResponse
    from starlette.staticfiles import StaticFiles

    if not app.docs_url or not app.openapi_url:
        return

    async def docs(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css", swagger_favicon_url="data:,")

    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != app.docs_url]
    app.add_route(app.docs_url, docs, include_in_schema=False)
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")


# --8<-- [start:document]
def document(app: FastAPI, settings: Settings, model_ids: list[str]) -> dict[str, Any]:
    from .limits import enforce_limits  # per-key limits; limits.py's router imports this module
    doc = get_openapi(title=app.title, version=app.version, openapi_version=app.openapi_version,
                      description=DESCRIPTION, routes=app.routes)
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 body
        components.pop(unused, None)
    keyed = bool(settings.api_keys or settings.keys_file)
    for route in iter_route_contexts(app.routes):  # each route with its router's prefix and dependencies
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        for method in route.methods:
            operation = doc["paths"][route.path_format][method.lower()]
            _statuses(operation, method, settings, keyed and _depends_on(route.dependant, require_api_key),
                      bool(settings.keys_file) and method == "POST" and _depends_on(route.dependant, enforce_limits))
            _bodies(operation, route.path_format, components, settings)
            _served_models(operation, components, model_ids)
    request_limits.apply_to_schema(components, settings)
    _context_window(components, settings.n_ctx)
    _local_backend_rules(components)
    _responses_api_rules(components)
    if keyed:
        doc["components"]["securitySchemes"] = {"apiKey": {
            "type": "http", "scheme": "bearer", "description": "One of the server's --api-key values."}}
    return doc
# --8<-- [end:document]


def _depends_on(dependant: Dependant, call: Any) -> bool:  # mounted with Depends(call)
    return any(d.call is call or _depends_on(d, call) for d in dependant.dependencies)


def backend_statuses(settings: Settings) -> set[int]:
    """What a backend answers besides 200: a full queue, a model not loaded; a gateway's upstreams
    failing or slow (backends/upstream/)."""
    return {429, 503} | ({502, 504} if settings.upstreams else set())


def _statuses(operation: dict[str, Any], method: str, settings: Settings, keyed: bool, rate_limited: bool) -> None:
    found = operation["responses"]
    found.pop("422", None)
    shared: list[int] = []
    if found.get("200", {}).pop("x-backend", False):
        shared += sorted(backend_statuses(settings))
    if rate_limited:  # per-key limits of the keys file (limits.py)
        shared.append(429)
    if "requestBody" in operation:
        shared.append(400)
        if method in request_limits.LIMITED_METHODS:
            shared.append(413)
    if keyed:
        shared.append(401)
        operation["security"] = [{"apiKey": []}]
    for code in shared:
        found.setdefault(str(code), {"description": STATUS[code]})
    operation["responses"] = dict(sorted(found.items()))


def _bodies(operation: dict[str, Any], path: str, components: dict[str, Any], settings: Settings) -> None:
    for code, response in operation["responses"].items():
        if int(code) >= 400:
            envelope = errors.envelope_type(path)
            response["content"] = {"application/json": {"schema": _ref(components, envelope) if envelope else {}}}
            if envelope is ErrorResponse:
                response["content"]["application/json"]["example"] = _error_example(int(code), settings)
        for content in response.get("content", {}).values():
            if "x-schema" in content:
                content["schema"] = _ref(components, _TYPES[content.pop("x-schema")])
            name = content.pop("x-event-type", None)
            if name is not None:
                done = content.pop("x-done", True)
                error = errors.envelope_type(path)
                content.update(_event_stream(_ref(components, _TYPES[name]),
                                             _ref(components, error) if done and error else None, done))


def _error_example(status: int, settings: Settings) -> dict[str, Any]:
    """What the server really sends with ``status`` (one of its messages for it), shown at /docs."""
    exc = {400: errors.invalid_request("Invalid value for 'temperature': Input should be less than or equal to 2 "
                                       "(got 2.5).", param="temperature"),
           401: errors.APIError(401, "Incorrect API key provided.", code="invalid_api_key"),
           404: errors.model_not_found("gpt-4o"),
           413: errors.request_too_large(settings.max_body_bytes, 2 * settings.max_body_bytes),
           429: errors.queue_full(settings.max_queue),
           502: errors.APIError(502, "No upstream could answer (upstream 1: connection refused).",
                                type="server_error", code="upstream_error"),
           503: errors.model_loading(),
           504: errors.APIError(504, "No upstream sent a first token in time (upstream 1: no token in 120 s).",
                                type="server_error", code="upstream_timeout")}[status]
    return exc.body()


def _event_stream(event: dict[str, Any], error: dict[str, Any] | None, done: bool) -> dict[str, Any]:
    """Server-Sent Events: each ``data`` is an event's JSON, an error's JSON, or ``[DONE]`` last.

    ``itemSchema`` is how OpenAPI 3.2 (and FastAPI) describe one event of a stream; a ``schema``
    beside it would describe the whole stream (as an array), so there is none. A protocol whose
    errors are events of its own (the Responses API's ``error``) has them in ``event``.
    """
    json_data = {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": {"anyOf": [event, error]} if error else event}
    if not done:
        return {"itemSchema": {"type": "object", "required": ["data"], "properties": {"data": json_data},
                               "description": "One event: its name on the `event:` line, its JSON on `data:`."}}
    return {"itemSchema": {"type": "object", "required": ["data"],
                           "properties": {"data": {"anyOf": [json_data, {"const": "[DONE]"}]}},
                           "description": "One event: `data: {chunk}`; `data: {\"error\": ...}` if generation "
                                          "fails once the stream has begun; `data: [DONE]` last."}}


def _ref(components: dict[str, Any], type_: Any) -> dict[str, Any]:
    """A $ref to ``type_``'s schema, generated now (not per response) into ``components``."""
    if isinstance(type_, str):
        return _schema_file(components, type_)
    schema = TypeAdapter(type_).json_schema(ref_template=REF + "{model}", mode="serialization")
    for name, definition in schema.pop("$defs", {}).items():
        components.setdefault(name, definition)
    components.setdefault(type_.__name__, schema)
    return {"$ref": REF + type_.__name__}


def _schema_file(components: dict[str, Any], name: str) -> dict[str, Any]:
    """schemas/<name>.schema.json as a component, its $defs and the files it refers to beside it.

    "#/$defs/x" in response.schema.json becomes the component Response_x, "common.schema.json#/$defs/y"
    Common_y. Without the schemas package (a copy of the server alone), any object.
    """
    key = "".join(part.capitalize() for part in name.split("_"))
    if key in components:
        return {"$ref": REF + key}
    try:
        import schemas
        schema = schemas.load(name)
    except (ImportError, ValueError):
        return {"type": "object"}
    components[key] = {}  # claimed: a file that refers back to this one finds it

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: rewrite(v) for k, v in node.items() if k not in ("$schema", "$id", "examples", "$defs")}
            ref = node.get("$ref")
            if isinstance(ref, str):
                target, _, pointer = ref.partition("#")
                owner = key if not target else _schema_file(components, target.removesuffix(".schema.json"))["$ref"]
                owner = owner.removeprefix(REF)
                out["$ref"] = REF + (f"{owner}_{pointer.removeprefix('/$defs/')}" if pointer else owner)
            return out
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    for def_name, definition in schema.get("$defs", {}).items():
        components[f"{key}_{def_name}"] = rewrite(definition)
    components[key] = rewrite(schema)
    return {"$ref": REF + key}


def _body_schema(operation: dict[str, Any], components: dict[str, Any]) -> dict[str, Any] | None:
    schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if schema and "$ref" in schema:
        return components.get(schema["$ref"].removeprefix(REF))
    return schema


def _served_models(operation: dict[str, Any], components: dict[str, Any], model_ids: list[str]) -> None:
    """Unknown ids are a 404 (api/deps.py); the document lists the known ones."""
    body = _body_schema(operation, components)
    model = (body or {}).get("properties", {}).get("model")
    if model is not None and model.get("type") == "string" and model_ids:  # none yet: a gateway's upstreams are down
        model["enum"] = list(model_ids)
        for example in body.get("examples", []):  # "Try it out" at /docs sends a request that works
            if isinstance(example, dict) and "model" in example and model_ids:
                example["model"] = model_ids[0]
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "path" and parameter["name"] == "model_id" and model_ids:
            parameter["schema"]["enum"] = list(model_ids)


def _branches(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [schema, *schema.get("anyOf", ())]


def _token_list(branch: dict[str, Any]) -> bool:
    return branch.get("type") == "array" and branch.get("items", {}).get("type") == "integer"


def _context_window(components: dict[str, Any], n_ctx: int) -> None:
    """Bounds the context window sets whatever the prompt: more is always a 400."""
    for name in ("CreateChatCompletionRequest", "CreateCompletionRequest", "CreateEmbeddingRequest"):
        properties = components.get(name, {}).get("properties", {})
        for field in ("max_tokens", "max_completion_tokens"):
            for branch in _branches(properties.get(field, {})):
                if branch.get("type") == "integer":
                    branch["maximum"] = n_ctx
        for field in ("prompt", "input"):
            for branch in _branches(properties.get(field, {})):
                for tokens in (branch, branch.get("items", {})):
                    if _token_list(tokens):
                        tokens["maxItems"] = n_ctx


# --8<-- [start:local_backend_rules]
def _local_backend_rules(c: dict[str, Any]) -> None:
    """What the local backend (backends/local/) refuses with a 400 though the request models admit it.

    Said in JSON Schema where it can be, in words on the field where it cannot.
    """
    chat, completion, embedding = (c.get(n) for n in (
        "CreateChatCompletionRequest", "CreateCompletionRequest", "CreateEmbeddingRequest"))
    if chat:
        p = chat["properties"]
        for name in ("audio", "functions", "function_call"):  # prompts.refuse_unservable
            p[name] = {"type": "null", "description": "Not supported by this server: any value is a 400."}
        _drop_branch(p["tool_choice"], "ChatCompletionNamedToolChoiceCustom", c)  # tools.py: no custom tools
        chat.setdefault("allOf", []).append({"anyOf": [  # tools.py: tool_choice needs tools
            {"properties": {"tool_choice": {"enum": [None, "none"]}}},
            {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}}]})
        _say(p["tools"], "Function names must differ. Each function's `parameters` must be a JSON Schema the "
                         "server can enforce with a grammar; a 400 names what it cannot.")
        _say(p["logprobs"], "Not with `tools`, unless `tool_choice` is 'none' or the last message is a tool "
                            "result.")
        _say(p["logit_bias"], "Keys are token ids of the model's vocabulary.")
        _say(p["messages"], "The rendered prompt plus max_tokens must fit the context window (n_ctx tokens).")
        parameters = c["FunctionDefinition"]["properties"]["parameters"]
        for branch in _branches(parameters):
            if branch.get("type") == "object":  # tools.py: a schema of type object
                branch.update(required=["type"], properties={"type": {"const": "object"}})
        _say(c["ToolMessage"]["properties"]["tool_call_id"], "The id of a tool call in an earlier assistant message.")
        _say(c["ChatCompletionNamedToolChoice"], "Must name a function in `tools`.")
        _say(c["JsonSchemaFormat"]["properties"]["schema"], "A JSON Schema the server can enforce with a grammar.")
    if completion:
        p = completion["properties"]
        p["suffix"] = {"anyOf": [{"type": "string", "maxLength": 0}, {"type": "null"}],
                       "description": "Fill-in-the-middle is not supported: empty or null only."}
        completion.setdefault("allOf", []).extend([
            {"anyOf": [{"properties": {"best_of": {"enum": [None, 0, 1]}}},  # backend.py: best_of is n
                       *({"required": ["best_of", "n"], "properties": {"best_of": {"const": k}, "n": {"const": k}}}
                         for k in range(2, 21))]},
            {"anyOf": [{"properties": {"stream": {"enum": [False, None]}}},  # one prompt per stream
                       {"properties": {"prompt": {"anyOf": [{"type": "string"}, {"type": "array", "maxItems": 1},
                                                            {"type": "array", "items": {"type": "integer"}}]}}}]}])
        _non_empty(p["prompt"], strings=False)
        _say(p["prompt"], "Token ids must be in the model's vocabulary; the prompt plus max_tokens must fit the "
                          "context window (n_ctx tokens).")
        _say(p["logit_bias"], "Keys are token ids of the model's vocabulary.")
    if embedding:
        p = embedding["properties"]
        _non_empty(p["input"], strings=True)
        _say(p["input"], "Each input must fit the context window (n_ctx tokens); token ids must be in the "
                         "model's vocabulary.")
        _say(p["dimensions"], "The model's embedding size, or omitted.")
# --8<-- [end:local_backend_rules]


def _responses_api_rules(c: dict[str, Any]) -> None:
    """What protocol_responses.py refuses with a reason of its own, in JSON Schema.

    Its ``_Refused*`` models exist only to say why a type is not served: they leave the unions.
    Fields of the spec that are not servable are admitted at their "off" values only.
    """
    for name in [n for n in c if n.startswith("_Refused")]:
        for schema in c.values():
            _drop_branch_everywhere(schema, name)
        del c[name]
    request = c.get("CreateResponse")
    if request is None:
        return
    from .protocol_responses import LOGPROBS

    p, null = request["properties"], {"type": "null"}
    for name in ("prompt", "conversation", "context_management", "moderation", "prompt_cache_options"):
        p[name] = {**null, "description": "Not supported by this server: any value is a 400."}
    p["background"] = {"enum": [False, None]}
    p["reasoning"] = {"anyOf": [{"type": "object", "additionalProperties": null}, null],
                      "description": "The served model does not reason: only null values."}
    p["truncation"] = {"enum": ["disabled", None]}
    p["service_tier"] = {"enum": ["auto", "default", None]}
    p["prompt_cache_retention"] = {"enum": ["in_memory", None]}
    for branch in _branches(p["include"]):
        if branch.get("type") == "array":
            branch["items"] = {"const": LOGPROBS}
    request.setdefault("allOf", []).extend([
        {"anyOf": [{"properties": {"top_logprobs": null}},
                   {"required": ["include"], "properties": {"include": {"type": "array", "contains": {"const": LOGPROBS}}}}]},
        {"anyOf": [{"properties": {"stream_options": null}},
                   {"required": ["stream"], "properties": {"stream": {"const": True}}}]}])
    request["allOf"].append({"anyOf": [  # as in chat (tools.py): tool_choice needs tools
        {"properties": {"tool_choice": {"enum": [None, "none"]}}},
        {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}}]})
    _say(p["input"], "A 'function_call_output' answers a 'function_call' earlier in the conversation (its call_id).")
    _say(p["previous_response_id"], "The id of a stored response.")
    if "ResponseTextParam" in c:
        c["ResponseTextParam"]["properties"]["verbosity"] = {"enum": ["medium", None]}
    if "FunctionTool" in c:
        tool = c["FunctionTool"]["properties"]
        tool["defer_loading"] = {"enum": [False, None]}
        for branch in _branches(tool["parameters"]):
            if branch.get("type") == "object":  # as in chat (tools.py): a schema of type object
                branch.update(required=["type"], properties={"type": {"const": "object"}})
        for branch in _branches(tool["allowed_callers"]):
            if branch.get("type") == "array":
                branch["items"] = {"const": "direct"}
    if "AllowedTool" in c:
        c["AllowedTool"]["properties"]["type"] = {"const": "function"}
    if "Message" in c and "InputTextContent" in c:  # only the assistant's own words are output_text or refusal
        c["Message"].setdefault("allOf", []).append({"anyOf": [
            {"properties": {"role": {"const": "assistant"}}},
            {"properties": {"content": {"anyOf": [{"type": "string"},
                                                  {"type": "array", "items": {"$ref": REF + "InputTextContent"}}]}}}]})


def _drop_branch_everywhere(node: Any, name: str) -> None:
    if isinstance(node, dict):
        for key in ("oneOf", "anyOf"):
            if isinstance(node.get(key), list):
                node[key] = [b for b in node[key] if not (isinstance(b, dict) and b.get("$ref") == REF + name)]
        mapping = node.get("discriminator", {}).get("mapping", {}) if isinstance(node.get("discriminator"), dict) else {}
        for tag in [t for t, ref in mapping.items() if ref == REF + name]:
            del mapping[tag]
        for value in node.values():
            _drop_branch_everywhere(value, name)
    elif isinstance(node, list):
        for value in node:
            _drop_branch_everywhere(value, name)


def _non_empty(schema: dict[str, Any], *, strings: bool) -> None:
    """prompts.py refuses empty inputs: no empty list or token list (nor string, if ``strings``);
    token ids start at 0."""
    for branch in _branches(schema):
        if branch.get("type") == "string" and strings:
            branch["minLength"] = 1
        elif branch.get("type") == "array":
            branch.setdefault("minItems", 1)
            inner = branch.get("items", {})
            if inner.get("type") == "string" and strings:
                inner["minLength"] = 1
            elif inner.get("type") == "integer":
                inner["minimum"] = 0
            elif _token_list(inner):
                inner.setdefault("minItems", 1)
                inner["items"]["minimum"] = 0


def _say(schema: dict[str, Any], words: str) -> None:
    schema["description"] = f"{schema['description']} {words}" if schema.get("description") else words


def _drop_branch(schema: dict[str, Any], name: str, components: dict[str, Any]) -> None:
    for branch in _branches(schema):
        if "oneOf" in branch:
            branch["oneOf"] = [b for b in branch["oneOf"] if b.get("$ref") != REF + name]
            mapping = branch.get("discriminator", {}).get("mapping", {})
            for tag in [t for t, ref in mapping.items() if ref == REF + name]:
                del mapping[tag]
    components.pop(name, None)
