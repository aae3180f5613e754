"""Ollama's native API (``/api/*``): request bodies, named and shaped as in Ollama's api/types.go.

Ollama ignores fields it does not know, and so do these models: a client written for a newer
Ollama keeps working. Fields it knows that a text-only llama.cpp model cannot honour (images,
thinking, a custom template, a fill-in-the-middle suffix) are refused with a 400 that says so.

Each request translates itself into the OpenAI request the backend takes (``to_openai``), as
vLLM's request objects own their conversion: one engine under every protocol. The differences
that matter are here: options instead of top-level sampling fields, ``num_predict`` instead
of ``max_tokens``, tool-call arguments as an object instead of a JSON string, tool results
that name the tool instead of the call, and ``format`` instead of ``response_format``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from . import errors
from .protocol import (ChatCompletionTool, CreateChatCompletionRequest, CreateCompletionRequest,
                       CreateEmbeddingRequest, translated)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # as Ollama's own JSON decoding does


# --8<-- [start:options]
class Options(_Body):
    """The runtime options this server honours; Ollama's others (mirostat, num_thread...) are ignored."""

    num_predict: int | None = None  # -1 (infinite) and -2 (fill the context): until the context is full
    temperature: float | None = Field(None, ge=0, le=2)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    stop: Union[str, Annotated[list[str], Field(max_length=4)], None] = None  # the engine takes at most 4
    repeat_penalty: float | None = Field(None, gt=0)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    num_ctx: int | None = Field(None, ge=1)  # accepted: the window is fixed when the server starts

    def sampling(self) -> dict[str, Any]:
        """The OpenAI sampling fields these options stand for."""
        out: dict[str, Any] = {k: getattr(self, k) for k in (
            "temperature", "top_p", "top_k", "min_p", "seed", "repeat_penalty", "presence_penalty",
            "frequency_penalty", "stop") if getattr(self, k) is not None}
        if self.num_predict is not None and self.num_predict > 0:
            out["max_tokens"] = self.num_predict
        return out
# --8<-- [end:options]


Format = Union[Literal["", "json"], dict[str, Any], None]


def _response_format(fmt: Format) -> dict[str, Any] | None:
    """``format``: "json" is OpenAI's json_object mode, a JSON Schema is its json_schema mode."""
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt, "strict": True}}
    return None


class _Generating(_Body):
    """What /api/chat and /api/generate share."""

    model: str = Field(min_length=1)
    stream: bool = True  # Ollama streams unless told not to: the opposite of OpenAI's default
    format: Format = None
    options: Options = Field(default_factory=Options)
    keep_alive: Union[str, float, None] = None  # accepted: the model stays loaded as long as the server runs
    think: Union[bool, str, None] = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @model_validator(mode="after")
    def _refuse_thinking(self) -> "_Generating":
        if self.think not in (None, False, ""):
            raise errors.invalid_request(f"'{self.model}' does not support thinking.", param="think")
        return self

    def _common(self, model_id: str) -> dict[str, Any]:
        out = {"model": model_id, **self.options.sampling()}
        if self.logprobs:
            out["logprobs"] = True
            out["top_logprobs"] = self.top_logprobs
        return out


# ---- /api/chat ---------------------------------------------------------------------------------

class ToolCallFunction(_Body):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)  # an object, where OpenAI has a JSON string
    index: int | None = None


class ToolCall(_Body):
    id: str | None = None
    function: ToolCallFunction


def _text(value: Any) -> Any:
    return "" if value is None else value  # Go decodes a JSON null into an empty string


