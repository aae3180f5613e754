"""Tool calling and JSON modes, for a model whose chat template knows neither.

``plan`` turns a chat request's tools, tool_choice and response_format into a ``Plan``: text
for the system message, a llama.cpp grammar that constrains the output, and how the output is
read back (``ToolCallReply``, which turns the model's ``<tool_call>[...]`` text into content and
tool-call events). A request without tools or a response_format gets a plan that changes
nothing. Every mode is enforced by a grammar, never hoped for; a schema the grammar cannot
enforce, and anything else wrong with tools, is a 400 naming the parameter.

How each mode is prompted and constrained, and why (auto's two steps, what a 135M model does
with tools, budgets, stop sequences, parallel calls), is in chapter 7's "How the server does it".
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jsonschema

from ... import errors
from ...protocol import (AssistantMessage, ChatCompletionAllowedToolsChoice, ChatCompletionNamedToolChoice,
                         ChatCompletionNamedToolChoiceCustom, CreateChatCompletionRequest, ToolMessage,
                         content_text)
from ...sampling import SamplingParams
from ..base import ChoiceDone, Event, Events, TextDelta, Timings, ToolCallDelta
from .grammars import Rules, UnsupportedSchema, schema_rules

if TYPE_CHECKING:
    from .backend import LocalBackend

DEFAULT_MAX_TOKENS = 512  # tool calls and JSON replies when the client sets no max_tokens
MAX_PARALLEL_CALLS = 8

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"

# --8<-- [start:tools_prompt]
TOOLS_PROMPT = """\
You can call functions. Here they are, with a JSON Schema of their arguments:
<tools>
{tools}
</tools>
To call functions, reply with only this, and nothing else:
<tool_call>[{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}]</tool_call>"""

CHOICE_PROMPT = {"auto": "If no function is needed, reply with an empty list: <tool_call>[]</tool_call>",
                 "required": "Call a function now."}
# --8<-- [end:tools_prompt]


# ---- the plan ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """How one chat request is prompted, generated and read back."""

    instructions: str = ""          # joins the system message
    grammar: str | None = None      # GBNF
    calls: bool = False             # the output may hold tool calls
    default_max_tokens: int | None = None
    answer: "Plan | None" = None    # auto: how to answer when the model calls nothing

    def token_limit(self, body: CreateChatCompletionRequest, room: int) -> int | None:
        if body.token_limit is not None or self.default_max_tokens is None or room <= 0:
            return body.token_limit
        return min(self.default_max_tokens, room)

    def _constrain(self, params: SamplingParams) -> SamplingParams:
        if self.grammar is None:
            return params
        return dataclasses.replace(params, grammar=self.grammar, stop=())

    def generate(self, backend: LocalBackend, prompt: list[int], params: SamplingParams,
                 render: Callable[[str], list[int]]) -> AsyncIterator[Event]:
        """Queues the generation (both steps with ``auto``); ``render`` makes a prompt from instructions."""
        first = backend.generate(prompt, self._constrain(params))
        if self.answer is None:
            return first
        try:
            answer = backend.generate(render(self.answer.instructions), self.answer._constrain(params))
        except BaseException:
            first.cancel.set()
            raise
        return _answer_unless_called(first, answer, params.n)

    @property
    def calls_only(self) -> bool:
        """The reply can only be tool calls (named or required): its content is null."""
        return self.calls and self.answer is None


@dataclass
class _Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    rules: Rules


# --8<-- [start:plan]
def plan(backend: LocalBackend, body: CreateChatCompletionRequest) -> Plan:
    """Validates tools, tool_choice, response_format and the tool messages; 400 on anything wrong."""
    _check_tool_messages(body)
    choice, tools = _tool_choice(body, _tools(backend, body))
    content = _response_format(backend, body)
    answer = Plan(instructions=_format_instructions(body) if content else "",
                  grammar=content.gbnf() if content else None,
                  default_max_tokens=DEFAULT_MAX_TOKENS if content else None)
    if choice == "none" or choice == "auto" and isinstance(body.messages[-1], ToolMessage):
        return answer
    if body.logprobs:
        raise errors.invalid_request("'logprobs' is not supported together with 'tools'.", param="logprobs")
    named = choice not in ("auto", "required")
    if named:  # the other tools would only distract a small model (and cost prompt tokens)
        tools = [t for t in tools if t.name == choice]
    shown = "\n".join(json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters})
                      for t in tools)
    instructions = [TOOLS_PROMPT.format(tools=shown),
                    CHOICE_PROMPT.get(choice, f"Call the function {choice} now.")]
    grammar = _calls_grammar(tools, least=0 if choice == "auto" else 1,
                             most=1 if named or body.parallel_tool_calls is False else MAX_PARALLEL_CALLS)
    return Plan(instructions="\n".join(instructions), grammar=grammar, calls=True,
                default_max_tokens=DEFAULT_MAX_TOKENS, answer=answer if choice == "auto" else None)
# --8<-- [end:plan]


def _tools(backend: LocalBackend, body: CreateChatCompletionRequest) -> list[_Tool]:
    out: list[_Tool] = []
    for i, tool in enumerate(body.tools or []):
        fn, where = tool.function, f"tools[{i}].function"
        if any(t.name == fn.name for t in out):
            raise errors.invalid_request(f"Duplicate function name {fn.name!r} in 'tools'.", param=f"{where}.name")
        params = fn.parameters if fn.parameters is not None else {"type": "object", "properties": {}}
        if params.get("type") != "object":
            raise errors.invalid_request(f"Invalid schema for function {fn.name!r}: 'parameters' must be a JSON "
                                         "Schema of type 'object'.", param=f"{where}.parameters")
        rules = _schema_rules(backend, params, f"t{i}-", f"{where}.parameters",
                              f"Invalid schema for function {fn.name!r}")
        out.append(_Tool(fn.name, fn.description or "", params, rules))
    return out


def _tool_choice(body: CreateChatCompletionRequest, tools: list[_Tool]) -> tuple[str, list[_Tool]]:
    """'none' | 'auto' | 'required' | the name of the forced function, and the tools it may call."""
    choice = body.tool_choice
    if not tools:
        if choice is not None and choice != "none":
            raise errors.invalid_request("Invalid value for 'tool_choice': 'tool_choice' is only allowed when "
                                         "'tools' are specified.", param="tool_choice")
        return "none", tools
    if choice is None:
        return "auto", tools
    if isinstance(choice, ChatCompletionNamedToolChoiceCustom):
        raise errors.invalid_request("Custom tools are not supported by this server; declare a 'function' tool "
                                     "and name it with {'type': 'function', ...}.", param="tool_choice.type")
    if isinstance(choice, ChatCompletionNamedToolChoice):
        if not any(t.name == choice.function.name for t in tools):
            raise errors.invalid_request(f"Invalid value for 'tool_choice': no function named "
                                         f"{choice.function.name!r} in 'tools'.", param="tool_choice")
        return choice.function.name, tools
    if isinstance(choice, ChatCompletionAllowedToolsChoice):  # a subset, in mode auto or required
        allowed = []
        for i, ref in enumerate(choice.allowed_tools.tools):
            if not any(t.name == ref.function.name for t in tools):
                raise errors.invalid_request(
                    f"Invalid value for 'tool_choice': no function named {ref.function.name!r} in 'tools'.",
                    param=f"tool_choice.allowed_tools.tools[{i}].function.name")
            allowed.append(ref.function.name)
        return choice.allowed_tools.mode, [t for t in tools if t.name in allowed]
    return choice, tools


def _response_format(backend: LocalBackend, body: CreateChatCompletionRequest) -> Rules | None:
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    schema = {"type": "object"}
    if fmt.type == "json_schema" and fmt.json_schema.schema_ is not None:
        schema = fmt.json_schema.schema_
    return _schema_rules(backend, schema, "json-", "response_format.json_schema.schema",
                         "Invalid schema for response_format")


def _format_instructions(body: CreateChatCompletionRequest) -> str:
    fmt = body.response_format
    if fmt.type == "json_schema" and fmt.json_schema.schema_ is not None:
        about = f" ({fmt.json_schema.description})" if fmt.json_schema.description else ""
        return (f"Answer with JSON{about} that follows this JSON Schema, named {fmt.json_schema.name}:\n"
                + json.dumps(fmt.json_schema.schema_))
    return "Answer with a JSON object."


def _schema_rules(backend: LocalBackend, schema: dict[str, Any], prefix: str, param: str, what: str) -> Rules:
    try:
        return _checked_rules(json.dumps(schema), prefix, backend.grammar_from_json_schema)
    except jsonschema.SchemaError as exc:
        raise errors.invalid_request(f"{what}: not a valid JSON Schema: {exc.message}", param=param) from exc
    except UnsupportedSchema as exc:
        raise errors.invalid_request(f"{what}: {exc}", param=param, code="unsupported_schema") from exc


@functools.lru_cache(maxsize=256)
def _checked_rules(schema_json: str, prefix: str, to_gbnf: Callable[[dict[str, Any]], str]) -> Rules:
    """Once per distinct schema (about 2 ms each): agents send the same tools with every request."""
    schema = json.loads(schema_json)
    jsonschema.validators.validator_for(schema).check_schema(schema)
    return schema_rules(schema, to_gbnf, prefix)


def _check_tool_messages(body: CreateChatCompletionRequest) -> None:
    """A tool result must answer a call made earlier in the conversation, as OpenAI requires."""
    called: set[str] = set()
    for i, message in enumerate(body.messages):
        if isinstance(message, AssistantMessage):
            called.update(call.id for call in message.tool_calls or ())
        elif isinstance(message, ToolMessage) and message.tool_call_id not in called:
            raise errors.invalid_request(
                f"Invalid parameter: messages with role 'tool' must be a response to a preceding message with "
                f"'tool_calls'; no call has the id {message.tool_call_id!r}.", param=f"messages[{i}].tool_call_id")


# ---- grammar ----------------------------------------------------------------------------------------

# --8<-- [start:calls_grammar]
def _calls_grammar(tools: list[_Tool], *, least: int, most: int) -> str:
    """``<tool_call>[...]</tool_call>`` holding least..most calls, each to one of ``tools``."""
    rules = {"space": '" "?'}
    for i, tool in enumerate(tools):
        rules.update(tool.rules.rules)
        rules[f"call{i}"] = (rf'"{{" space "\"name\"" space ":" space "\"{tool.name}\"" space "," space '
                             rf'"\"arguments\"" space ":" space {tool.rules.root} "}}"')
    rules["call"] = " | ".join(f"call{i}" for i in range(len(tools)))
    calls = "call" + (f' ("," space call){{0,{most - 1}}}' if most > 1 else "")
    rules["tool-calls"] = f'"{CALL_OPEN}[" {calls if least else f"({calls})?"} "]{CALL_CLOSE}"'
    return Rules("tool-calls", rules).gbnf()
# --8<-- [end:calls_grammar]


async def _answer_unless_called(first: AsyncIterator[Event], answer: AsyncIterator[Event],
                                n: int) -> AsyncIterator[Event]:
    """Step 1's events; a choice whose call list is empty stops at ``[]`` and takes step 2's answer."""
    text = [""] * n
    called: list[bool | None] = [None] * n  # None: not decided yet
    spent = [0] * n
    try:
        async for event in first:
            if isinstance(event, Timings):
                yield event
                continue
            i = event.index
            if isinstance(event, ChoiceDone):
                if called[i] is False:
                    spent[i] = event.completion_tokens
                    continue
                called[i] = True  # a call, or cut before deciding: either way, this is the reply
            elif called[i] is None:
                text[i] += event.text
                opened = text[i].find(CALL_OPEN + "[")
                decided = text[i][opened + len(CALL_OPEN) + 1:] if opened >= 0 else ""
                if decided:
                    called[i] = decided[0] != "]"
                    if not called[i]:
                        event = TextDelta(i, event.text[:len(event.text) - len(decided) + 1])
            elif called[i] is False:
                continue
            if all(called):
                await answer.aclose()  # no choice needs it: cancelled, ideally before it starts
            yield event
        if all(called):
            return
        async for event in answer:
            if isinstance(event, Timings) or called[event.index] is False:
                if isinstance(event, ChoiceDone):  # usage counts both steps
                    both = event.completion_tokens + spent[event.index]
                    event = dataclasses.replace(event, completion_tokens=both)
                yield event
    finally:
        await first.aclose()
        await answer.aclose()


# ---- the conversation as text ---------------------------------------------------------------------

# --8<-- [start:template_message]
def template_message(message: AssistantMessage | ToolMessage) -> dict[str, str]:
    """An assistant message's calls and a tool's result, as text the model reads."""
    if isinstance(message, ToolMessage):
        return {"role": "tool", "content": content_text(message.content)}
    text = content_text(message.content)
    if message.tool_calls:
        calls = ", ".join(json.dumps({"name": c.function.name, "arguments": _arguments(c.function.arguments)})
                          for c in message.tool_calls)
        text = (text + "\n" if text else "") + f"{CALL_OPEN}[{calls}]{CALL_CLOSE}"
    return {"role": "assistant", "content": text}
# --8<-- [end:template_message]


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:  # shown as the model (or client) wrote it
        return text


# ---- reading the output back --------------------------------------------------------------------

_CALL_HEAD = re.compile(r'\{ ?"name" ?: ?"([A-Za-z0-9_-]+)" ?, ?"arguments" ?: ?(?=\S)')


async def read_calls(events: Events, plan: Plan, n: int) -> AsyncIterator[Event]:
    """The model's text as content and tool-call events, choice by choice (``ToolCallReply``)."""
    replies = [ToolCallReply(i, may_answer=plan.answer is not None) for i in range(n)]
    try:
        async for event in events:
            if isinstance(event, TextDelta):
                for out in replies[event.index].feed(event.text):
                    yield out
            elif isinstance(event, ChoiceDone):
                yield dataclasses.replace(event, finish_reason=replies[event.index].finish_reason(event.finish_reason))
            else:
                yield event
    finally:
        await events.aclose()


