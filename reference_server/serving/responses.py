"""A chat Run's events as a Responses ``response`` object (collected) or its semantic events (streamed).

Chat completions stream deltas of one message; the Responses API streams *events about items*.
The output is a list of items (an assistant ``message`` with ``output_text`` parts, and one
``function_call`` item per call), and each item is announced, filled and closed:

    response.created, response.in_progress
    response.output_item.added        (a message)
      response.content_part.added       (an output_text part)
      response.output_text.delta ...
      response.output_text.done
      response.content_part.done
    response.output_item.done
    response.output_item.added        (a function_call)
      response.function_call_arguments.delta ...
      response.function_call_arguments.done
    response.output_item.done
    response.completed                (or response.incomplete, or error + response.failed)

Every event carries a ``sequence_number``, counting from 0. ``Rendering.events`` produces this
sequence from the backend's events; the non-streamed body is what the same sequence ends
with, so the two cannot disagree.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.sse import EventSourceResponse, format_sse_event

from ..backends.base import ChoiceDone, Run, TextDelta, Timings, TokenLogprob, ToolCallDelta
from ..errors import APIError
from ..protocol_responses import CreateResponse, ToolChoiceAllowed, ToolChoiceFunction, new_id
from .sse import SSE_HEADERS

log = logging.getLogger("reference_server")


# --8<-- [start:response_object]
def response_object(body: CreateResponse, model: str) -> dict[str, Any]:
    """The response as ``response.created`` announces it: in progress, no output yet, and every
    setting it was made with (the spec echoes the request, so a stored response says how it was made)."""
    fmt = body.text.format if body.text and body.text.format else None
    response = {
        "id": new_id("resp"), "object": "response", "created_at": int(time.time()), "status": "in_progress",
        "completed_at": None, "error": None, "incomplete_details": None,
        "instructions": body.instructions, "model": model, "output": [],
        "tools": [{"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters,
                   "strict": t.strict} for t in body.tools or []],
        "tool_choice": _tool_choice(body), "parallel_tool_calls": body.parallel_tool_calls is not False,
        "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"},
                 "verbosity": "medium"},
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "max_output_tokens": body.max_output_tokens, "max_tool_calls": body.max_tool_calls,
        "top_logprobs": body.top_logprobs or 0, "previous_response_id": body.previous_response_id,
        "store": body.store is not False, "background": False, "reasoning": None, "service_tier": "default",
        "truncation": "disabled", "metadata": dict(body.metadata or {}),
        "safety_identifier": body.safety_identifier, "prompt_cache_key": body.prompt_cache_key,
    }
    if body.user is not None:  # the spec types user and usage as never null: absent until known
        response["user"] = body.user
    return response
# --8<-- [end:response_object]


def _tool_choice(body: CreateResponse) -> Any:
    choice = body.tool_choice
    if isinstance(choice, ToolChoiceFunction):
        return {"type": "function", "name": choice.name}
    if isinstance(choice, ToolChoiceAllowed):
        return {"type": "allowed_tools", "mode": choice.mode,
                "tools": [{"type": "function", "name": t.name} for t in choice.tools]}
    return choice or "auto"


def _usage(prompt_tokens: int, cached: int, completion_tokens: int) -> dict[str, Any]:
    return {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + completion_tokens}


def _logprobs(entries: list[TokenLogprob], *, part: bool) -> list[dict[str, Any]]:
    """An output_text part's logprobs carry bytes; the delta events' (ResponseLogProb) do not."""
    def one(e: TokenLogprob) -> dict[str, Any]:
        return {"token": e.token, "logprob": e.logprob, **({"bytes": e.bytes} if part else {})}
    return [{**one(e), "top_logprobs": [one(t) for t in e.top_logprobs]} for e in entries]


# --8<-- [start:items]
class _MessageItem:
    def __init__(self) -> None:
        self.id, self.text = new_id("msg"), ""
        self.logprobs: list[TokenLogprob] = []

    def part(self, want_logprobs: bool) -> dict[str, Any]:
        return {"type": "output_text", "text": self.text, "annotations": [],
                "logprobs": _logprobs(self.logprobs, part=True) if want_logprobs else []}

    def item(self, status: str, want_logprobs: bool = False) -> dict[str, Any]:
        content = [self.part(want_logprobs)] if status != "in_progress" else []
        return {"type": "message", "id": self.id, "status": status, "role": "assistant", "content": content}


class _CallItem:
    def __init__(self, call_id: str, name: str) -> None:
        self.id, self.call_id, self.name, self.arguments = new_id("fc"), call_id, name, ""

    def item(self, status: str) -> dict[str, Any]:
        return {"type": "function_call", "id": self.id, "call_id": self.call_id, "name": self.name,
                "arguments": self.arguments if status != "in_progress" else "", "status": status}
# --8<-- [end:items]


class Rendering:
    """One response being generated: its object, its items so far, the next sequence number.

    ``on_done`` is called with the finished response (completed, incomplete or failed) before
    the last event is sent: the router stores it there, so a client that has seen
    ``response.completed`` can already retrieve it.
    """

    def __init__(self, response: dict[str, Any], want_logprobs: bool,
                 on_done: Callable[[dict[str, Any]], None] = lambda response: None) -> None:
        self.response, self.want_logprobs, self.on_done = response, want_logprobs, on_done
        self.sequence = 0
        self.output: list[_MessageItem | _CallItem] = []

    def _event(self, type: str, **fields: Any) -> dict[str, Any]:
        event = {"type": type, **fields, "sequence_number": self.sequence}
        self.sequence += 1
        return event

    def _snapshot(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.response))  # events must not change when the response does

    # --8<-- [start:open_close]
    def _open(self, item: _MessageItem | _CallItem) -> list[dict[str, Any]]:
        self.output.append(item)
        index = len(self.output) - 1
        out = [self._event("response.output_item.added", output_index=index, item=item.item("in_progress"))]
        if isinstance(item, _MessageItem):
            out.append(self._event("response.content_part.added", item_id=item.id, output_index=index,
                                   content_index=0, part=item.part(False)))
        return out

    def _close(self, status: str) -> list[dict[str, Any]]:
        if not self.output:
            return []
        item, index = self.output[-1], len(self.output) - 1
        if isinstance(item, _MessageItem):
            done = item.item(status, self.want_logprobs)
            self.response["output"].append(done)
            lp = _logprobs(item.logprobs, part=False) if self.want_logprobs else []
            return [self._event("response.output_text.done", item_id=item.id, output_index=index, content_index=0,
                                text=item.text, logprobs=lp),
                    self._event("response.content_part.done", item_id=item.id, output_index=index, content_index=0,
                                part=done["content"][0]),
                    self._event("response.output_item.done", output_index=index, item=done)]
        done = item.item(status)
        self.response["output"].append(done)
        return [self._event("response.function_call_arguments.done", item_id=item.id, output_index=index,
                            name=item.name, arguments=item.arguments),
                self._event("response.output_item.done", output_index=index, item=done)]
    # --8<-- [end:open_close]

    # --8<-- [start:events]
    async def events(self, run: Run, *, failures_as_events: bool = True) -> AsyncIterator[dict[str, Any]]:
        """The whole event sequence. A failure after the first event becomes an ``error`` event and
        ``response.failed`` (the HTTP status is long gone); unless collecting, where it is raised."""
        yield self._event("response.created", response=self._snapshot())
        yield self._event("response.in_progress", response=self._snapshot())
        finish, completion, cached = "stop", 0, None
        try:
            async for event in run.events:
                current = self.output[-1] if self.output else None
                if isinstance(event, TextDelta):
                    if not isinstance(current, _MessageItem):
                        for out in self._close("completed") + self._open(_MessageItem()):
                            yield out
                    message = self.output[-1]
                    assert isinstance(message, _MessageItem)
                    message.text += event.text
                    message.logprobs += event.logprobs
                    if event.text:
                        lp = _logprobs(event.logprobs, part=False) if self.want_logprobs else []
                        yield self._event("response.output_text.delta", item_id=message.id,
                                          output_index=len(self.output) - 1, content_index=0, delta=event.text,
                                          logprobs=lp)
                elif isinstance(event, ToolCallDelta):
                    if event.id is not None:  # a new call: its id and name come first
                        for out in self._close("completed") + self._open(_CallItem(event.id, event.name or "")):
                            yield out
                    call = self.output[-1]
                    assert isinstance(call, _CallItem)
                    if event.arguments:
                        call.arguments += event.arguments
                        yield self._event("response.function_call_arguments.delta", item_id=call.id,
                                          output_index=len(self.output) - 1, delta=event.arguments)
                elif isinstance(event, ChoiceDone):
                    finish, completion = event.finish_reason, completion + event.completion_tokens
                elif isinstance(event, Timings) and cached is None:
                    cached = event.cached_tokens
            if not self.output:  # nothing generated: still one (empty) message, as OpenAI sends
                for out in self._open(_MessageItem()):
                    yield out
            incomplete = finish == "length"
            for out in self._close("incomplete" if incomplete else "completed"):
                yield out
            self.response.update(
                status="incomplete" if incomplete else "completed",
                incomplete_details={"reason": "max_output_tokens"} if incomplete else None,
                completed_at=None if incomplete else int(time.time()),
                usage=_usage(run.prompt_tokens, cached or 0, completion))
            self.on_done(self.response)
            yield self._event("response.incomplete" if incomplete else "response.completed", response=self._snapshot())
        except Exception as exc:
            if not failures_as_events:
                raise
            for out in self._failed(exc):
                yield out
        finally:
            await run.events.aclose()  # stops the generation now if the client went away
    # --8<-- [end:events]

    def _failed(self, exc: Exception) -> list[dict[str, Any]]:
        if isinstance(exc, APIError):
            code, message, param = exc.code or exc.type, exc.message, exc.param
        else:
            log.error("error while streaming a response", exc_info=exc)
            code, message, param = "server_error", "The server had an error while processing your request.", None
        error = self._event("error", code=code, message=message, param=param)
        self.response.update(status="failed", error={
            "code": "rate_limit_exceeded" if code == "rate_limit_exceeded" else "server_error", "message": message})
        self.on_done(self.response)
        return [error, self._event("response.failed", response=self._snapshot())]


# --8<-- [start:collect]
async def collect(run: Run, rendering: Rendering) -> dict[str, Any]:
    """The non-streamed body: the response the event sequence ends with."""
    async for _ in rendering.events(run, failures_as_events=False):
        pass
    return rendering.response
# --8<-- [end:collect]


# --8<-- [start:sse]
def sse_response(events: AsyncIterator[dict[str, Any]]) -> EventSourceResponse:
    """Each event named on its ``event:`` line, as OpenAI sends them; no ``[DONE]`` at the end."""
    async def frames() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield format_sse_event(event=event["type"], data_str=json.dumps(
                    event, ensure_ascii=False, separators=(",", ":")))
        finally:
            await events.aclose()  # type: ignore[attr-defined]
    return EventSourceResponse(frames(), headers=SSE_HEADERS)
# --8<-- [end:sse]
