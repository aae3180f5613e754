"""An upstream's SSE stream, read back into the seam's events (backends/base.py).

The gateway asks every upstream for a stream with usage (``stream_options.include_usage``),
whether or not its client streams: one reader serves both, the first token can be timed, and
every reply ends with the token counts that limits and metrics need. The serving layer then
renders the events as it renders the local model's, so a reply through the gateway has the
same shape (and the same error events) as one from this server's own model.

Usage arrives in a chunk of its own after the last finish_reason, so a choice's
``ChoiceDone`` is held until then (one chunk later) to carry its token count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from ...errors import APIError
from ..base import ChoiceDone, Event, TextDelta, Timings, TokenLogprob, ToolCallDelta

STATUS_OF_TYPE = {"invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
                  "not_found_error": 404, "rate_limit_error": 429, "insufficient_quota": 429}


# --8<-- [start:sse_data]
async def sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The data of each server-sent event: its ``data:`` lines joined, comments and other fields skipped."""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)
# --8<-- [end:sse_data]


def upstream_error(body: Any, status: int | None = None) -> APIError:
    """An upstream's error object (OpenAI's envelope, llama-server's, vLLM's) as our APIError."""
    err = body.get("error", body) if isinstance(body, dict) else {}
    if not isinstance(err, dict):  # {"error": "some text"} (Ollama's shape)
        err = {"message": str(err)}
    type_ = err.get("type") if isinstance(err.get("type"), str) else None
    code = err.get("code") if isinstance(err.get("code"), str) else None
    status = status or STATUS_OF_TYPE.get(type_ or "", None) or (err.get("code") if isinstance(err.get("code"), int) else 500)
    return APIError(int(status), str(err.get("message") or "The upstream failed without a message."),
                    type=type_ or ("server_error" if int(status) >= 500 else "invalid_request_error"),
                    param=err.get("param") if isinstance(err.get("param"), str) else None, code=code)


def _chat_logprobs(lp: Any) -> list[TokenLogprob]:
    def one(e: dict[str, Any]) -> TokenLogprob:
        return TokenLogprob(e.get("token", ""), float(e.get("logprob", 0.0)),
                            e.get("bytes") or list(e.get("token", "").encode()),
                            [one(t) for t in e.get("top_logprobs") or []])
    return [one(e) for e in (lp or {}).get("content") or []] if isinstance(lp, dict) else []


def _completion_logprobs(lp: Any) -> list[TokenLogprob]:
    if not isinstance(lp, dict):
        return []
    tops = lp.get("top_logprobs") or []
    out = []
    for i, (token, logprob) in enumerate(zip(lp.get("tokens") or [], lp.get("token_logprobs") or [])):
        top = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        out.append(TokenLogprob(token, float(logprob or 0.0), list(token.encode()),
                                [TokenLogprob(t, float(v), list(t.encode())) for t, v in top.items()]))
    return out


# --8<-- [start:chunk_reader]
class ChunkReader:
    """Turns the chunks of one upstream stream (chat or legacy completions) into events."""

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.deltas: Counter[int] = Counter()   # content deltas per choice: counts when usage is missing
        self.held: list[ChoiceDone] = []        # finished choices, waiting for the usage chunk
        self.prompt_tokens = 0
        self.cached_tokens = 0  # what the upstream's prefix cache supplied, if its usage says
        self.usage_seen = False

    def read(self, chunk: dict[str, Any]) -> list[Event]:
        if "error" in chunk or chunk.get("object") == "error":
            raise upstream_error(chunk)
        events: list[Event] = []
        for choice in chunk.get("choices") or []:
            i = int(choice.get("index", 0))
            events += self._choice(i, choice)
            if choice.get("finish_reason"):
                self.held.append(ChoiceDone(i, choice["finish_reason"], 0))
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage_seen = True
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.cached_tokens = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
            events += self.finish(int(usage.get("completion_tokens") or 0))
        return events

    def _choice(self, i: int, choice: dict[str, Any]) -> list[Event]:
        if not self.chat:
            text = choice.get("text") or ""
            if not text:
                return []
            self.deltas[i] += 1
            return [TextDelta(i, text, _completion_logprobs(choice.get("logprobs")))]
        delta = choice.get("delta") or {}
        out: list[Event] = []
        if delta.get("content"):
            self.deltas[i] += 1
            out.append(TextDelta(i, delta["content"], _chat_logprobs(choice.get("logprobs"))))
        for call in delta.get("tool_calls") or []:
            function = call.get("function") or {}
            self.deltas[i] += 1
            out.append(ToolCallDelta(i, int(call.get("index", 0)), call.get("id"), function.get("name"),
                                     function.get("arguments") or ""))
        return out

    def finish(self, completion_tokens: int | None = None) -> list[Event]:
        """The held ChoiceDone events, with the usage's completion tokens shared out among them."""
        done, self.held = self.held, []
        if not done:
            return []
        counts = [self.deltas[d.index] for d in done]
        if completion_tokens is not None:  # the usage is the truth; deltas only split it
            counts[-1] = max(0, completion_tokens - sum(counts[:-1]))
        return [Timings(self.prompt_tokens, self.cached_tokens),
                *(ChoiceDone(d.index, d.finish_reason, c) for d, c in zip(done, counts))]
# --8<-- [end:chunk_reader]