# --8<-- [start:tool_call_reply]
class ToolCallReply:
    """One choice's output, fed as it is generated, read as an answer or as tool calls.

    The grammar fixes the shape, so a small scanner suffices. With ``auto``, the character
    after ``<tool_call>[`` tells a call (``{``) from an empty list (``]``), after which comes
    step 2's answer, read as content. In a call, the name is known once the call's head is
    complete, and the arguments are passed on as they arrive, up to the brace that closes
    them. Streams and plain responses use the same scanner, so they cannot disagree.
    """

    def __init__(self, index: int, may_answer: bool) -> None:
        self.index = index
        self.mode: str | None = None if may_answer else "calls"  # None until the list opens
        self.calls = 0
        self._buf, self._pos, self._state = "", 0, "between"
        self._depth, self._in_string, self._escaped = 0, False, False

    def feed(self, text: str) -> list[Event]:
        if self.mode is None:  # auto: "<tool_call>[" then "]" (no call: an answer follows) or a call
            self._buf += text
            decided = self._buf[len(CALL_OPEN) + 1:]
            if not decided:
                return []
            self.mode = "answer" if decided[0] == "]" else "calls"
            text = decided[1:] if self.mode == "answer" else ""
        if self.mode == "answer":
            return [TextDelta(self.index, text)] if text else []
        self._buf += text
        out: list[Event] = []
        while self._pos < len(self._buf) and self._state != "done":
            if self._state == "between":
                c = self._buf[self._pos]
                if c == "{":
                    self._state = "head"
                    continue
                self._state = "done" if c == "]" else "between"
                self._pos += 1
            elif self._state == "head":
                head = _CALL_HEAD.match(self._buf, self._pos)
                if head is None:
                    break  # the rest of the head has not been generated yet
                out.append(ToolCallDelta(self.index, self.calls, f"call_{uuid.uuid4().hex[:24]}", head.group(1)))
                self.calls += 1
                self._pos, self._state = head.end(), "arguments"
            else:
                start = self._pos
                self._scan_arguments()
                piece = self._buf[start:self._pos]
                if piece:
                    out.append(ToolCallDelta(self.index, self.calls - 1, arguments=piece))
        return out

    def _scan_arguments(self) -> None:
        """Advances through the arguments' JSON, to its end or to the end of the text so far."""
        while self._pos < len(self._buf):
            c = self._buf[self._pos]
            self._pos += 1
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif c == "\\":
                    self._escaped = True
                elif c == '"':
                    self._in_string = False
            elif c == '"':
                self._in_string = True
            elif c in "{[":
                self._depth += 1
            elif c in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self._state = "between"
                    return

    def finish_reason(self, reason: str) -> str:
        return "tool_calls" if self.calls and reason == "stop" else reason
# --8<-- [end:tool_call_reply]
