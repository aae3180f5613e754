"""Anthropic's Messages API (``/v1/messages``): request bodies, named and shaped as in Anthropic's SDK types.

Like Anthropic's API, a top-level field it does not define is refused ("Extra inputs are not
permitted"); fields it defines that mean nothing for a local model (metadata, service_tier,
cache_control, thinking...) are accepted and ignored. Content this text-only model cannot
read (images, documents) and Anthropic's server-side tools are refused with a 400 that says so.

A request translates itself into the OpenAI request the backend takes (``to_openai``). The
differences that matter are here: ``system`` is a field, not a message; a message is a list
of typed blocks; a tool call is a ``tool_use`` block in the assistant's content and its result
a ``tool_result`` block in the next user message (OpenAI: ``tool_calls`` on the message and a
``tool`` role); ``max_tokens`` is required; ``tool_choice`` says ``any`` where OpenAI says
``required``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import errors
from .protocol import CreateChatCompletionRequest, translated


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")  # cache_control, citations...: nothing to do here


# ---- content blocks ----------------------------------------------------------------------------

class TextBlock(_Part):
    type: Literal["text"]
    text: str


class ToolUseBlock(_Part):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(_Part):
    type: Literal["tool_result"]
    tool_use_id: str
    content: Union[str, list[TextBlock]] = ""
    is_error: bool | None = None

    def text(self) -> str:
        text = self.content if isinstance(self.content, str) else "".join(b.text for b in self.content)
        return f"Error: {text}" if self.is_error else text


class ThinkingBlock(_Part):
    """An earlier turn's thinking, sent back by agents: this model does not think, and does not read it."""

    type: Literal["thinking", "redacted_thinking"]


ContentBlock = Annotated[Union[TextBlock, ToolUseBlock, ToolResultBlock, ThinkingBlock], Field(discriminator="type")]

UNREADABLE = ("image", "document", "search_result", "container_upload")


class MessageParam(_Part):
    role: Literal["user", "assistant"]
    content: Union[str, list[ContentBlock]]

    @model_validator(mode="before")
    @classmethod
    def _refuse_unreadable(cls, data: Any) -> Any:
        blocks = data.get("content") if isinstance(data, dict) else None
        for block in blocks if isinstance(blocks, list) else ():
            if isinstance(block, dict) and block.get("type") in UNREADABLE:
                raise errors.invalid_request(f"This model reads text only: '{block['type']}' blocks are not supported.")
        return data

    def blocks(self) -> list[Any]:
        return [TextBlock(type="text", text=self.content)] if isinstance(self.content, str) else self.content


# ---- tools -------------------------------------------------------------------------------------

class ToolParam(_Part):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_server_tools(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type") not in (None, "custom"):
            raise errors.invalid_request(f"Server tools such as {data.get('type')!r} are not available on this "
                                         "server: declare your own tools, each with an input_schema.")
        return data


class ToolChoiceAuto(_Part):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(_Part):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(_Part):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(_Part):
    type: Literal["none"]


ToolChoice = Annotated[Union[ToolChoiceAuto, ToolChoiceAny, ToolChoiceTool, ToolChoiceNone], Field(discriminator="type")]


class JSONOutputFormat(_Part):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Part):
    format: JSONOutputFormat | None = None
    effort: str | None = None  # accepted: a 135M model has one effort


# ---- requests ----------------------------------------------------------------------------------

# --8<-- [start:count_tokens_request]
class CountTokensRequest(_Body):
    """POST /v1/messages/count_tokens: what the prompt of this conversation would cost."""

    model: str
    messages: list[MessageParam] = Field(min_length=1)
    system: Union[str, list[TextBlock], None] = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None
    output_config: OutputConfig | None = None
    # Defined by Anthropic, meaningless for a local model: accepted and ignored.
    thinking: dict[str, Any] | None = None
    cache_control: dict[str, Any] | None = None
