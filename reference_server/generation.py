"""From an OpenAI request to ``SamplingParams``, and the pieces every response shares.

Both /v1/chat/completions and /v1/completions go through ``sampling_params``: the context
window is checked here, once, with the numbers in the error message.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

from . import errors
from .engine import ChoiceDone, Engine, Generation, TextDelta, TokenLogprob
from .protocol import _Sampling
from .sampling import SamplingParams


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def system_fingerprint(engine: Engine) -> str:
    """Changes when the backend configuration changes, as OpenAI's does (seed reproducibility)."""
    import llama_cpp

    s = engine.settings
    key = f"{llama_cpp.__version__}|{s.model_path.name}|{engine.created}|{s.n_ctx}"
    return "fp_" + hashlib.sha256(key.encode()).hexdigest()[:10]


# --8<-- [start:usage]
def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
# --8<-- [end:usage]


def _logit_bias(engine: Engine, bias: dict[str, int] | None) -> dict[int, float]:
    out: dict[int, float] = {}
    for key, value in (bias or {}).items():
        if not key.lstrip("-").isdigit() or not engine.valid_token(int(key)):
            raise errors.invalid_request(f"Invalid key in 'logit_bias': {key!r} is not a token id of this model.",
                                         param="logit_bias")
        # -100 / 100 mean "ban" / "force" in OpenAI's API; in logit space that is infinite.
        out[int(key)] = float("-inf") if value == -100 else float(value)
    return out


# --8<-- [start:sampling_params]
def sampling_params(engine: Engine, body: _Sampling, prompt_tokens: int, *, limit: int | None,
                    limit_param: str, n: int = 1, grammar: str | None = None,
                    logprobs: int | None = None) -> SamplingParams:
    """Resolves defaults and refuses a request that cannot fit in the context window."""
    if body.stream_options is not None and not body.stream:
        raise errors.invalid_request("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                                     param="stream_options")
    room = engine.n_ctx - prompt_tokens
    if limit is None:
        if room <= 0:
            raise errors.context_length_exceeded(prompt_tokens, 0, engine.n_ctx, "messages")
        limit = room
    elif limit > room:
        raise errors.context_length_exceeded(prompt_tokens, limit, engine.n_ctx, limit_param)
    return SamplingParams(
        max_tokens=limit,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=40 if body.top_k is None else body.top_k,
        min_p=0.05 if body.min_p is None else body.min_p,
        repeat_penalty=body.repeat_penalty or 1.0,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        seed=body.seed,
        logit_bias=_logit_bias(engine, body.logit_bias),
        stop=tuple(body.stop_list()),
        grammar=grammar,
        logprobs=logprobs,
        n=n,
    )
# --8<-- [end:sampling_params]


def chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    def one(e: TokenLogprob) -> dict[str, Any]:
        return {"token": e.token, "logprob": e.logprob, "bytes": e.bytes}
    return {"content": [{**one(e), "top_logprobs": [one(t) for t in e.top_logprobs]} for e in entries],
            "refusal": None}


def completion_logprobs(entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """The legacy /v1/completions shape: parallel arrays."""
    offsets, pos = [], offset
    for e in entries:
        offsets.append(pos)
        pos += len(e.token)
    return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t.token: t.logprob for t in e.top_logprobs} for e in entries],
            "text_offset": offsets}


@dataclass
class Gathered:
    """A whole generation, choice by choice, for the non-streamed responses."""

    texts: list[str]
    logprobs: list[list[TokenLogprob]]
    finish_reasons: list[str]
    completion_tokens: int


async def gather(events: Generation, n: int, prefix: str = "") -> Gathered:
    out = Gathered([prefix] * n, [[] for _ in range(n)], ["stop"] * n, 0)
    async for event in events:
        if isinstance(event, TextDelta):
            out.texts[event.index] += event.text
            out.logprobs[event.index] += event.logprobs
        elif isinstance(event, ChoiceDone):
            out.finish_reasons[event.index] = event.finish_reason
            out.completion_tokens += event.completion_tokens
    return out
