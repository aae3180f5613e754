"""POST /v1/completions: the legacy text-in, text-out endpoint (no chat template)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request

from .. import errors
from ..engine import ChoiceDone, Engine, TextDelta, now
from ..generation import completion_logprobs, gather, new_id, sampling_params, system_fingerprint, usage
from ..protocol import CreateCompletionRequest
from ..streaming import sse_response
from .deps import get_engine, unless_disconnected
from .models import require_model

router = APIRouter()


def _prompts(engine: Engine, prompt: Any) -> list[list[int]]:
    """A string, a list of strings, a token list, or a list of token lists: one prompt each."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if prompt and isinstance(prompt[0], int):
        prompt = [prompt]
    out = []
    for i, item in enumerate(prompt):
        if isinstance(item, str):
            out.append(engine.tokenize(item, special=False))
        else:
            if not item or not all(engine.valid_token(t) for t in item):
                raise errors.invalid_request("Token ids must be non-empty and within the model's vocabulary.",
                                             param=f"prompt[{i}]")
            out.append(list(item))
    if not out:
        raise errors.invalid_request("'prompt' must not be empty.", param="prompt")
    return out


@router.post("/completions", response_model=None)
async def create_completion(body: CreateCompletionRequest, request: Request, engine: Engine = Depends(get_engine)):
    engine.require_ready()
    require_model(engine, body.model)
    if body.suffix:
        raise errors.invalid_request("'suffix' (fill-in-the-middle) is not supported by this server.",
                                     param="suffix")
    n = body.n or 1
    if body.best_of is not None and body.best_of not in (0, 1, n):
        raise errors.invalid_request("'best_of' other than 'n' is not supported by this server.", param="best_of")
    prompts = _prompts(engine, body.prompt)
    plans = [sampling_params(engine, body, len(p), limit=body.max_tokens, limit_param="max_tokens",
                             n=n, logprobs=body.logprobs) for p in prompts]
    if body.stream and len(prompts) > 1:
        raise errors.invalid_request("Streaming supports a single prompt per request.", param="prompt")
    meta = {"id": new_id("cmpl"), "created": now(), "model": engine.model_id,
            "system_fingerprint": system_fingerprint(engine)}
    echo = [engine.detokenize(p) if body.echo else "" for p in prompts]
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(_stream(engine.generate(prompts[0], plans[0]), meta, echo[0], len(prompts[0]),
                                    include_usage, body.logprobs is not None))
    return await unless_disconnected(request, _collect(engine, prompts, plans, n, echo, meta, body.logprobs))


async def _collect(engine: Engine, prompts: list[list[int]], plans: list[Any], n: int, echo: list[str],
                   meta: dict[str, Any], logprobs: int | None) -> dict[str, Any]:
    choices, completion = [], 0
    for p_index, (prompt, params) in enumerate(zip(prompts, plans)):
        got = await gather(engine.generate(prompt, params), n, echo[p_index])
        completion += got.completion_tokens
        for i in range(n):
            choices.append({"index": p_index * n + i, "text": got.texts[i], "finish_reason": got.finish_reasons[i],
                            "logprobs": completion_logprobs(got.logprobs[i], len(echo[p_index]))
                            if logprobs is not None else None})
    prompt_tokens = sum(len(p) for p in prompts)
    return {**meta, "object": "text_completion", "choices": choices, "usage": usage(prompt_tokens, completion)}


async def _stream(events: AsyncIterator[Any], meta: dict[str, Any], echo: str, prompt_tokens: int,
                  include_usage: bool, want_logprobs: bool) -> AsyncIterator[dict[str, Any]]:
    def chunk(index: int, text: str, finish: str | None, logprobs: Any = None) -> dict[str, Any]:
        out = {**meta, "object": "text_completion",
               "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}]}
        if include_usage:
            out["usage"] = None
        return out

    completion, offsets = 0, {}
    try:
        async for event in events:
            if isinstance(event, TextDelta):
                start = offsets.get(event.index, 0)
                text = (echo if start == 0 else "") + event.text
                offsets[event.index] = start + len(text)
                lp = completion_logprobs(event.logprobs, start) if want_logprobs else None
                yield chunk(event.index, text, None, lp)
            elif isinstance(event, ChoiceDone):
                completion += event.completion_tokens
                yield chunk(event.index, "", event.finish_reason)
        if include_usage:
            yield {**meta, "object": "text_completion", "choices": [], "usage": usage(prompt_tokens, completion)}
    finally:
        await events.aclose()
