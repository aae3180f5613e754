"""The Responses API's request bodies (``CreateResponse`` ...), named and shaped as in OpenAI's spec.

A Responses request is served by translating it into a chat request (protocol.py's
``CreateChatCompletionRequest``) and handing that to the same backend: items become messages,
``instructions`` a system message, ``text.format`` a ``response_format``, function tools
chat tools. ``to_chat`` does that translation; ``input_items`` gives every input item the id
and shape it has when listed back (``GET /v1/responses/{id}/input_items``).

What this server cannot do is refused here with a 400 that names the field and says why,
never accepted and ignored: built-in tools (web search, file search, code interpreter ...),
reasoning, background mode, OpenAI-hosted conversations and prompts, automatic truncation.
Fields the spec makes advisory are accepted (``user``, ``safety_identifier``,
``prompt_cache_key``, ``max_tool_calls``, ``stream_options``); see chapter 9.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from . import errors
from .protocol import EXAMPLE_MODEL, CreateChatCompletionRequest, Int

NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # function and schema names, as in chat completions
LOGPROBS = "message.output_text.logprobs"


def new_id(prefix: str) -> str:
    """OpenAI's Responses ids: ``resp_``, ``msg_``, ``fc_`` ... then hex."""
    return f"{prefix}_{uuid.uuid4().hex}"


def _refuse(message: str) -> PydanticCustomError:
    # "cross_field" makes errors.py use the message as written; the location names the field.
    return PydanticCustomError("cross_field", message)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # types as strict as chat's (protocol.py)


class _Part(BaseModel):
    """Objects inside the body ignore fields they do not know (forward compatibility), as chat does."""

    model_config = ConfigDict(extra="ignore", strict=True)


def _kind(served: tuple[str, ...], default: str | None = None) -> Discriminator:
    """A discriminator: the object's ``type`` if this server serves it, else ``refused`` (a model
    whose only job is to say why; pydantic's own "does not match any of" names no reason)."""
    def pick(value: Any) -> str:
        kind = value.get("type", default) if isinstance(value, dict) else getattr(value, "type", None)
        if kind is None:
            kind = default
        return kind if kind in served else "refused"
    return Discriminator(pick)


# ---- content parts -------------------------------------------------------------------------------

class InputTextContent(_Part):
    type: Literal["input_text"]
    text: str


class OutputTextContent(_Part):
    """What the assistant said, sent back as input (the previous response's output)."""

    type: Literal["output_text"]
    text: str


class RefusalContent(_Part):
    type: Literal["refusal"]
    refusal: str


class _RefusedPart(_Part):
    type: str

    @field_validator("type")
    @classmethod
    def _refused(cls, value: str) -> str:
        if value in ("input_image", "input_file", "input_audio"):
            raise _refuse(f"Invalid content type: '{value}' parts are not supported by this model, which reads "
                          f"text only. Send 'input_text' parts or a string.")
        raise _refuse(f"Invalid content type: '{value}'. Message content is a string or a list of 'input_text' "
                      f"parts ('output_text' parts in assistant messages).")


ContentPart = Annotated[Union[
    Annotated[InputTextContent, Tag("input_text")], Annotated[OutputTextContent, Tag("output_text")],
    Annotated[RefusalContent, Tag("refusal")], Annotated[_RefusedPart, Tag("refused")]],
    _kind(("input_text", "output_text", "refusal"))]


def part_text(part: InputTextContent | OutputTextContent | RefusalContent) -> str:
    return part.refusal if isinstance(part, RefusalContent) else part.text


# ---- input items ---------------------------------------------------------------------------------

