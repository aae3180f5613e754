"""Shared fixtures: one real model, real uvicorn servers on 127.0.0.1, the official openai client.

Every HTTP response any server test receives passes through ``ContractCheck``, an ASGI
middleware that validates the body (and every SSE chunk) against ``schemas/``. A test that
provokes a response outside the contract fails at teardown, whatever it asserted itself.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from jsonschema.exceptions import best_match

import schemas
from schemas import openai_spec
from reference_server import Settings, create_app
from reference_server.backends.local import LocalBackend as Engine

MODEL = "SmolLM2-135M-Instruct"
N_CTX = 2048
EOG_TOKENS = (0, 2, 4)  # <|endoftext|>, <|im_end|>, <reponame>: banned to force long generations


def pytest_configure(config: pytest.Config) -> None:
    """Tests (and the notebook kernels they start) never write to a learner's checkpoint log."""
    os.environ.setdefault("COURSE_CHECKPOINT_LOG", str(Path(tempfile.mkdtemp()) / "checkpoints.jsonl"))


# ---- the contract hook -----------------------------------------------------------------------

OLLAMA = {"/api/tags": "ollama_model_list", "/api/ps": "ollama_process_list", "/api/show": "ollama_show",
          "/api/version": "ollama_version", "/api/chat": "ollama_chat_response",
          "/api/generate": "ollama_generate_response", "/api/embed": "ollama_embed_response",
          "/api/embeddings": "ollama_embeddings_response"}
LLAMACPP = {"/tokenize": "llamacpp_tokenize", "/detokenize": "llamacpp_detokenize", "/props": "llamacpp_props"}


def error_schema(path: str) -> str:
    """Each protocol's errors have its own envelope (errors.register_envelope)."""
    if path.startswith("/api/"):
        return "ollama_error"
    if path.startswith("/v1/messages"):
        return "anthropic_error"
    if path in LLAMACPP:
        return "llamacpp_error"
    return "error"


def schema_for(method: str, path: str, status: int, stream: bool) -> str | None:
    if status == 499:  # the client had hung up; nobody reads this response
        return None
    if status >= 400:
        return error_schema(path)
    if path == "/v1/models":
        return "model_list"
    if path.startswith("/v1/models/"):
        return "model"
    if path == "/v1/chat/completions":
        return "chat_completion_chunk" if stream else "chat_completion_response"
    if path == "/v1/completions":
        return "completion_chunk" if stream and "completion_chunk" in schemas.names() else "completion_response"
    if path == "/v1/embeddings":
        return "embedding_response"
    if path == "/v1/responses":
        return "response_stream_event" if stream else "response"
    if path.startswith("/v1/responses/"):
        if path.endswith("/input_items"):
            return "response_input_item_list"
        return "response_deleted" if method == "DELETE" else "response"
    if path == "/v1/messages":
        return "anthropic_stream_event" if stream else "anthropic_message"
    if path == "/v1/messages/count_tokens":
        return "anthropic_count_tokens"
    return OLLAMA.get(path) or LLAMACPP.get(path)


def stream_items(body: str, content_type: str) -> list[Any]:
    """The JSON items of a streamed body: SSE ``data:`` lines (named events or not), or NDJSON lines."""
    if content_type.startswith("application/x-ndjson"):
        return [json.loads(line) for line in body.splitlines() if line.strip()]
    items = []
    for frame in body.split("\n\n"):
        data = [line[len("data: "):] for line in frame.split("\n") if line.startswith("data: ")]
        if data and data[0] != "[DONE]":
            items.append(json.loads(data[0]))
    return items


