"""POST /v1/chat/completions: messages in, an assistant message (or a stream of deltas) out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request

from .. import errors
from ..engine import ChoiceDone, Engine, Generation, TextDelta, now
from ..generation import chat_logprobs, gather, new_id, sampling_params, system_fingerprint, usage
from ..protocol import CreateChatCompletionRequest, content_text
from ..streaming import sse_response
from .deps import get_engine, unless_disconnected
from .models import require_model

router = APIRouter()


# --8<-- [start:template_messages]
def template_messages(body: CreateChatCompletionRequest) -> list[dict[str, str]]:
    """Flattens OpenAI messages into the {role, content} pairs a chat template expects."""
    out = []
    for message in body.messages:
        role = "system" if message.role == "developer" else message.role
        out.append({"role": role, "content": content_text(message.content)})
    return out
# --8<-- [end:template_messages]


UNSERVABLE = {"audio": "This model cannot produce audio; omit 'audio'.",
              "functions": "'functions' is deprecated and not supported; send 'tools' instead.",
              "function_call": "'function_call' is deprecated and not supported; send 'tool_choice' instead."}


def refuse_unservable(body: CreateChatCompletionRequest) -> None:
    for name, message in UNSERVABLE.items():
        if getattr(body, name) is not None:
            raise errors.invalid_request(message, param=name)


def _prompt(engine: Engine, body: CreateChatCompletionRequest) -> list[int]:
    try:
        text = engine.render_chat(template_messages(body))
    except ValueError as exc:  # the model's template refused the conversation
        raise errors.invalid_request(f"The model's chat template rejected the messages: {exc}",
                                     param="messages") from exc
    return engine.tokenize(text)


# --8<-- [start:create_chat_completion]
@router.post("/chat/completions", response_model=None)
async def create_chat_completion(body: CreateChatCompletionRequest, request: Request,
                                 engine: Engine = Depends(get_engine)):
    engine.require_ready()
    require_model(engine, body.model)
    refuse_unservable(body)
    if body.tools or body.response_format is not None and body.response_format.type != "text":
        from ..tools import plan_structured  # tool calling and JSON modes live in tools.py
        return await plan_structured(engine, body)
    prompt = _prompt(engine, body)
    top = body.top_logprobs if body.logprobs else None
    if body.top_logprobs is not None and not body.logprobs:
        raise errors.invalid_request("'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
    params = sampling_params(engine, body, len(prompt), limit=body.token_limit,
                             limit_param="max_completion_tokens" if body.max_completion_tokens else "max_tokens",
                             n=body.n or 1, logprobs=top if body.logprobs else None)
    meta = {"id": new_id("chatcmpl"), "created": now(), "model": engine.model_id,
            "system_fingerprint": system_fingerprint(engine)}
    events = engine.generate(prompt, params)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(stream_chunks(events, meta, params.n, len(prompt), include_usage, bool(body.logprobs)))
    return await unless_disconnected(request, collect(events, meta, params.n, len(prompt), bool(body.logprobs)))
# --8<-- [end:create_chat_completion]


# --8<-- [start:collect]
async def collect(events: Generation, meta: dict[str, Any], n: int, prompt_tokens: int,
                  want_logprobs: bool) -> dict[str, Any]:
    got = await gather(events, n)
    choices = [{"index": i,
                "message": {"role": "assistant", "content": got.texts[i], "refusal": None},
                "logprobs": chat_logprobs(got.logprobs[i]) if want_logprobs else None,
                "finish_reason": got.finish_reasons[i]} for i in range(n)]
    return {**meta, "object": "chat.completion", "choices": choices,
            "usage": usage(prompt_tokens, got.completion_tokens)}
# --8<-- [end:collect]


def chunk(meta: dict[str, Any], choices: list[dict[str, Any]], *, with_usage_field: bool) -> dict[str, Any]:
    out = {**meta, "object": "chat.completion.chunk", "choices": choices}
    if with_usage_field:
        out["usage"] = None
    return out


def choice_delta(index: int, delta: dict[str, Any], finish_reason: str | None = None,
                 logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


# --8<-- [start:stream_chunks]
async def stream_chunks(events: AsyncIterator[Any], meta: dict[str, Any], n: int, prompt_tokens: int,
                        include_usage: bool, want_logprobs: bool) -> AsyncIterator[dict[str, Any]]:
    """Role chunk, content deltas, one finish chunk per choice, then (optionally) the usage chunk."""
    completion = 0
    try:
        for i in range(n):
            yield chunk(meta, [choice_delta(i, {"role": "assistant", "content": "", "refusal": None})],
                        with_usage_field=include_usage)
        async for event in events:
            if isinstance(event, TextDelta):
                lp = chat_logprobs(event.logprobs) if want_logprobs else None
                yield chunk(meta, [choice_delta(event.index, {"content": event.text}, logprobs=lp)],
                            with_usage_field=include_usage)
            elif isinstance(event, ChoiceDone):
                completion += event.completion_tokens
                yield chunk(meta, [choice_delta(event.index, {}, event.finish_reason)],
                            with_usage_field=include_usage)
        if include_usage:
            yield {**meta, "object": "chat.completion.chunk", "choices": [],
                   "usage": usage(prompt_tokens, completion)}
    finally:
        await events.aclose()
# --8<-- [end:stream_chunks]
