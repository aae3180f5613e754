"""Completion Runs (one per prompt) as OpenAI's legacy ``text_completion``, collected or streamed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ..backends.base import ChoiceDone, Run, TextDelta, Timings, TokenLogprob
from .common import Responder, completion_logprobs, usage
from .types import CompletionChoice, CreateCompletionResponse


def _choice(index: int, text: str, finish: str | None, logprobs: Any = None) -> CompletionChoice:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


async def stream_chunks(run: Run, r: Responder, want_logprobs: bool) -> AsyncIterator[dict[str, Any]]:
    """A chunk per text delta (the echoed prompt leads each choice's first), a finish chunk per choice."""
    completion, offsets, cached = 0, {}, None
    try:
        async for event in run.events:
            if isinstance(event, TextDelta):
                start = offsets.get(event.index, 0)
                text = (run.echo if start == 0 else "") + event.text
                offsets[event.index] = start + len(text)
                lp = completion_logprobs(event.logprobs, start) if want_logprobs else None
                yield r.chunk([_choice(event.index, text, None, lp)])
            elif isinstance(event, ChoiceDone):
                completion += event.completion_tokens
                yield r.chunk([_choice(event.index, "", event.finish_reason)])
            elif isinstance(event, Timings):
                cached = event.cached_tokens
        if r.include_usage:
            yield r.usage_chunk(run.prompt_tokens, completion, cached)
    finally:
        await run.events.aclose()


async def collect(runs: list[Run], r: Responder, want_logprobs: bool) -> CreateCompletionResponse:
    """Every prompt's choices, in order: prompt p's choice i has index p * n + i."""
    choices: list[CompletionChoice] = []
    completion, cached = 0, None
    try:
        for p, run in enumerate(runs):
            texts = [run.echo] * run.n
            logprobs: list[list[TokenLogprob]] = [[] for _ in range(run.n)]
            finish = ["stop"] * run.n
            async for event in run.events:
                if isinstance(event, TextDelta):
                    texts[event.index] += event.text
                    logprobs[event.index] += event.logprobs
                elif isinstance(event, ChoiceDone):
                    finish[event.index] = event.finish_reason
                    completion += event.completion_tokens
                elif isinstance(event, Timings):
                    cached = (cached or 0) + event.cached_tokens
            choices += [_choice(p * run.n + i, texts[i], finish[i],
                                completion_logprobs(logprobs[i], len(run.echo)) if want_logprobs else None)
                        for i in range(run.n)]
    finally:
        for run in runs:
            await run.events.aclose()
    prompt_tokens = sum(run.prompt_tokens for run in runs)
    return r.body(choices=choices, usage=usage(prompt_tokens, completion, cached))  # type: ignore[return-value]
