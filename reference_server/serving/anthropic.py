"""A chat Run's events as Anthropic's ``message``, or as its stream of named server-sent events.

OpenAI's stream is data-only SSE of one kind of chunk, ended by ``[DONE]``. Anthropic's names
each event (``event: content_block_delta``) and nests the reply in blocks: ``message_start``,
then for each block (text, or one tool call) ``content_block_start``, its deltas
(``text_delta``, or ``input_json_delta`` with a piece of the arguments' JSON) and
``content_block_stop``; then ``message_delta`` with the stop reason and the usage, and
``message_stop``. ``ping`` may come at any time. An error after the stream has started is an
``error`` event.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi.sse import EventSourceResponse, format_sse_event

from ..backends.base import ChoiceDone, Run, TextDelta, Timings, ToolCallDelta
from ..errors import APIError
from .sse import SSE_HEADERS

log = logging.getLogger("reference_server")

# --8<-- [start:stop_reasons]
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
# --8<-- [end:stop_reasons]

# --8<-- [start:error_types]
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
               503: "overloaded_error", 529: "overloaded_error"}


def error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's envelope; its error type follows from the status."""
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}
# --8<-- [end:error_types]


def usage(prompt_tokens: int, output_tokens: int, cached: int = 0) -> dict[str, int]:
    """Anthropic counts cached prompt tokens apart: input + cache reads + cache writes is the prompt."""
    return {"input_tokens": prompt_tokens - cached, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached, "output_tokens": output_tokens}


@dataclass(frozen=True)
class Reply:
    """What the message's events repeat."""

    id: str
    model: str

    @classmethod
    def start(cls, model: str) -> "Reply":
        return cls(f"msg_{uuid.uuid4().hex[:24]}", model)

    def message(self, content: list[dict[str, Any]], stop_reason: str | None, usage: dict[str, int],
                stop_sequence: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": content,
                "stop_reason": stop_reason, "stop_sequence": stop_sequence, "usage": usage}


def stop_reason(done: ChoiceDone | None) -> tuple[str, str | None]:
    """Anthropic's stop_reason and stop_sequence: "stop_sequence" when one of the client's ended the text."""
    if done is None:
        return "end_turn", None
    if done.finish_reason == "stop" and done.stop_sequence:
        return "stop_sequence", done.stop_sequence
    return STOP_REASONS.get(done.finish_reason, done.finish_reason), None


def _input(arguments: str) -> dict[str, Any]:
    """A call's arguments as an object; cut off by max_tokens, they are not JSON: the stop reason says so."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# --8<-- [start:stream_events]
async def stream_events(run: Run, reply: Reply) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs: a block opens at its first delta and closes when the next opens."""
    index, open_block = -1, None
    done: ChoiceDone | None = None
    completion, cached = 0, 0

    def start(block: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        nonlocal index, open_block
        out = stop()
        index, open_block = index + 1, block["type"]
        return [*out, ("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})]

    def stop() -> list[tuple[str, dict[str, Any]]]:
        nonlocal open_block
        if open_block is None:
            return []
        open_block = None
        return [("content_block_stop", {"type": "content_block_stop", "index": index})]

    def delta(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": body}

    try:
        yield "message_start", {"type": "message_start",
                                "message": reply.message([], None, usage(run.prompt_tokens, 0))}
        yield "ping", {"type": "ping"}
        async for event in run.events:
            if isinstance(event, TextDelta) and event.text:
                if open_block != "text":
                    for item in start({"type": "text", "text": ""}):
                        yield item
                yield delta({"type": "text_delta", "text": event.text})
            elif isinstance(event, ToolCallDelta):
                if event.id is not None:
                    for item in start({"type": "tool_use", "id": event.id, "name": event.name or "", "input": {}}):
                        yield item
                if event.arguments:
                    yield delta({"type": "input_json_delta", "partial_json": event.arguments})
            elif isinstance(event, ChoiceDone):
                done, completion = event, event.completion_tokens
            elif isinstance(event, Timings):
                cached = event.cached_tokens
        for item in stop():
            yield item
        reason, sequence = stop_reason(done)
        yield "message_delta", {"type": "message_delta",
                                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                                "usage": usage(run.prompt_tokens, completion, cached)}
        yield "message_stop", {"type": "message_stop"}
    finally:
        await run.events.aclose()
# --8<-- [end:stream_events]


async def collect(run: Run, reply: Reply) -> dict[str, Any]:
    """The whole message: a text block (if any text), then a tool_use block per call."""
    text, calls = "", []
    done: ChoiceDone | None = None
    completion, cached = 0, 0
    try:
        async for event in run.events:
            if isinstance(event, TextDelta):
                text += event.text
            elif isinstance(event, ToolCallDelta):
                if event.id is not None:
                    calls.append({"type": "tool_use", "id": event.id, "name": event.name or "", "arguments": ""})
                calls[-1]["arguments"] += event.arguments
            elif isinstance(event, ChoiceDone):
                done, completion = event, event.completion_tokens
            elif isinstance(event, Timings):
                cached = event.cached_tokens
    finally:
        await run.events.aclose()
    content = [{"type": "text", "text": text}] if text else []
    content += [{"type": "tool_use", "id": c["id"], "name": c["name"], "input": _input(c["arguments"])} for c in calls]
    reason, sequence = stop_reason(done)
    return reply.message(content, reason, usage(run.prompt_tokens, completion, cached), sequence)


# --8<-- [start:named_sse]
def _encode(event: str, data: dict[str, Any]) -> bytes:
    return format_sse_event(event=event, data_str=json.dumps(data, ensure_ascii=False, separators=(",", ":")))


async def _frames(events: AsyncIterator[tuple[str, dict[str, Any]]]) -> AsyncIterator[bytes]:
    try:
        async for event, data in events:
            yield _encode(event, data)
    except APIError as exc:  # the response has started: the error travels as an event
        yield _encode("error", error_body(exc.status, exc.message))
    except Exception:
        log.exception("error while streaming")
        yield _encode("error", error_body(500, "The server had an error while processing your request."))
    finally:
        await events.aclose()


def sse_response(events: AsyncIterator[tuple[str, dict[str, Any]]]) -> EventSourceResponse:
    return EventSourceResponse(_frames(events), headers=SSE_HEADERS)
# --8<-- [end:named_sse]
