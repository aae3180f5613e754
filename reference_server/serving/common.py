"""What every response shares: ids, usage, the logprobs shapes, and one frozen context per response.

chat.py and completions.py render a backend's events (backends/base.py) into OpenAI's two
text formats. Both build their chunks from a ``Responder``, which holds what every chunk of one
response repeats (id, object, created, model, system_fingerprint, whether usage is asked for).
"""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends.base import TokenLogprob
from .types import ChoiceLogprobs, CompletionLogprobs, CompletionUsage


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


# --8<-- [start:usage]
def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> CompletionUsage:
    """``cached_tokens``: prompt tokens the prefix cache supplied (OpenAI's ``prompt_tokens_details``), when known."""
    out: CompletionUsage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                            "total_tokens": prompt_tokens + completion_tokens}
    if cached_tokens is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return out
# --8<-- [end:usage]


# --8<-- [start:responder]
@dataclass(frozen=True)
class Responder:
    """What every chunk of one response repeats, and the chunks made from it."""

    object: str               # "chat.completion.chunk", "text_completion"
    model: str
    fingerprint: str | None
    include_usage: bool = False  # stream_options.include_usage: every chunk has "usage" (null until the end)
    id: str = ""
    created: int = 0

    @classmethod
    def start(cls, prefix: str, object: str, model: str, fingerprint: str | None,
              include_usage: bool = False) -> "Responder":
        return cls(object, model, fingerprint, include_usage, new_id(prefix), now())

    def body(self, object: str | None = None, **fields: Any) -> dict[str, Any]:
        return {"id": self.id, "object": object or self.object, "created": self.created, "model": self.model,
                "system_fingerprint": self.fingerprint, **fields}

    def chunk(self, choices: list[Any]) -> dict[str, Any]:
        out = self.body(choices=choices)
        if self.include_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> dict[str, Any]:
        return self.body(choices=[], usage=usage(prompt_tokens, completion_tokens, cached_tokens))
# --8<-- [end:responder]


def chat_logprobs(entries: list[TokenLogprob]) -> ChoiceLogprobs:
    def one(e: TokenLogprob) -> dict[str, Any]:
        return {"token": e.token, "logprob": e.logprob, "bytes": e.bytes}
    return {"content": [{**one(e), "top_logprobs": [one(t) for t in e.top_logprobs]} for e in entries],  # type: ignore[misc]
            "refusal": None}


def completion_logprobs(entries: list[TokenLogprob], offset: int) -> CompletionLogprobs:
    """The legacy /v1/completions shape: parallel arrays."""
    offsets, pos = [], offset
    for e in entries:
        offsets.append(pos)
        pos += len(e.token)
    return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t.token: t.logprob for t in e.top_logprobs} for e in entries],
            "text_offset": offsets}


# --8<-- [start:encode_base64]
def encode_base64(vector: list[float]) -> str:
    """OpenAI's ``encoding_format: base64``: little-endian float32 bytes, base64-encoded."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
# --8<-- [end:encode_base64]
