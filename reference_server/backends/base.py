"""The two seams, and the events that cross them.

``Backend`` is request-level: the HTTP layer (api/) hands it a validated OpenAI request and
gets back a ``Run``, an async stream of events plus what a response needs. The local llama.cpp
backend (backends/local/) implements it; so do the scripted fake (backends/scripted.py) and,
later, an upstream gateway. Nothing above this seam knows llama.cpp exists.

``Runner`` is token-level and lives inside the local backend: it takes token ids and
``SamplingParams`` and streams the same events. The serial runner decodes one sequence at a
time; a batching runner can decode many per step. Both share the per-sequence bookkeeping in
backends/local/sequence.py.

Events are plain dataclasses, rendered into each wire format by serving/.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..protocol import CreateChatCompletionRequest, CreateCompletionRequest, CreateEmbeddingRequest
    from ..sampling import SamplingParams


# --8<-- [start:events]
@dataclass
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list["TokenLogprob"] = field(default_factory=list)


@dataclass
class TextDelta:
    """New text for choice ``index``; ``logprobs`` covers the tokens sampled since the last delta."""

    index: int
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class ToolCallDelta:
    """Part of tool call number ``call`` of choice ``index``: first its id and name, then arguments."""

    index: int
    call: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class ChoiceDone:
    index: int
    finish_reason: str  # "stop" | "length" | "tool_calls"
    completion_tokens: int
    stop_sequence: str | None = None  # the client's stop string that ended it (Anthropic reports it)


@dataclass
class Timings:
    """Once per generation, before it ends: what it cost (Ollama and llama.cpp report these)."""

    prompt_tokens: int
    cached_tokens: int = 0   # prompt tokens whose KV cells were reused, not evaluated
    prompt_ms: float = 0.0
    decode_ms: float = 0.0


Event = TextDelta | ToolCallDelta | ChoiceDone | Timings
# --8<-- [end:events]


# --8<-- [start:generation_handle]
class Generation:
    """A queued generation: an async iterator of events; ``aclose()`` cancels it.

    The producer (a runner's thread) calls ``emit`` with events, an exception to hand to the
    request, or None at the end. The consumer iterates. ``cancel`` is set when the consumer
    goes away, and the producer checks it after every token.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._queue: asyncio.Queue[Event | BaseException | None] = asyncio.Queue()
        self.cancel = threading.Event()
        queue = self._queue

        def emit(item: Event | BaseException | None) -> None:
            # Called from the worker thread. Holds the queue, not the handle, so dropping the
            # handle lets it be collected (and cancel) while the job still runs.
            if not loop.is_closed():
                loop.call_soon_threadsafe(queue.put_nowait, item)

        self.emit = emit

    def __aiter__(self) -> "Generation":
        return self

    async def __anext__(self) -> Event:
        try:
            item = await self._queue.get()
        except BaseException:  # cancelled while waiting: the client is gone
            self.cancel.set()
            raise
        if item is None:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item

    async def aclose(self) -> None:
        self.cancel.set()

    def __del__(self) -> None:
        self.cancel.set()
# --8<-- [end:generation_handle]


class Events(Protocol):
    """What a Run's events are: an async iterator that can be closed early (cancelling the work)."""

    def __aiter__(self) -> AsyncIterator[Event]: ...
    async def aclose(self) -> None: ...


# --8<-- [start:run]
@dataclass
class Run:
    """One prompt's generation, started (queued) by a backend, and what its response needs.

    Not frozen: an upstream (backends/upstream/) learns ``prompt_tokens`` only from the usage
    at the end of its stream, and sets it then; serving/ reads it after the last event.
    """

    events: Events
    prompt_tokens: int
    n: int = 1
    calls_only: bool = False  # the reply can only be tool calls: content is null, not ""
    echo: str = ""            # /v1/completions with echo: the prompt text, sent before the output


@dataclass(frozen=True)
class Embedded:
    vectors: list[list[float]]
    prompt_tokens: int


@dataclass(frozen=True)
class ModelCard:
    id: str
    created: int
    owned_by: str = "local"
# --8<-- [end:run]


# --8<-- [start:start]
async def start(run: Run) -> None:
    """Waits until ``run`` has really begun, for the backends whose start can fail after ``chat``.

    The local backend queues in ``chat`` itself. An upstream gateway (backends/upstream/) has to
    connect and wait for a first token, and may retry on another upstream meanwhile; the
    routers await this before the response begins, so that a failure there is an HTTP status
    and never a stream that breaks off before its first token.
    """
    begin = getattr(run.events, "start", None)
    if begin is not None:
        await begin()
# --8<-- [end:start]


# --8<-- [start:model_info]
@dataclass(frozen=True)
class ModelInfo:
    """The model itself, for protocols that show it: llama.cpp's /props, Ollama's /api/show and /api/tags."""

    id: str
    path: str            # the model file, "" when there is none
    size: int            # bytes on disk
    description: str     # llama.cpp's one-line summary, such as "llama 135M Q4_1"
    n_ctx: int           # the context window the server runs with
    n_ctx_train: int
    n_params: int
    n_embd: int
    n_vocab: int
    chat_template: str
    bos_token: str
    eos_token: str
    metadata: dict[str, str] = field(default_factory=dict)  # the GGUF key-values, as llama.cpp reads them
    engine: str = ""     # what runs it, such as "llama-cpp-python 0.3.36"
# --8<-- [end:model_info]


# --8<-- [start:backend]
class Backend(Protocol):
    """What the HTTP layer needs from whatever generates.

    ``chat`` and ``complete`` validate what only the backend can judge (the context window,
    token ids, tools) and queue the work before returning, so a full queue is a 429 before any
    response has started, never an error in the middle of a stream.
    """

    fingerprint: str | None  # system_fingerprint: changes when the configuration does

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def require_ready(self) -> None: ...   # raises a 503 APIError while loading or after a failure
    def models(self) -> list[ModelCard]: ...
    @property
    def queue_depth(self) -> int: ...
    def chat(self, body: CreateChatCompletionRequest) -> Run: ...
    def complete(self, body: CreateCompletionRequest) -> list[Run]: ...  # one Run per prompt
    async def embed(self, body: CreateEmbeddingRequest) -> Embedded: ...
    # --8<-- [start:introspection]
    # The model itself, for protocols that expose it (llama.cpp's /tokenize and /props, Ollama's
    # /api/show, Anthropic's count_tokens): read-only, nothing is queued.
    def info(self) -> ModelInfo: ...
    def tokenize(self, text: str, *, special: bool = True, add_special: bool = True) -> list[int]: ...
    def token_bytes(self, token: int) -> bytes: ...  # one token's raw piece: may be part of a character
    def count_chat_tokens(self, body: CreateChatCompletionRequest) -> int: ...  # the prompt chat() would build
    # --8<-- [end:introspection]
# --8<-- [end:backend]


class BackendWrapper:
    """A backend around another one: everything passes through unless a subclass overrides it.

    The HTTP layer stacks these (metering, the shutdown drain) around the real backend; each
    overrides only what it changes, such as ``chat`` and ``embed``.
    """

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:  # fingerprint, stats, settings, upstream_status ...
        if name == "inner":  # not set yet (copying, unpickling): no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.inner, name)

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    def require_ready(self) -> None:
        self.inner.require_ready()

    def models(self) -> list[ModelCard]:
        return self.inner.models()

    @property
    def queue_depth(self) -> int:
        return self.inner.queue_depth


# --8<-- [start:runner]
class Runner(Protocol):
    """Token ids and sampling parameters in, events out; inside the local backend."""

    def submit(self, prompt: list[int], params: SamplingParams) -> Generation: ...  # 429 if full
    @property
    def queue_depth(self) -> int: ...
    def close(self) -> None: ...
# --8<-- [end:runner]