# --8<-- [end:count_tokens_request]

    @model_validator(mode="after")
    def _blocks_in_their_place(self) -> "CountTokensRequest":
        called: set[str] = set()
        for i, message in enumerate(self.messages):
            kinds = {block.type for block in message.blocks()}
            misplaced = kinds & ({"tool_result"} if message.role == "assistant" else {"tool_use"})
            if misplaced:
                raise errors.invalid_request(f"messages[{i}]: '{misplaced.pop()}' blocks belong in "
                                             f"{'user' if message.role == 'assistant' else 'assistant'} messages.",
                                             param=f"messages[{i}].content")
            called.update(b.id for b in message.blocks() if isinstance(b, ToolUseBlock))
            for b in message.blocks():
                if isinstance(b, ToolResultBlock) and b.tool_use_id not in called:
                    raise errors.invalid_request(
                        f"messages[{i}]: a tool_result for {b.tool_use_id!r}, but no earlier assistant message "
                        "has a tool_use block with that id.", param=f"messages[{i}].content")
        if self.messages[-1].role == "assistant":
            raise errors.invalid_request("The last message must be the user's: continuing a final assistant "
                                         "message (prefill) is not supported by this server.", param="messages")
        return self

    # --8<-- [start:to_openai]
    def to_openai(self, model_id: str, **sampling: Any) -> CreateChatCompletionRequest:
        messages: list[dict[str, Any]] = []
        if self.system:
            text = self.system if isinstance(self.system, str) else "".join(b.text for b in self.system)
            messages.append({"role": "system", "content": text})
        for message in self.messages:
            messages += _openai_messages(message)
        choice, parallel = _tool_choice(self.tool_choice)
        tools = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                   "parameters": t.input_schema}} for t in self.tools or ()]
        fmt = self.output_config.format if self.output_config else None
        return translated(CreateChatCompletionRequest, {
            "model": model_id, "messages": messages, "tools": tools or None, "tool_choice": choice,
            "parallel_tool_calls": parallel, **sampling,
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "output", "schema": fmt.schema_, "strict": True}} if fmt else None})
    # --8<-- [end:to_openai]


# --8<-- [start:create_message_request]
class CreateMessageRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)  # required, unlike OpenAI's
    stop_sequences: list[str] | None = Field(None, max_length=4)  # the engine takes at most 4
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=1)  # 0..1, where OpenAI allows 0..2
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    # Defined by Anthropic, meaningless for a local model: accepted and ignored.
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None
    inference_geo: str | None = None
    speed: str | None = None
    diagnostics: dict[str, Any] | None = None
    container: Any = None

    def to_chat_request(self, model_id: str) -> CreateChatCompletionRequest:
        return self.to_openai(model_id, max_tokens=self.max_tokens, stop=self.stop_sequences,
                              temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
# --8<-- [end:create_message_request]


# --8<-- [start:openai_messages]
def _openai_messages(message: MessageParam) -> list[dict[str, Any]]:
    """One Anthropic message as OpenAI messages: a user turn's tool results become ``tool`` messages
    (first, right after the assistant's calls, as OpenAI requires), its text a user message."""
    blocks = message.blocks()
    text = "".join(b.text for b in blocks if isinstance(b, TextBlock))
    if message.role == "assistant":
        calls = [{"id": b.id, "type": "function", "function": {"name": b.name, "arguments": json.dumps(b.input)}}
                 for b in blocks if isinstance(b, ToolUseBlock)]
        if not text and not calls:
            return []
        return [{"role": "assistant", "content": text or None, "tool_calls": calls or None}]
    out = [{"role": "tool", "tool_call_id": b.tool_use_id, "content": b.text()}
           for b in blocks if isinstance(b, ToolResultBlock)]
    if text or not out:
        out.append({"role": "user", "content": text})
    return out


def _tool_choice(choice: Any) -> tuple[Any, bool | None]:
    """Anthropic's tool_choice as OpenAI's, and whether parallel calls are allowed."""
    if choice is None:
        return None, None
    parallel = False if getattr(choice, "disable_parallel_tool_use", None) else None
    if isinstance(choice, ToolChoiceTool):
        return {"type": "function", "function": {"name": choice.name}}, parallel
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type], parallel
# --8<-- [end:openai_messages]