@dataclass
class ContractCheck:
    """ASGI middleware: validates every response body against the JSON Schemas."""

    app: Any
    violations: list[str] = field(default_factory=list)
    responses: int = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state: dict[str, Any] = {"body": b""}

        async def capture(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                headers = dict(message.get("headers", []))
                state["type"] = headers.get(b"content-type", b"").decode()
                state["stream"] = state["type"].startswith(("text/event-stream", "application/x-ndjson"))
            elif message["type"] == "http.response.body":
                state["body"] += message.get("body", b"")
                if not message.get("more_body"):
                    try:
                        self._check(scope, state)
                    except Exception as exc:  # a broken body must fail the test, not the response
                        self.violations.append(f"{scope['path']}: could not check the response: {exc!r}")
            await send(message)

        await self.app(scope, receive, capture)

    def _check(self, scope: dict, state: dict[str, Any]) -> None:
        name = schema_for(scope["method"], scope["path"], state["status"], state["stream"])
        if name is None:
            return
        self.responses += 1
        where = f"{scope['method']} {scope['path']} -> {state['status']}"
        if state["stream"]:
            for item in stream_items(state["body"].decode(), state["type"]):
                self._validate(item, error_schema(scope["path"]) if "error" in item else name, where)
        else:
            self._validate(json.loads(state["body"]), name, where)

    def _validate(self, item: Any, name: str, where: str) -> None:
        for problem in schemas.validate(item, name):
            self.violations.append(f"{where} [{name}] {problem}")
        if name in openai_spec.COMPONENTS and not openai_spec.exempt(item, name):
            # ... and against OpenAI's own component, so our schemas cannot drift looser than the spec
            error = best_match(openai_spec.validators()[name].iter_errors(item))
            if error is not None:
                self.violations.append(f"{where} [OpenAI {openai_spec.COMPONENTS[name]}] "
                                       f"{error.json_path}: {error.message[:300]}")


# ---- servers ---------------------------------------------------------------------------------

@dataclass
class RunningServer:
    base_url: str  # ends in /v1
    root: str
    app: Any
    contract: ContractCheck
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_server(settings: Settings, engine: Engine | None = None) -> RunningServer:
    app = create_app(settings, backend=engine)
    contract = ContractCheck(app)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # so TCP_NODELAY
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(contract, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{root}/health", timeout=2).status_code == 200:
                return RunningServer(f"{root}/v1", root, app, contract, server, thread)
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    server.should_exit = True
    raise RuntimeError("test server did not become ready")


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings(n_ctx=N_CTX, max_queue=16)


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Engine:
    """The model is loaded once for the whole session and shared by every test server."""
    engine = Engine(settings)
    engine.load()
    return engine


@pytest.fixture(scope="session")
def serial_engine(settings: Settings) -> Engine:
    """``--deterministic``: one sequence at a time and no cache, for tests that compare text across
    requests (batch shapes and cached prefixes change floats: see backends/local/batching.py)."""
    engine = Engine(settings.model_copy(update={"deterministic": True, "embeddings": False}))
    engine.load()
    return engine


@pytest.fixture(scope="session")
def running(settings: Settings, engine: Engine) -> Iterator[RunningServer]:
    server = start_server(settings, engine)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def server(running: RunningServer) -> str:
    """Base URL (``http://127.0.0.1:PORT/v1``) of the shared test server."""
    return running.base_url


@pytest.fixture(scope="session")
def serial_running(serial_engine: Engine) -> Iterator[RunningServer]:
    server = start_server(serial_engine.settings, serial_engine)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def serial_client(serial_running: RunningServer) -> openai.OpenAI:
    """A client of a ``--deterministic`` server, for tests that compare text across requests."""
    return openai.OpenAI(base_url=serial_running.base_url, api_key="not-needed", max_retries=0, timeout=120)


@pytest.fixture(autouse=True)
def _contract(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails any test during which a server answered outside the JSON Schemas."""
    names = [name for name, used in (("running", {"running", "server"}), ("serial_running", {"serial_running"}))
             if used & set(request.fixturenames)]
    servers: list[RunningServer] = [request.getfixturevalue(name) for name in names]
    before = [len(s.contract.violations) for s in servers]
    yield
    new = [v for s, n in zip(servers, before) for v in s.contract.violations[n:]]
    assert not new, "responses violated schemas/:\n" + "\n".join(new)


@pytest.fixture(scope="session")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server, api_key="not-needed", max_retries=0, timeout=120)


@pytest.fixture
def aclient(server: str) -> openai.AsyncOpenAI:
    """Per test: an async client's connection pool belongs to the event loop that used it."""
    return openai.AsyncOpenAI(base_url=server, api_key="not-needed", max_retries=0, timeout=120)


@pytest.fixture
def http(running: RunningServer) -> Iterator[httpx.Client]:
    """Raw HTTP against the server root, for what the SDK hides (status codes, SSE bytes)."""
    with httpx.Client(base_url=running.root, timeout=120) as c:
        yield c


def sse_events(body: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order (``[DONE]`` included), after any ``event:`` line."""
    return [line[len("data: "):] for frame in body.split("\n\n") for line in frame.split("\n")
            if line.startswith("data: ")]
