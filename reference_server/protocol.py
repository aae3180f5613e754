"""Request bodies, named and shaped as in OpenAI's spec (``CreateChatCompletionRequest`` ...).

Validation ranges follow the spec, so a bad value is refused here with a 400 that names the
field. Top-level unknown fields are refused as OpenAI does ("Unrecognized request argument");
fields the spec defines but a local model cannot honour are declared, accepted and ignored
(the ``ignored_fields`` section of ``CreateChatCompletionRequest``). Rules that tie two fields
together are validators on the field that breaks them, so the 400 names that field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError


# --8<-- [start:body_config]
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")
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


# --8<-- [start:sampling_fields]
class _Sampling(_Body):
    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=128)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: Stop = None
    max_tokens: int | None = Field(None, ge=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[int, Field(ge=-100, le=100)]] | None = None
    seed: int | None = None
    user: str | None = None
    # llama.cpp extensions that its users expect
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, gt=0)

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, value: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if value is not None and not info.data.get("stream"):
            raise PydanticCustomError("cross_field",
                                      "The 'stream_options' parameter is only allowed when 'stream' is enabled.")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]
# --8<-- [end:sampling_fields]


# --8<-- [start:chat_request]
class CreateChatCompletionRequest(_Sampling):
    messages: list[ChatCompletionRequestMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
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


Prompt = Union[str, list[str], Annotated[list[int], Field(min_length=1)], list[list[int]]]


class CreateCompletionRequest(_Sampling):
    prompt: Prompt
    max_tokens: int | None = Field(16, ge=0)
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = Field(None, ge=0, le=20)
    logprobs: int | None = Field(None, ge=0, le=5)


EmbeddingInput = Union[str, list[str], Annotated[list[int], Field(min_length=1)], list[list[int]]]


# --8<-- [start:embedding_request]
class CreateEmbeddingRequest(_Body):
    model: str
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None
# --8<-- [end:embedding_request]
