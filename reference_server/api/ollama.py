"""Ollama's native API under /api: what the ``ollama`` clients, Open WebUI and LangChain's ChatOllama call.

Each route translates its request into the OpenAI request the backend takes
(protocol_ollama.py), calls the same backend as /v1, and renders the events as Ollama does
(serving/ollama.py). Errors on /api/* are Ollama's ``{"error": "..."}``, with its status
codes (400, 404 for an unknown model, 429, 503), whatever raised them.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from .. import errors
from ..backends.base import Backend
from ..protocol_ollama import ChatRequest, EmbeddingsRequest, EmbedRequest, GenerateRequest, ShowRequest
from ..serving import ollama
from .deps import BackendDep, introspective, started, unless_disconnected
from ..serving.types import OllamaError

router = APIRouter(tags=["ollama"])

# The first Ollama release with everything served here (tool-call ids came in 0.12.10,
# logprobs in 0.12.11): clients turn features on by version, so an older number would hide them.
OLLAMA_VERSION = "0.12.11"


# --8<-- [start:envelope]
def ollama_error(status: int, message: str, type: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": message}


errors.register_envelope("/api/", ollama_error, OllamaError)
# --8<-- [end:envelope]


# --8<-- [start:served_model]
def served_model(backend: Backend, requested: str) -> str:
    """The model id for an Ollama name: a name's tag defaults to ``latest``, so both spellings work."""
    name = requested.removesuffix(":latest")
    if any(card.id == name for card in backend.models()):
        return name
    raise errors.APIError(404, f"model '{requested}' not found", param="model", code="model_not_found")
# --8<-- [end:served_model]


@router.get("/version")
async def version() -> dict[str, str]:
    return {"version": OLLAMA_VERSION}


@router.get("/tags")
async def list_models(backend: BackendDep) -> dict[str, Any]:
    backend.require_ready()
    return {"models": [ollama.model_entry(introspective(backend, "Listing models in Ollama's form").info())]}


@router.get("/ps")
async def running_models(backend: BackendDep) -> dict[str, Any]:
    backend.require_ready()
    return {"models": [ollama.running(introspective(backend, "Listing models in Ollama's form").info())]}


@router.post("/show")
async def show_model(body: ShowRequest, backend: BackendDep) -> dict[str, Any]:
    served_model(backend, body.model)
    return ollama.show(introspective(backend, "/api/show").info())


# --8<-- [start:chat]
@router.post("/chat", response_model=None)
async def chat(body: ChatRequest, request: Request, backend: BackendDep):
    reply = ollama.Reply(body.model, "chat", time.perf_counter(), bool(body.logprobs))
    model_id = served_model(backend, body.model)
    if not body.messages:
        backend.require_ready()
        return reply.loaded()
    run = backend.chat(body.to_openai(model_id))  # validated and queued: a full queue is a 429 here
    if gone := await started(request, run):  # a gateway: an upstream has sent its first token
        return gone
    if body.stream:
        return ollama.ndjson_response(ollama.stream_lines(run, reply))
    return await unless_disconnected(request, ollama.collect(run, reply))
# --8<-- [end:chat]


@router.post("/generate", response_model=None)
async def generate(body: GenerateRequest, request: Request, backend: BackendDep):
    reply = ollama.Reply(body.model, "generate", time.perf_counter(), bool(body.logprobs))
    model_id = served_model(backend, body.model)
    backend.require_ready()
    if not body.prompt:
        return reply.loaded()
    if body.raw:  # no template: the prompt's special tokens are the model's own
        tokens = introspective(backend, "raw=true").tokenize(body.prompt, special=True, add_special=True)
        run = backend.complete(body.to_openai_raw(model_id, tokens))[0]
    else:
        run = backend.chat(body.to_openai(model_id))
    if gone := await started(request, run):
        return gone
    if body.stream:
        return ollama.ndjson_response(ollama.stream_lines(run, reply))
    return await unless_disconnected(request, ollama.collect(run, reply))


# --8<-- [start:embed]
@router.post("/embed")
async def embed(body: EmbedRequest, backend: BackendDep) -> dict[str, Any]:
    started = time.perf_counter()
    model_id = served_model(backend, body.model)
    backend.require_ready()
    inputs = [body.input] if isinstance(body.input, str) else body.input
    if body.truncate and callable(getattr(backend, "tokenize", None)):  # a gateway leaves it to the upstream
        inputs = [_truncated(backend, text) for text in inputs]
    result = await backend.embed(body.to_openai(model_id, inputs))
    return {"model": body.model, "embeddings": result.vectors, "total_duration": ollama.ns(time.perf_counter() - started),
            "load_duration": 0, "prompt_eval_count": result.prompt_tokens}
# --8<-- [end:embed]


def _truncated(backend: Backend, text: str) -> str:
    """Ollama's default: an input longer than the context window loses its end, instead of a 400."""
    limit = backend.info().n_ctx - 1  # room for a BOS token
    tokens = backend.tokenize(text, special=False, add_special=False)
    if len(tokens) <= limit:
        return text
    return b"".join(backend.token_bytes(t) for t in tokens[:limit]).decode("utf-8", errors="ignore")


@router.post("/embeddings")
async def embeddings(body: EmbeddingsRequest, backend: BackendDep) -> dict[str, Any]:
    """The older endpoint: one prompt, one vector (an empty prompt gets an empty one, as from Ollama)."""
    model_id = served_model(backend, body.model)
    if not body.prompt:
        return {"embedding": []}
    result = await backend.embed(EmbedRequest(model=body.model, input=body.prompt).to_openai(model_id, [body.prompt]))
    return {"embedding": result.vectors[0]}
