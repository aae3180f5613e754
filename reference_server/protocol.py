"""Request bodies, named and shaped as in OpenAI's spec (``CreateChatCompletionRequest`` ...).

Validation ranges follow the spec, so a bad value is refused here with a 400 that names the
field. Top-level unknown fields are refused as OpenAI does ("Unrecognized request argument");
fields the spec defines but a local model cannot honour are declared, accepted and ignored
(the ``ignored_fields`` section of ``CreateChatCompletionRequest``). Rules that tie two fields
together are validators on the field that breaks them, so the 400 names that field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from . import errors


# --8<-- [start:body_config]
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


def _integral(value: Any) -> Any:
    """JSON has one kind of number: 5.0 is the integer 5, as JSON Schema says; 5.5 and "5" stay refused."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def Int(**constraints: Any) -> Any:
    """An integer field (like pydantic's ``conint``) that also accepts 5.0; ``constraints``: ge, le."""
    return Annotated[int, Field(**constraints), BeforeValidator(_integral)]
# --8<-- [end:body_config]


# ---- messages --------------------------------------------------------------------------------

class TextContentPart(_Part):
    type: Literal["text"]
    text: str


Content = Union[str, list[TextContentPart]]


class FunctionCall(_Part):
    name: str
    arguments: str


class ChatCompletionMessageToolCall(_Part):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Part):
    role: Literal["system", "developer"]
    content: Content
    name: str | None = None


class UserMessage(_Part):
    role: Literal["user"]
    content: Content
    name: str | None = None


class AssistantMessage(_Part):
    # The rule below, in JSON Schema, so the OpenAPI document admits only what is accepted.
    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
        {"required": ["tool_calls"], "properties": {"tool_calls": {"type": "array", "minItems": 1}}}]})

    role: Literal["assistant"]
    content: Content | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[ChatCompletionMessageToolCall] | None = None

    @model_validator(mode="after")
    def _content_or_tool_calls(self) -> "AssistantMessage":
        if self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs `content` or `tool_calls`")
        return self


class ToolMessage(_Part):
    role: Literal["tool"]
    content: Content
    tool_call_id: str


ChatCompletionRequestMessage = Annotated[
    Union[SystemMessage, UserMessage, AssistantMessage, ToolMessage], Field(discriminator="role")]


def content_text(content: Content | None) -> str:
    """Text of a message's content, whether a string or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


# ---- tools and response formats (used by tools.py) --------------------------------------------

# --8<-- [start:tools_protocol]
class FunctionDefinition(_Part):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatCompletionTool(_Part):
    type: Literal["function"]
    function: FunctionDefinition


class NamedToolChoiceFunction(_Part):
    name: str


class ChatCompletionNamedToolChoice(_Part):
    type: Literal["function"]
    function: NamedToolChoiceFunction


class AllowedToolReference(_Part):
    type: Literal["function"]
    function: NamedToolChoiceFunction


class AllowedTools(_Part):
    mode: Literal["auto", "required"]
    tools: list[AllowedToolReference] = Field(min_length=1)


class ChatCompletionAllowedToolsChoice(_Part):
    """Only these of ``tools`` may be called, in ``mode`` auto or required."""

    type: Literal["allowed_tools"]
    allowed_tools: AllowedTools


class ChatCompletionNamedToolChoiceCustom(_Part):
    """In the spec for custom (free-form) tools; refused by tools.py with a clear 400."""

    type: Literal["custom"]
    custom: dict[str, Any]


ToolChoice = Union[Literal["none", "auto", "required"], Annotated[
    Union[ChatCompletionNamedToolChoice, ChatCompletionAllowedToolsChoice, ChatCompletionNamedToolChoiceCustom],
    Field(discriminator="type")]]


class ResponseFormatText(_Part):
    type: Literal["text"]


class ResponseFormatJsonObject(_Part):
    type: Literal["json_object"]


class JsonSchemaFormat(_Part):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormatJsonSchema(_Part):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[Union[ResponseFormatText, ResponseFormatJsonObject, ResponseFormatJsonSchema],
                           Field(discriminator="type")]
# --8<-- [end:tools_protocol]


# ---- shared sampling parameters ----------------------------------------------------------------

class StreamOptions(_Part):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


Stop = Union[str, Annotated[list[str], Field(max_length=4)], None]


EXAMPLE_MODEL = "SmolLM2-135M-Instruct"  # the examples shown at /docs name the served model (openapi.py)


def _needs(field: str, flag: str) -> dict[str, Any]:
    """``field`` (when not null) needs ``flag`` true: a validator's rule in JSON Schema, for /docs."""
    return {"anyOf": [{"properties": {field: {"type": "null"}}},
                      {"required": [flag], "properties": {flag: {"const": True}}}]}