class Message(_Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: Annotated[str, BeforeValidator(_text)] = ""
    images: list[str] | None = None
    thinking: str | None = None  # a thinking model's earlier reasoning: not shown to this one
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None     # a tool result names the tool that ran...
    tool_call_id: str | None = None  # ...and, from newer clients, the call it answers


class ChatRequest(_Generating):
    messages: list[Message] = Field(default_factory=list)  # empty: "load the model", nothing to generate
    tools: list[ChatCompletionTool] | None = None          # the same shape as OpenAI's

    @model_validator(mode="after")
    def _refuse_images(self) -> "ChatRequest":
        for i, message in enumerate(self.messages):
            if message.images:
                raise errors.invalid_request("This model reads text only: 'images' are not supported.",
                                             param=f"messages[{i}].images")
        return self

    # --8<-- [start:chat_to_openai]
    def to_openai(self, model_id: str) -> CreateChatCompletionRequest:
        return translated(CreateChatCompletionRequest, {
            **self._common(model_id), "messages": _openai_messages(self.messages),
            "tools": self.tools, "response_format": _response_format(self.format)})
    # --8<-- [end:chat_to_openai]


# --8<-- [start:openai_messages]
def _openai_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Ollama's conversation in OpenAI's terms: tool calls get ids, tool results point at them.

    An Ollama tool result names the tool (``tool_name``), or the call (``tool_call_id``, newer
    clients), or neither; OpenAI's must name the call. Each result answers the first call of
    the assistant's last turn that is still unanswered and matches what the result names.
    """
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (call id, tool name), unanswered, in order
    for i, m in enumerate(messages):
        if m.role == "assistant" and m.tool_calls:
            calls = [{"id": c.id or f"call_{i}_{j}", "type": "function",
                      "function": {"name": c.function.name, "arguments": json.dumps(c.function.arguments)}}
                     for j, c in enumerate(m.tool_calls)]
            pending = [(c["id"], c["function"]["name"]) for c in calls]
            out.append({"role": "assistant", "content": m.content or None, "tool_calls": calls})
        elif m.role == "tool":
            match = next((p for p in pending if m.tool_call_id in (None, p[0]) and m.tool_name in (None, "", p[1])),
                         None)
            if match is None:
                raise errors.invalid_request(
                    f"messages[{i}] is a tool result, but no earlier assistant message has an unanswered "
                    f"tool call{f' to {m.tool_name!r}' if m.tool_name else ''} for it to answer.",
                    param=f"messages[{i}]")
            pending.remove(match)
            out.append({"role": "tool", "content": m.content, "tool_call_id": match[0]})
        else:
            out.append({"role": m.role, "content": m.content})
    return out
# --8<-- [end:openai_messages]


# ---- /api/generate -----------------------------------------------------------------------------

class GenerateRequest(_Generating):
    prompt: str = ""   # empty: "load the model", nothing to generate
    system: str | None = None
    raw: bool = False  # the prompt is already formatted with the model's template
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None
    images: list[str] | None = None

    @model_validator(mode="after")
    def _refuse_unservable(self) -> "GenerateRequest":
        refuse = {
            "images": "This model reads text only: 'images' are not supported.",
            "suffix": "'suffix' (fill-in-the-middle) is not supported by this server.",
            "template": "A custom 'template' is not supported: the model's own chat template is applied; "
                        "send a formatted prompt with raw=true instead.",
            "context": "'context' (deprecated by Ollama) is not supported: send the conversation to /api/chat.",
        }
        for name, message in refuse.items():
            if getattr(self, name):
                raise errors.invalid_request(message, param=name)
        if self.raw and self.system:
            raise errors.invalid_request("raw mode does not support template, system, or context.", param="raw")
        if self.raw and self.format:
            raise errors.invalid_request("'format' needs the chat template; it is not supported with raw=true.",
                                         param="format")
        return self

    # --8<-- [start:generate_to_openai]
    def to_openai(self, model_id: str) -> CreateChatCompletionRequest:
        """Not raw: the prompt (and system) through the model's chat template, as Ollama does."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return translated(CreateChatCompletionRequest, {
            **self._common(model_id), "messages": [*system, {"role": "user", "content": self.prompt}],
            "response_format": _response_format(self.format)})

    def to_openai_raw(self, model_id: str, prompt_tokens: list[int]) -> CreateCompletionRequest:
        """Raw: the text as the model's own tokens (special ones included), no template."""
        common = {k: v for k, v in self._common(model_id).items() if k not in ("logprobs", "top_logprobs")}
        return translated(CreateCompletionRequest, {
            **common, "prompt": prompt_tokens, "max_tokens": common.get("max_tokens"),
            "logprobs": (self.top_logprobs or 0) if self.logprobs else None})
    # --8<-- [end:generate_to_openai]


# ---- embeddings and model information ----------------------------------------------------------

class EmbedRequest(_Body):
    model: str = Field(min_length=1)
    input: Union[str, list[str]]
    truncate: bool = True  # cut inputs longer than the context window instead of refusing them
    dimensions: int | None = Field(None, ge=1)
    options: Options = Field(default_factory=Options)
    keep_alive: Union[str, float, None] = None

    def to_openai(self, model_id: str, inputs: list[str]) -> CreateEmbeddingRequest:
        return translated(CreateEmbeddingRequest, {"model": model_id, "input": inputs, "dimensions": self.dimensions})


class EmbeddingsRequest(_Body):
    """The older /api/embeddings: one ``prompt``, one ``embedding``."""

    model: str = Field(min_length=1)
    prompt: str = ""
    options: Options = Field(default_factory=Options)
    keep_alive: Union[str, float, None] = None


class ShowRequest(_Body):
    model: str = ""
    name: str | None = None  # what older clients send instead of model
    verbose: bool = False

    @model_validator(mode="after")
    def _model_or_name(self) -> "ShowRequest":
        self.model = self.model or self.name or ""
        if not self.model:
            raise errors.invalid_request("model is required", param="model")
        return self
