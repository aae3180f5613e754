"""The OpenAPI document tells the truth: the statuses each operation declares are the ones the
server answers, every error body is the envelope, no FastAPI 422, the served model ids, and request
schemas that accept exactly what the server accepts (tests/schema_cases.py).

Generic over the routes: every operation in /openapi.json is provoked into each status it could
answer, on real servers (keys required, queue full, model not loaded), and the statuses seen must
be the statuses declared. A new router is covered by being mounted.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from jsonschema import Draft202012Validator

import schemas
from conftest import MODEL, RunningServer
from reference_server import Settings, create_app
from reference_server.backends.local import LocalBackend
from fuzzing import short_generations
from schema_cases import CASES, SERVED

KEY = "sk-openapi"
UNKNOWN_MODEL = "no-such-model"
PATHS = {"chat_completion_request": "/v1/chat/completions", "completion_request": "/v1/completions",
         "embedding_request": "/v1/embeddings", "response_request": "/v1/responses"}


# ---- the document --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def doc(running: RunningServer) -> dict[str, Any]:
    r = httpx.get(f"{running.root}/openapi.json", timeout=30)
    assert r.status_code == 200
    return r.json()


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, ops in doc["paths"].items() for method, op in ops.items()]


def request_schema(doc: dict[str, Any], op: dict[str, Any]) -> dict[str, Any] | None:
    schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if schema is None:
        return None
    return resolve(doc, schema)


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].removeprefix("#/components/schemas/")]
    return schema


def validator(doc: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """JSON Schema 2020-12 (OpenAPI 3.1's dialect), with the document's components for $ref."""
    return Draft202012Validator({**schema, "components": doc["components"]})


def test_no_fastapi_422_anywhere(doc: dict[str, Any]) -> None:
    for path, method, op in operations(doc):
        assert "422" not in op["responses"], f"{method} {path}"
    text = json.dumps(doc)
    assert "HTTPValidationError" not in text and "ValidationError" not in doc["components"]["schemas"]


def test_every_error_declares_the_envelope(doc: dict[str, Any]) -> None:
    """A protocol with its own envelope passes its type to errors.register_envelope (type_=...)."""
    for path, method, op in operations(doc):
        for status, response in op["responses"].items():
            if int(status) < 400:
                continue
            schema = response["content"]["application/json"]["schema"]
            assert schema, f"{method} {path} {status}: no error schema"
            if path.startswith("/v1/") or path == "/health":
                assert resolve(doc, schema)["title"] == "ErrorResponse"
                example = response["content"]["application/json"]["example"]  # shown at /docs
                assert validator(doc, schema).is_valid(example) and example["error"]["message"]
                envelope = resolve(doc, schema)
                assert envelope["required"] == ["error"]
                assert set(resolve(doc, envelope["properties"]["error"])["required"]) == {"message", "type", "param", "code"}
        assert "200" in op["responses"] and op["responses"]["200"]["content"]["application/json"]["schema"], (
            f"{method} {path}: no 200 schema")


def test_error_examples_of_schemas_fit_the_declared_envelope(doc: dict[str, Any]) -> None:
    envelope = validator(doc, {"$ref": "#/components/schemas/ErrorResponse"})
    for example in schemas.load("error")["examples"]:
        assert envelope.is_valid(example)
    assert not envelope.is_valid({"detail": "Not Found"})


def test_docs_page_works_offline(running: RunningServer) -> None:
    """/docs loads Swagger UI from the server itself, not from a CDN (the course runs offline)."""
    page = httpx.get(running.root + "/docs", timeout=30)
    assert page.status_code == 200 and "/openapi.json" in page.text
    scripts = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert scripts and all(not s.startswith(("http:", "https:", "//")) for s in scripts), scripts
    for asset in scripts:
        if not asset.startswith("data:"):
            assert httpx.get(running.root + asset, timeout=30).status_code == 200, asset


def test_model_is_one_of_the_served_ids(doc: dict[str, Any]) -> None:
    seen = 0
    for path, method, op in operations(doc):
        body = request_schema(doc, op)
        if body and "model" in body.get("properties", {}):
            assert body["properties"]["model"]["enum"] == [MODEL], f"{method} {path}"
            assert all(example["model"] == MODEL for example in body["examples"])
            seen += 1
        for parameter in op.get("parameters", []):
            if parameter["name"] == "model_id":
                assert parameter["schema"]["enum"] == [MODEL]
                seen += 1
    assert seen >= 4


def test_limits_and_rules_are_in_the_request_schemas(doc: dict[str, Any], settings: Settings) -> None:
    chat = doc["components"]["schemas"]["CreateChatCompletionRequest"]["properties"]
    assert chat["messages"]["maxItems"] == settings.max_messages
    assert chat["tools"]["anyOf"][0]["maxItems"] == settings.max_tools
    assert chat["n"]["anyOf"][0]["maximum"] == settings.max_n
    assert chat["max_tokens"]["anyOf"][0]["maximum"] == settings.n_ctx
    embedding = doc["components"]["schemas"]["CreateEmbeddingRequest"]["properties"]["input"]
    assert [b.get("maxItems") for b in embedding["anyOf"]] == [None, settings.max_inputs, settings.n_ctx,
                                                               settings.max_inputs]


# ---- declared statuses = the statuses the server answers --------------------------------------------

def example_body(doc: dict[str, Any], op: dict[str, Any]) -> Any:
    """The documented example (what "Try it out" sends at /docs): every body must have one."""
    body = request_schema(doc, op)
    if body is None:
        return None
    assert body.get("examples"), "a request schema without an example: add one to the model (json_schema_extra)"
    return body["examples"][0]


def call(root: str, path: str, method: str, op: dict[str, Any], doc: dict[str, Any], *, model: str = MODEL,
         body: Any = None, raw: bytes | None = None, query: dict[str, str] | None = None,
         created: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
    """``op`` with its documented example; ``created``: the ids of objects made earlier (by path), for
    the path parameters of the routes below them (GET /v1/responses/{response_id})."""
    for parameter in op.get("parameters", []):
        if parameter["in"] == "path":
            ids = [v for k, v in sorted((created or {}).items(), key=lambda kv: -len(kv[0])) if path.startswith(k + "/")]
            value = model if parameter["name"] == "model_id" else ids[0] if ids else "x"
            path = path.replace("{" + parameter["name"] + "}", value)
    if body is None and raw is None:
        body = example_body(doc, op)
        if isinstance(body, dict) and "model" in body:
            body = {**body, "model": model}
    kwargs: dict[str, Any] = {"content": raw} if raw is not None else {"json": body} if body is not None else {}
    return httpx.request(method.upper(), root + path, headers={"content-type": "application/json", **(headers or {})},
                         params=query, timeout=120, **kwargs)


def serve(settings: Settings, backend: Any) -> Iterator[str]:
    """A real server on a free port, ready or not (the model may never load)."""
    app = create_app(settings, backend=backend)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    root = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(root + "/health", timeout=2)
            break
        except httpx.TransportError:
            time.sleep(0.05)
    yield root
    server.should_exit = True
    thread.join(timeout=30)


class NeverLoads(LocalBackend):
    """The real backend, stuck in "loading" (what every request sees in the first seconds)."""

    async def start(self) -> None:
        return None


@pytest.fixture(scope="module")
def provoked(doc: dict[str, Any], running: RunningServer, settings: Settings, engine: LocalBackend,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, set[int]], dict[str, Any]]:
    """Each operation's statuses, provoked on real servers; and the document of the one with keys."""
    seen: dict[str, set[int]] = {f"{m} {p}": set() for p, m, _ in operations(doc)}
    # Deletions last, so that what the other routes read still exists.
    ordered = sorted(operations(doc), key=lambda o: o[1] == "delete")

    def each(root: str, **kwargs: Any) -> Iterator[tuple[str, str, dict[str, Any], httpx.Response]]:
        created: dict[str, str] = {}
        for path, method, op in ordered:
            r = call(root, path, method, op, doc, created=created, **kwargs)
            seen[f"{method} {path}"].add(r.status_code)
            if method == "post" and r.status_code == 200 and isinstance(r.json(), dict) and "id" in r.json():
                created[path] = r.json()["id"]
            yield path, method, op, r

    with short_generations(engine):
        list(each(running.root))                                   # the documented example: 200
        list(each(running.root, model=UNKNOWN_MODEL))              # 404 where a model (or an object) is named
        created: dict[str, str] = {}
        for path, method, op in ordered:
            key = f"{method} {path}"
            if "requestBody" in op:
                for bad in ({}, []):                               # 400
                    seen[key].add(call(running.root, path, method, op, doc, body=bad).status_code)
            oversized = b'{"x": "' + b"x" * settings.max_body_bytes + b'"}'
            seen[key].add(call(running.root, path, method, op, doc, raw=oversized).status_code)
            r = call(running.root, path, method, op, doc, created=created)
            if method == "post" and r.status_code == 200 and "id" in r.json():
                created[path] = r.json()["id"]
            query = {p["name"]: "not-valid" for p in op.get("parameters", []) if p["in"] == "query"}
            if query:                                              # 400 for query values out of their schema
                seen[key].add(call(running.root, path, method, op, doc, query=query, created=created).status_code)
        # 401: the same server with a key required
        for root in serve(settings.model_copy(update={"api_keys": [KEY]}), engine):
            list(each(root))
            keyed_doc = httpx.get(root + "/openapi.json", timeout=30).json()
        # 200 for /v1/usage, and a key's own limits (429): a keys file, one request per minute
        keys = tmp_path_factory.mktemp("keys") / "keys.toml"
        keys.write_text(f'[[keys]]\nname = "fuzz"\nkey = "{KEY}"\nrequests_per_minute = 1\n')
        for root in serve(settings.model_copy(update={"keys_file": keys}), engine):
            list(each(root, headers={"authorization": f"Bearer {KEY}"}))
        # 503: the real backend before its model has loaded
        for root in serve(settings, NeverLoads(settings)):
            list(each(root))
    # 429: the worker busy (held by a job that waits for us), no room in the queue; the serial runner
    busy = LocalBackend(settings.model_copy(update={"max_queue": 0, "n_ctx": 512, "deterministic": True}))
    busy.load()
    for root in serve(busy.settings, busy):
        while busy.queue_depth:  # the app's start-up job (backend.start) still holds the worker
            time.sleep(0.01)
        release = threading.Event()

        async def hold() -> None:
            busy._worker.reserve()
            await busy._worker.submit(lambda: release.wait(120))

        holder = threading.Thread(target=asyncio.run, args=(hold(),))
        holder.start()
        while not busy.queue_depth:
            time.sleep(0.01)
        list(each(root))
        release.set()
        holder.join()
    asyncio.run(busy.close())
    return seen, keyed_doc


def test_declared_statuses_are_the_statuses_the_server_answers(
        doc: dict[str, Any], provoked: tuple[dict[str, set[int]], dict[str, Any]]) -> None:
    """Compared with the document of the server that requires keys: it is the one that can answer 401."""
    observed, keyed_doc = provoked
    for path, method, op in operations(keyed_doc):
        declared = {int(s) for s in op["responses"]}
        assert observed[f"{method} {path}"] == declared, (f"{method} {path}: declared {sorted(declared)}, "
                                                          f"answered {sorted(observed[f'{method} {path}'])}")
        without_keys = {int(s) for s in doc["paths"][path][method]["responses"]}
        assert without_keys == declared - {401}, f"{method} {path}: a server without keys never answers 401"
        assert ("security" in op) == (401 in declared)


def test_a_gateway_declares_what_its_upstreams_make_it_answer() -> None:
    """502 and 504 (no upstream could answer, or none in time: tests/test_gateway.py provokes both)
    are declared where the backend is asked, and only on a gateway."""
    from reference_server.backends.scripted import ScriptedBackend

    def statuses(settings: Settings) -> dict[str, set[int]]:
        doc = create_app(settings, backend=ScriptedBackend([], model=MODEL)).openapi()
        return {f"{m} {p}": {int(s) for s in op["responses"]} for p, ops in doc["paths"].items() for m, op in ops.items()}

    local, gateway = statuses(Settings()), statuses(Settings(upstreams=["http://127.0.0.1:9/v1"]))
    asked = {op for op, codes in local.items() if {429, 503} <= codes and op != "get /health"}
    assert asked == {"post /v1/chat/completions", "post /v1/completions", "post /v1/embeddings", "post /v1/responses"}
    for op, codes in gateway.items():
        assert codes == (local[op] | {502, 504} if op in asked else local[op]), op


def test_the_provocations_cover_every_status(provoked: tuple[dict[str, set[int]], dict[str, Any]]) -> None:
    """The recipe above can fail: each status appears somewhere, 422 and 5xx nowhere."""
    every = set().union(*provoked[0].values())
    assert every == {200, 400, 401, 404, 413, 429, 503}


# ---- request schemas accept what the server accepts ---------------------------------------------------

REQUESTS = ([(f"{name}/examples[{i}]", name, example, True)
             for name in PATHS for i, example in enumerate(schemas.load(name)["examples"])]
            + [(case.id, case.schema, case.instance(), False) for case in CASES if case.schema in PATHS]
            + [(case.id, case.schema, case.instance(), case.accepted) for case in SERVED])


@pytest.mark.parametrize("case", REQUESTS, ids=[r[0] for r in REQUESTS])
def test_declared_request_schema_gives_the_servers_verdict(case: tuple[str, str, Any, bool], doc: dict[str, Any],
                                                           running: RunningServer, engine: LocalBackend) -> None:
    _, name, instance, accepted = case
    op = doc["paths"][PATHS[name]]["post"]
    with short_generations(engine):
        if isinstance(instance, dict) and instance.get("previous_response_id"):  # data, not shape: make it exist
            stored = httpx.post(running.root + "/v1/responses", json={"model": MODEL, "input": "Hi"}, timeout=120)
            instance = {**instance, "previous_response_id": stored.json()["id"]}
        r = httpx.post(running.root + PATHS[name], json=instance, timeout=120)
    assert (r.status_code == 200) == accepted, r.text[:300]
    assert r.status_code in (200, 400, 404), r.text[:300]
    errors = sorted(validator(doc, request_schema(doc, op)).iter_errors(instance), key=str)
    assert (not errors) == accepted, (f"server: {r.status_code}, declared schema: "
                                      f"{errors[0].message[:300] if errors else 'valid'}")
