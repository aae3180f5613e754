"""The shapes the server sends, as TypedDicts: free at run time (plain dicts), checked by a type checker.

Names follow OpenAI's spec (``CreateChatCompletionResponse``, ``CompletionUsage`` ...), so the
code can be read next to it. The JSON Schemas in schemas/ are what the tests validate against.
"""

from __future__ import annotations

from typing import Any, Literal

from typing_extensions import NotRequired, TypedDict  # pydantic reads these for /openapi.json (Python < 3.12)


class ErrorObject(TypedDict):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(TypedDict):
    error: ErrorObject


class OllamaError(TypedDict):
    """Ollama's error body on /api/*."""

    error: str


class AnthropicErrorObject(TypedDict):
    type: str
    message: str


class AnthropicError(TypedDict):
    """Anthropic's error body on /v1/messages."""

    type: Literal["error"]
    error: AnthropicErrorObject


class LlamaCppErrorObject(TypedDict):
    code: int
    message: str
    type: str


class LlamaCppError(TypedDict):
    """llama-server's error body on /tokenize, /detokenize, /props."""

    error: LlamaCppErrorObject


class PromptTokensDetails(TypedDict):
    cached_tokens: int


class CompletionUsage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: NotRequired[PromptTokensDetails]


class ChatCompletionTokenLogprob(TypedDict):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: NotRequired[list["ChatCompletionTokenLogprob"]]


class ChoiceLogprobs(TypedDict):
    content: list[ChatCompletionTokenLogprob] | None
    refusal: None


class CompletionLogprobs(TypedDict):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class FunctionCallPart(TypedDict, total=False):
    name: str
    arguments: str


class ToolCallPart(TypedDict, total=False):
    index: int
    id: str
    type: Literal["function"]
    function: FunctionCallPart


class ChatMessage(TypedDict):
    role: Literal["assistant"]
    content: str | None
    refusal: None
    tool_calls: NotRequired[list[ToolCallPart]]


class ChatChoice(TypedDict):
    index: int
    message: ChatMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: str


class ChunkDelta(TypedDict, total=False):
    role: Literal["assistant"]
    content: str | None
    refusal: None
    tool_calls: list[ToolCallPart]


class ChunkChoice(TypedDict):
    index: int
    delta: ChunkDelta
    logprobs: ChoiceLogprobs | None
    finish_reason: str | None


class CompletionChoice(TypedDict):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None


class _Response(TypedDict):
    id: str
    object: str
    created: int
    model: str
    system_fingerprint: NotRequired[str | None]


class CreateChatCompletionResponse(_Response):
    choices: list[ChatChoice]
    usage: CompletionUsage


class CreateChatCompletionStreamResponse(_Response):
    choices: list[ChunkChoice]
    usage: NotRequired[CompletionUsage | None]


class CreateCompletionResponse(_Response):
    choices: list[CompletionChoice]
    usage: NotRequired[CompletionUsage | None]


class Embedding(TypedDict):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class CreateEmbeddingResponse(TypedDict):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: dict[str, int]


class Model(TypedDict):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ListModelsResponse(TypedDict):
    object: Literal["list"]
    data: list[Model]


class HealthResponse(TypedDict):
    status: Literal["ok"]
    model: str
    queue_depth: int


class UsageWindow(TypedDict):
    seconds: float
    requests: int
    tokens: int


class KeyUsageResponse(TypedDict):
    """GET /v1/usage (limits.py): what the request's key of the keys file has used."""

    object: Literal["usage"]
    key_name: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    token_budget: int | None
    budget_remaining: int | None
    requests_per_minute: int | None
    tokens_per_minute: int | None
    window: UsageWindow


JSON = dict[str, Any]
