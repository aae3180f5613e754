"""POST /v1/chat/completions: messages in, an assistant message (or a stream of deltas) out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request

from .. import errors, tools
from ..engine import ChoiceDone, Engine, Generation, TextDelta, now
from ..generation import chat_logprobs, gather, new_id, sampling_params, system_fingerprint, usage
from ..protocol import CreateChatCompletionRequest, content_text
from ..streaming import sse_response
from .deps import get_engine, unless_disconnected
from .models import require_model

router = APIRouter()


# --8<-- [start:template_messages]
def template_messages(body: CreateChatCompletionRequest, instructions: str = "") -> list[dict[str, str]]:
    """Flattens OpenAI messages into the {role, content} pairs a chat template expects.

    The template knows nothing of tools: tools.py writes calls and results as text, and its
    ``instructions`` (the tools, a JSON format) join the system message.
    """
    out = []
    for message in body.messages:
        role = "system" if message.role == "developer" else message.role
        out.append(tools.template_message(message) if role in ("assistant", "tool")
                   else {"role": role, "content": content_text(message.content)})
    if instructions and out[0]["role"] == "system":
        out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{instructions}"}
    elif instructions:
        out.insert(0, {"role": "system", "content": instructions})
    return out
# --8<-- [end:template_messages]


UNSERVABLE = {"audio": "This model cannot produce audio; omit 'audio'.",
              "functions": "'functions' is deprecated and not supported; send 'tools' instead.",
              "function_call": "'function_call' is deprecated and not supported; send 'tool_choice' instead."}


def refuse_unservable(body: CreateChatCompletionRequest) -> None:
    for name, message in UNSERVABLE.items():
        if getattr(body, name) is not None:
            raise errors.invalid_request(message, param=name)


def _prompt(engine: Engine, body: CreateChatCompletionRequest, instructions: str = "") -> list[int]:
    try:
        text = engine.render_chat(template_messages(body, instructions))
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
    plan = tools.plan(engine, body)  # tool calling and JSON modes: instructions, grammar, reading calls
    prompt = _prompt(engine, body, plan.instructions)
    top = body.top_logprobs if body.logprobs else None
    if body.top_logprobs is not None and not body.logprobs:
        raise errors.invalid_request("'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
    params = sampling_params(engine, body, len(prompt), limit=plan.token_limit(body, engine.n_ctx - len(prompt)),
                             limit_param="max_completion_tokens" if body.max_completion_tokens else "max_tokens",
                             n=body.n or 1, logprobs=top if body.logprobs else None)
    meta = {"id": new_id("chatcmpl"), "created": now(), "model": engine.model_id,
            "system_fingerprint": system_fingerprint(engine)}
    events = plan.generate(engine, prompt, params, lambda instructions: _prompt(engine, body, instructions))
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(stream_chunks(events, meta, params.n, len(prompt), include_usage, bool(body.logprobs),
                                          plan.new_reply))
    return await unless_disconnected(request, collect(events, meta, params.n, len(prompt), bool(body.logprobs),
                                                      plan.new_reply))
# --8<-- [end:create_chat_completion]


# --8<-- [start:collect]
async def collect(events: Generation, meta: dict[str, Any], n: int, prompt_tokens: int, want_logprobs: bool,
                  new_reply: Callable[[], tools.TextReply] = tools.TextReply) -> dict[str, Any]:
    got = await gather(events, n)
    replies = [new_reply() for _ in range(n)]
    for reply, text in zip(replies, got.texts):
        reply.feed(text)
    choices = [{"index": i,
                "message": replies[i].message(),
                "logprobs": chat_logprobs(got.logprobs[i]) if want_logprobs else None,
                "finish_reason": replies[i].finish_reason(got.finish_reasons[i])} for i in range(n)]
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
                        include_usage: bool, want_logprobs: bool,
                        new_reply: Callable[[], tools.TextReply] = tools.TextReply
                        ) -> AsyncIterator[dict[str, Any]]:
    """Role chunk, content (or tool-call) deltas, one finish chunk per choice, then (optionally) usage."""
    completion = 0
    replies = [new_reply() for _ in range(n)]
    try:
        for i in range(n):
            yield chunk(meta, [choice_delta(i, replies[i].opening)], with_usage_field=include_usage)
        async for event in events:
            if isinstance(event, TextDelta):
                lp = chat_logprobs(event.logprobs) if want_logprobs else None
                for delta in replies[event.index].feed(event.text):
                    yield chunk(meta, [choice_delta(event.index, delta, logprobs=lp)],
                                with_usage_field=include_usage)
            elif isinstance(event, ChoiceDone):
                completion += event.completion_tokens
                finish = replies[event.index].finish_reason(event.finish_reason)
                yield chunk(meta, [choice_delta(event.index, {}, finish)], with_usage_field=include_usage)
        if include_usage:
            yield {**meta, "object": "chat.completion.chunk", "choices": [],
                   "usage": usage(prompt_tokens, completion)}
    finally:
        await events.aclose()
# --8<-- [end:stream_chunks]