# --8<-- [start:sampling_fields]
class _Sampling(_Body):
    model_config = ConfigDict(json_schema_extra={"allOf": [_needs("stream_options", "stream")]})

    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: Int(ge=1, le=128) | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: Stop = None
    max_tokens: Int(ge=1) | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, Int(ge=-100, le=100)] | None = Field(
        None, json_schema_extra={"propertyNames": {"pattern": "^[0-9]+$"}})
    seed: Int() | None = None
    user: str | None = None
    # llama.cpp extensions that its users expect
    top_k: Int(ge=0) | None = None
    min_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, gt=0)

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, value: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if value is not None and not info.data.get("stream"):
            raise PydanticCustomError("cross_field",
                                      "The 'stream_options' parameter is only allowed when 'stream' is enabled.")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias_keys_are_token_ids(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        for key in value or {}:
            if not (key.isascii() and key.isdigit()):  # not str.isdigit alone: int("²") fails
                raise PydanticCustomError("cross_field", "Invalid key in 'logit_bias': '{key}' is not a token id "
                                          "(a non-negative integer, in digits).", {"key": key})
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]
# --8<-- [end:sampling_fields]


# --8<-- [start:chat_request]
class CreateChatCompletionRequest(_Sampling):
    model_config = ConfigDict(json_schema_extra={
        "allOf": [_needs("stream_options", "stream"), _needs("top_logprobs", "logprobs")],
        "examples": [{"model": EXAMPLE_MODEL, "messages": [{"role": "user", "content": "Say hello in five words."}],
                      "max_tokens": 16}]})

    messages: list[ChatCompletionRequestMessage] = Field(min_length=1)
    max_completion_tokens: Int(ge=1) | None = None
    logprobs: bool | None = None
    top_logprobs: Int(ge=0, le=20) | None = None
    tools: list[ChatCompletionTool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    modalities: list[Literal["text"]] | None = None
    # In the spec but not servable here: refused with a 400 that says what to use instead.
    audio: Any = None
    functions: Any = None
    function_call: Any = None
    # --8<-- [start:ignored_fields]
    # In the spec, meaningless for a local model: accepted (validated as typed) and ignored.
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    prediction: Any = None
    web_search_options: Any = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: Any = None
    moderation: Any = None
    # --8<-- [end:ignored_fields]

    # --8<-- [start:cross_field]
    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("logprobs"):
            raise PydanticCustomError("cross_field", "'top_logprobs' requires 'logprobs' to be true.")
        return value
    # --8<-- [end:cross_field]

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens
# --8<-- [end:chat_request]


# A prompt string cannot be empty: without a BOS token (SmolLM2 has none) it has no token to start from.
PromptText = Annotated[str, Field(min_length=1)]
Prompt = Union[PromptText, list[PromptText], Annotated[list[Int()], Field(min_length=1)], list[list[Int()]]]


class CreateCompletionRequest(_Sampling):
    model_config = ConfigDict(json_schema_extra={
        "allOf": [_needs("stream_options", "stream")],
        "examples": [{"model": EXAMPLE_MODEL, "prompt": "The capital of France is", "max_tokens": 8}]})

    prompt: Prompt
    max_tokens: Int(ge=0) | None = 16
    echo: bool | None = None
    suffix: str | None = None
    best_of: Int(ge=0, le=20) | None = None
    logprobs: Int(ge=0, le=5) | None = None


_M = TypeVar("_M", bound=BaseModel)

EmbeddingInput = Union[str, list[str], Annotated[list[Int()], Field(min_length=1)], list[list[Int()]]]


# --8<-- [start:embedding_request]
class CreateEmbeddingRequest(_Body):
    model_config = ConfigDict(json_schema_extra={
        "examples": [{"model": EXAMPLE_MODEL, "input": "The food was delicious and the waiter was kind."}]})

    model: str
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Int(ge=1) | None = None
    user: str | None = None
# --8<-- [end:embedding_request]


# --8<-- [start:translated]
def translated(model: type[_M], data: dict[str, Any]) -> _M:
    """An OpenAI request built by another protocol's translation (protocol_ollama.py ...).

    Each protocol's own models check what its clients send, under its own field names; a value
    that passes them but not the OpenAI model (a rule only OpenAI's API has) is still a 400.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err.get("loc", ()))
        raise errors.invalid_request(f"Invalid value for '{where}': {err.get('msg')}.", param=where or None) from None
# --8<-- [end:translated]
