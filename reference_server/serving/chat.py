"""A chat Run's events as OpenAI's ``chat.completion`` (collected) or ``chat.completion.chunk``s (streamed)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ..backends.base import ChoiceDone, Run, TextDelta, Timings, TokenLogprob, ToolCallDelta
from .common import Responder, chat_logprobs, usage
from .types import ChatChoice, ChunkChoice, ChunkDelta, CreateChatCompletionResponse, ToolCallPart


def _tool_call_part(event: ToolCallDelta) -> ToolCallPart:
    if event.id is not None:  # the call's head: its id and name, arguments to follow
        return {"index": event.call, "id": event.id, "type": "function",
                "function": {"name": event.name or "", "arguments": event.arguments}}
    return {"index": event.call, "function": {"arguments": event.arguments}}


def _choice(index: int, delta: ChunkDelta, finish_reason: str | None = None,
            logprobs: Any = None) -> ChunkChoice:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


# --8<-- [start:stream_chunks]
async def stream_chunks(run: Run, r: Responder, want_logprobs: bool) -> AsyncIterator[dict[str, Any]]:
    """Role chunk, content (or tool-call) deltas, one finish chunk per choice, then (optionally) usage."""
    completion, cached = 0, None
    opening: ChunkDelta = {"role": "assistant", "content": None if run.calls_only else "", "refusal": None}
    try:
        for i in range(run.n):
            yield r.chunk([_choice(i, dict(opening))])  # type: ignore[arg-type]
        async for event in run.events:
            if isinstance(event, TextDelta):
                lp = chat_logprobs(event.logprobs) if want_logprobs else None
                yield r.chunk([_choice(event.index, {"content": event.text}, logprobs=lp)])
            elif isinstance(event, ToolCallDelta):
                yield r.chunk([_choice(event.index, {"tool_calls": [_tool_call_part(event)]})])
            elif isinstance(event, ChoiceDone):
                completion += event.completion_tokens
                yield r.chunk([_choice(event.index, {}, event.finish_reason)])
            elif isinstance(event, Timings):
                cached = event.cached_tokens
        if r.include_usage:
            yield r.usage_chunk(run.prompt_tokens, completion, cached)
    finally:
        await run.events.aclose()
# --8<-- [end:stream_chunks]


# --8<-- [start:collect]
async def collect(run: Run, r: Responder, want_logprobs: bool) -> CreateChatCompletionResponse:
    """The whole reply at once: the same events, accumulated per choice."""
    texts = [""] * run.n
    logprobs: list[list[TokenLogprob]] = [[] for _ in range(run.n)]
    calls: list[list[ToolCallPart]] = [[] for _ in range(run.n)]
    finish, completion, cached = ["stop"] * run.n, 0, None
    try:
        async for event in run.events:
            if isinstance(event, TextDelta):
                texts[event.index] += event.text
                logprobs[event.index] += event.logprobs
            elif isinstance(event, ToolCallDelta):
                if event.id is not None:
                    calls[event.index].append({"id": event.id, "type": "function",
                                               "function": {"name": event.name or "", "arguments": ""}})
                calls[event.index][event.call]["function"]["arguments"] += event.arguments
            elif isinstance(event, ChoiceDone):
                finish[event.index] = event.finish_reason
                completion += event.completion_tokens
            elif isinstance(event, Timings):
                cached = event.cached_tokens
    finally:
        await run.events.aclose()
    choices: list[ChatChoice] = []
    for i in range(run.n):
        message: Any = {"role": "assistant", "content": None if calls[i] else texts[i], "refusal": None}
        if calls[i]:
            message["tool_calls"] = calls[i]
        choices.append({"index": i, "message": message, "finish_reason": finish[i],
                        "logprobs": chat_logprobs(logprobs[i]) if want_logprobs else None})
    return r.body("chat.completion", choices=choices, usage=usage(run.prompt_tokens, completion, cached))  # type: ignore[return-value]
# --8<-- [end:collect]