# --8<-- [start:items]
class Message(_Part):
    """A message item; ``type`` may be left out (the spec's EasyInputMessage)."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Union[str, list[ContentPart]]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    @field_validator("content")
    @classmethod
    def _parts_fit_the_role(cls, content: Any, info: ValidationInfo) -> Any:
        role = info.data.get("role")  # absent when the role itself was invalid: that error says it
        if isinstance(content, list) and role not in (None, "assistant"):
            for part in content:
                if not isinstance(part, InputTextContent):
                    raise _refuse(f"Invalid content type: '{part.type}' parts are what the assistant wrote; in a "
                                  f"'{role}' message send 'input_text' parts.")
        return content


class FunctionCallItem(_Part):
    """A call the model made (from a previous response's output), sent back with its result."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str
    arguments: str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputItem(_Part):
    """The result of running a function call, for the call with the same ``call_id``."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=64)
    output: Union[str, list[ContentPart]]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


BUILT_IN_ITEMS = ("file_search_call", "computer_call", "computer_call_output", "web_search_call",
                  "image_generation_call", "code_interpreter_call", "local_shell_call", "local_shell_call_output",
                  "shell_call", "shell_call_output", "apply_patch_call", "apply_patch_call_output", "mcp_list_tools",
                  "mcp_approval_request", "mcp_approval_response", "mcp_call", "custom_tool_call",
                  "custom_tool_call_output", "tool_search_call", "tool_search_output", "additional_tools",
                  "program", "program_output")


class _RefusedItem(_Part):
    type: str

    @field_validator("type")
    @classmethod
    def _refused(cls, value: str) -> str:
        if value == "reasoning":
            raise _refuse("Reasoning items are not supported: this model does not produce them, so there is "
                          "none to send back. Leave them out of 'input'.")
        if value == "item_reference":
            raise _refuse("Item references are not supported by this server; send the item itself, or continue "
                          "a stored response with 'previous_response_id'.")
        if value in ("compaction", "compaction_trigger"):
            raise _refuse("Compaction items are not supported by this server.")
        if value in BUILT_IN_ITEMS:
            raise _refuse(f"Input items of type '{value}' belong to built-in or custom tools, which this server "
                          f"does not have; only 'function' tools are served.")
        raise _refuse(f"Invalid input item type: '{value}'. This server accepts 'message', 'function_call' and "
                      f"'function_call_output' items.")


InputItem = Annotated[Union[
    Annotated[Message, Tag("message")], Annotated[FunctionCallItem, Tag("function_call")],
    Annotated[FunctionCallOutputItem, Tag("function_call_output")], Annotated[_RefusedItem, Tag("refused")]],
    _kind(("message", "function_call", "function_call_output"), default="message")]
# --8<-- [end:items]


# ---- tools, tool_choice, text.format --------------------------------------------------------------

# --8<-- [start:tools]
class FunctionTool(_Part):
    """The Responses shape: name and parameters at the top level, not under ``function``."""

    type: Literal["function"]
    name: str = Field(pattern=NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    output_schema: dict[str, Any] | None = None  # describes the result for the reader; no effect on the call
    defer_loading: bool | None = None
    allowed_callers: list[str] | None = None

    @field_validator("defer_loading")
    @classmethod
    def _no_deferred_loading(cls, value: bool | None) -> bool | None:
        if value:
            raise _refuse("'defer_loading' belongs to OpenAI's tool search, which this server does not have.")
        return value

    @field_validator("allowed_callers")
    @classmethod
    def _direct_calls_only(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and set(value) - {"direct"}:
            raise _refuse("Only direct calls by the model are supported: 'allowed_callers' may only hold 'direct'.")
        return value


BUILT_IN_TOOLS = ("file_search", "computer", "computer_use", "computer_use_preview", "web_search",
                  "web_search_2025_08_26", "web_search_preview", "web_search_preview_2025_03_11", "mcp",
                  "code_interpreter", "programmatic_tool_calling", "image_generation", "local_shell", "shell",
                  "tool_search", "apply_patch")


def _refused_tool(value: str) -> PydanticCustomError:
    if value in BUILT_IN_TOOLS:
        return _refuse(f"The built-in tool '{value}' is not available on this server: built-in tools run on "
                       f"OpenAI's infrastructure. Declare a 'function' tool and run it yourself.")
    if value == "custom":
        return _refuse("Custom (free-form) tools are not supported by this server; declare a 'function' tool "
                       "with a JSON Schema for its arguments.")
    if value == "namespace":
        return _refuse("Tool namespaces are not supported by this server; declare 'function' tools at the top level.")
    return _refuse(f"Invalid tool type: '{value}'. This server serves 'function' tools.")


class _RefusedTool(_Part):
    type: str

    @field_validator("type")
    @classmethod
    def _refused(cls, value: str) -> str:
        raise _refused_tool(value)


Tool = Annotated[Union[Annotated[FunctionTool, Tag("function")], Annotated[_RefusedTool, Tag("refused")]],
                 _kind(("function",))]


class ToolChoiceFunction(_Part):
    type: Literal["function"]
    name: str


class AllowedTool(_Part):
    type: str
    name: str  # a function's: without it, to_chat's chat request was invalid (a 500)

    @field_validator("type")
    @classmethod
    def _functions_only(cls, value: str) -> str:
        if value != "function":
            raise _refused_tool(value)
        return value


class ToolChoiceAllowed(_Part):
    """Only these of ``tools`` may be called, in mode auto or required."""

    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"]
    tools: list[AllowedTool] = Field(min_length=1)


class _RefusedToolChoice(_Part):
    type: str

    @field_validator("type")
    @classmethod
    def _refused(cls, value: str) -> str:
        raise _refused_tool(value)


ToolChoice = Union[Literal["none", "auto", "required"], Annotated[Union[
    Annotated[ToolChoiceFunction, Tag("function")], Annotated[ToolChoiceAllowed, Tag("allowed_tools")],
    Annotated[_RefusedToolChoice, Tag("refused")]], _kind(("function", "allowed_tools"))]]


class FormatText(_Part):
    type: Literal["text"]


class FormatJsonObject(_Part):
    type: Literal["json_object"]


class FormatJsonSchema(_Part):
    """Flat, unlike chat's ``response_format``: name and schema sit next to ``type``."""

    type: Literal["json_schema"]
    name: str = Field(pattern=NAME)
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


TextFormat = Annotated[Union[FormatText, FormatJsonObject, FormatJsonSchema], Field(discriminator="type")]


class ResponseTextParam(_Part):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None

    @field_validator("verbosity")
    @classmethod
    def _model_decides_length(cls, value: str | None) -> str | None:
        if value not in (None, "medium"):
            raise _refuse("'verbosity' other than 'medium' is not supported: this model has no verbosity setting. "
                          "Ask for a shorter or longer answer in the instructions.")
        return value
# --8<-- [end:tools]


class ResponseStreamOptions(_Part):
    include_obfuscation: bool | None = None


def _includable(name: str) -> str:
    if name != LOGPROBS:
        raise _refuse(f"{name!r} cannot be included by this server, which has no built-in tools, images or "
                      f"encrypted reasoning; only '{LOGPROBS}' can.")
    return name


Metadata = Annotated[dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
                     Field(max_length=16)]


# ---- the request ---------------------------------------------------------------------------------

# --8<-- [start:create_response]
class CreateResponse(_Body):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": EXAMPLE_MODEL, "input": "Say hello in five words.", "max_output_tokens": 16}]})

    model: str
    input: Union[str, Annotated[list[InputItem], Field(min_length=1)]]
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: Int(ge=16) | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: ResponseTextParam | None = None
    include: list[Annotated[str, AfterValidator(_includable)]] | None = None
    top_logprobs: Int(ge=0, le=20) | None = None
    store: bool | None = None
    stream: bool | None = None
    stream_options: ResponseStreamOptions | None = None
    metadata: Metadata | None = None
    # --8<-- [start:advisory_fields]
    # Advisory in the spec: accepted, echoed in the response, no effect on generation.
    user: str | None = None
    safety_identifier: str | None = Field(None, max_length=64)
    prompt_cache_key: str | None = None
    max_tool_calls: Int(ge=1) | None = None  # limits built-in tool calls; there are none here
    # --8<-- [end:advisory_fields]
    # --8<-- [start:refused_fields]
    # In the spec, not servable here: accepted only at their "off" values, else a 400 that says why.
    background: bool | None = None
    reasoning: dict[str, Any] | None = None
    conversation: Any = None
    prompt: Any = None
    context_management: Any = None
    moderation: Any = None
    truncation: Literal["auto", "disabled"] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast", "ultrafast"] | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: Any = None
    # --8<-- [end:refused_fields]

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and LOGPROBS not in (info.data.get("include") or []):
            raise _refuse(f"'top_logprobs' requires 'include': ['{LOGPROBS}'].")
        return value

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and not info.data.get("stream"):
            raise _refuse("The 'stream_options' parameter is only allowed when 'stream' is enabled.")
        return value

    # --8<-- [start:refusals]
    @field_validator("background")
    @classmethod
    def _no_background(cls, value: bool | None) -> bool | None:
        if value:
            raise _refuse("Background responses are not supported: this server answers while the request is "
                          "open. Send the request without 'background', and 'stream': true to see progress.")
        return value

    @field_validator("reasoning")
    @classmethod
    def _no_reasoning(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value and any(v is not None for v in value.values()):
            raise _refuse("'reasoning' is not supported: the served model is not a reasoning model.")
        return value

    @field_validator("conversation", "prompt", "context_management", "moderation", "prompt_cache_options")
    @classmethod
    def _not_hosted_here(cls, value: Any, info: ValidationInfo) -> Any:
        reasons = {
            "conversation": "Conversations are objects stored by OpenAI's Conversations API, which this server "
                            "does not have; continue a response with 'previous_response_id' instead.",
            "prompt": "Reusable prompts are stored in OpenAI's dashboard, which this server cannot read; send "
                      "'instructions' and 'input' instead.",
            "context_management": "'context_management' (server-side compaction) is not supported by this server.",
            "moderation": "'moderation' is not supported: this server runs no moderation model.",
            "prompt_cache_options": "'prompt_cache_options' is not supported: this server reuses the KV cache of "
                                    "a matching prefix on its own and keeps it only in memory.",
        }
        if value is not None:
            raise _refuse(reasons[info.field_name or ""])
        return value

    @field_validator("truncation")
    @classmethod
    def _no_truncation(cls, value: str | None) -> str | None:
        if value == "auto":
            raise _refuse("'truncation': 'auto' is not supported: this server never drops input. A conversation "
                          "that does not fit in the context window is a 400 (context_length_exceeded).")
        return value

    @field_validator("service_tier")
    @classmethod
    def _one_tier(cls, value: str | None) -> str | None:
        if value not in (None, "auto", "default"):
            raise _refuse(f"'service_tier': {value!r} is not available: this server has one tier, 'default'.")
        return value

    @field_validator("prompt_cache_retention")
    @classmethod
    def _in_memory_only(cls, value: str | None) -> str | None:
        if value == "24h":
            raise _refuse("'prompt_cache_retention': '24h' is not supported: this server keeps its prompt cache "
                          "in memory only ('in_memory').")
        return value
    # --8<-- [end:refusals]

    @property
    def logprobs(self) -> bool:
        return LOGPROBS in (self.include or [])

    @property
    def items(self) -> list[Message | FunctionCallItem | FunctionCallOutputItem]:
        if isinstance(self.input, str):
            return [Message(role="user", content=self.input)]
        return list(self.input)  # type: ignore[arg-type]
# --8<-- [end:create_response]


class ListInputItemsQuery(BaseModel):
    """The query of ``GET /v1/responses/{id}/input_items``: a cursor page over the items."""

    limit: int = Field(20, ge=1, le=100)
    order: Literal["asc", "desc"] = "desc"
    after: str | None = None


# ---- items as they are stored and listed -----------------------------------------------------------

# --8<-- [start:input_items]
def input_items(body: CreateResponse) -> list[dict[str, Any]]:
    """The request's input as stored items: each with an id, in the shape the spec lists them.

    Messages take the spec's InputMessage shape (content as a list of parts); assistant
    messages the OutputMessage shape, as if the model had written them.
    """
    out: list[dict[str, Any]] = []
    for item in body.items:
        if isinstance(item, Message):
            parts = [InputTextContent(type="input_text", text=item.content)] if isinstance(item.content, str) \
                else item.content
            if item.role == "assistant":
                content = [{"type": "output_text", "text": part_text(p), "annotations": [], "logprobs": []}
                           for p in parts]
            else:
                content = [{"type": "input_text", "text": part_text(p)} for p in parts]
            out.append({"type": "message", "id": item.id or new_id("msg"), "role": item.role, "content": content,
                        "status": item.status or "completed"})
        elif isinstance(item, FunctionCallItem):
            out.append({"type": "function_call", "id": item.id or new_id("fc"), "call_id": item.call_id,
                        "name": item.name, "arguments": item.arguments, "status": item.status or "completed"})
        else:
            output = item.output if isinstance(item.output, str) else [
                {"type": "input_text", "text": part_text(p)} for p in item.output]
            out.append({"type": "function_call_output", "id": item.id or new_id("fco"), "call_id": item.call_id,
                        "output": output, "status": item.status or "completed"})
    return out
# --8<-- [end:input_items]


# ---- the translation -------------------------------------------------------------------------------

def _text(content: str | list[dict[str, Any]]) -> str:
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


# --8<-- [start:chat_messages]
def chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored items (earlier turns, then this request's input) as chat messages.

    A function call becomes a ``tool_calls`` entry of an assistant message; calls that follow
    each other (parallel calls), and a call right after the assistant's text, share one
    message, as chat completions would have sent them. A call's output becomes a ``tool``
    message.
    """
    messages: list[dict[str, Any]] = []
    for item in items:
        last = messages[-1] if messages else None
        if item["type"] == "message":
            messages.append({"role": item["role"], "content": _text(item["content"])})
        elif item["type"] == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            if last and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": _text(item["output"])})
    return messages
# --8<-- [end:chat_messages]


def check_call_outputs(history: list[dict[str, Any]], items: list[dict[str, Any]]) -> None:
    """Every function_call_output answers a call made earlier in the conversation, as OpenAI requires."""
    called = {item["call_id"] for item in history if item["type"] == "function_call"}
    for i, item in enumerate(items):
        if item["type"] == "function_call":
            called.add(item["call_id"])
        elif item["type"] == "function_call_output" and item["call_id"] not in called:
            raise errors.invalid_request(f"No tool call found for function call output with call_id "
                                         f"{item['call_id']!r}.", param=f"input[{i}].call_id")


# --8<-- [start:to_chat]
def to_chat(body: CreateResponse, conversation: list[dict[str, Any]]) -> CreateChatCompletionRequest:
    """The chat request that generates this response: same model, same sampling, same tools.

    ``conversation`` is every item so far: the earlier turns (from ``previous_response_id``)
    and this request's input. Instructions apply to this request only and are not stored.
    """
    messages = chat_messages(conversation)
    if body.instructions is not None:
        messages.insert(0, {"role": "system", "content": body.instructions})
    chat: dict[str, Any] = {"model": body.model, "messages": messages, "temperature": body.temperature,
                            "top_p": body.top_p, "max_completion_tokens": body.max_output_tokens,
                            "parallel_tool_calls": body.parallel_tool_calls}
    if body.tools:
        chat["tools"] = [{"type": "function", "function": {
            "name": t.name, "description": t.description, "parameters": t.parameters, "strict": t.strict}}
            for t in body.tools]
    choice = body.tool_choice
    if isinstance(choice, ToolChoiceFunction):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    elif isinstance(choice, ToolChoiceAllowed):
        chat["tool_choice"] = {"type": "allowed_tools", "allowed_tools": {"mode": choice.mode, "tools": [
            {"type": "function", "function": {"name": t.name}} for t in choice.tools]}}
    elif choice is not None:
        chat["tool_choice"] = choice
    fmt = body.text.format if body.text else None
    if isinstance(fmt, FormatJsonSchema):
        chat["response_format"] = {"type": "json_schema", "json_schema": {
            "name": fmt.name, "schema": fmt.schema_, "description": fmt.description, "strict": fmt.strict}}
    elif fmt is not None:
        chat["response_format"] = {"type": fmt.type}
    if body.logprobs:
        chat.update(logprobs=True, top_logprobs=body.top_logprobs or 0)
    return CreateChatCompletionRequest.model_validate(chat)
# --8<-- [end:to_chat]


# --8<-- [start:chat_param]
def responses_param(chat_param: str | None) -> str | None:
    """The Responses name of a chat request field that the backend refused, for the 400's ``param``."""
    if chat_param is None:
        return None
    renames = [("messages", "input"), ("max_completion_tokens", "max_output_tokens"),
               ("max_tokens", "max_output_tokens"), ("logprobs", "include"),
               ("response_format.json_schema.", "text.format."), ("response_format", "text.format"),
               ("tool_choice.allowed_tools.tools", "tool_choice.tools")]
    for old, new in renames:
        if chat_param == old or chat_param.startswith(old):
            chat_param = new + chat_param[len(old):]
            break
    return chat_param.replace(".function.", ".")
# --8<-- [end:chat_param]
