"""A Run's events in Ollama's wire format: NDJSON lines, the last one ``done: true`` with the metrics.

Ollama streams by default, one JSON object per line (``application/x-ndjson``), no ``data:``
prefix and no ``[DONE]``: the line with ``done: true`` ends the reply and carries why
(``done_reason``), the token counts (``prompt_eval_count``, ``eval_count``) and the time spent,
in nanoseconds. Tool calls arrive whole, their arguments an object, never in pieces. An error
after the stream has started is one more line, ``{"error": "..."}``.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi.responses import StreamingResponse

from ..backends.base import ChoiceDone, ModelInfo, Run, TextDelta, Timings, TokenLogprob, ToolCallDelta
from ..errors import APIError
from .sse import SSE_HEADERS

log = logging.getLogger("reference_server")

DONE_REASONS = {"stop": "stop", "length": "length", "tool_calls": "stop"}  # Ollama says "stop" after calls


def timestamp(seconds: float | None = None) -> str:
    """RFC 3339 in UTC, as Ollama's ``created_at`` and ``modified_at``."""
    moment = datetime.datetime.fromtimestamp(time.time() if seconds is None else seconds, datetime.timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


def ns(seconds: float) -> int:
    return int(seconds * 1e9)


# --8<-- [start:reply]
@dataclass(frozen=True)
class Reply:
    """What every line of one response repeats: the model as the client named it. And when it began."""

    model: str
    kind: Literal["chat", "generate"]
    started: float  # time.perf_counter() when the request arrived: total_duration counts from here
    logprobs: bool = False

    def line(self, text: str, **fields: Any) -> dict[str, Any]:
        body = ({"message": {"role": "assistant", "content": text}} if self.kind == "chat" else {"response": text})
        return {"model": self.model, "created_at": timestamp(), **body, **fields}

    def last(self, text: str, finish: str, prompt_tokens: int, completion_tokens: int,
             timings: Timings | None, **fields: Any) -> dict[str, Any]:
        """The line with ``done: true``: why it stopped, what it counted, how long it took."""
        return self.line(text, **fields, done=True, done_reason=DONE_REASONS.get(finish, finish),
                         total_duration=ns(time.perf_counter() - self.started), load_duration=0,
                         prompt_eval_count=prompt_tokens,
                         prompt_eval_duration=ns(timings.prompt_ms / 1000) if timings else 0,
                         eval_count=completion_tokens,
                         eval_duration=ns(timings.decode_ms / 1000) if timings else 0)
# --8<-- [end:reply]

    def loaded(self) -> dict[str, Any]:
        """The answer to an empty request, which Ollama clients send to load a model: it is loaded."""
        return self.line("", done=True, done_reason="load")


def _logprobs(entries: list[TokenLogprob]) -> list[dict[str, Any]]:
    def one(e: TokenLogprob) -> dict[str, Any]:
        return {"token": e.token, "logprob": e.logprob, "bytes": e.bytes}
    return [{**one(e), "top_logprobs": [one(t) for t in e.top_logprobs]} for e in entries]


# --8<-- [start:tool_calls]
class ToolCalls:
    """The backend streams a call's arguments in pieces; Ollama sends each call whole, as an object."""

    def __init__(self) -> None:
        self._open: dict[str, str] | None = None
        self.count = 0

    def feed(self, event: ToolCallDelta) -> list[dict[str, Any]]:
        """The calls this delta completes (a new call's head completes the previous one)."""
        done = self.flush() if event.id is not None else []
        if event.id is not None:
            self._open = {"id": event.id, "name": event.name or "", "arguments": ""}
        assert self._open is not None
        self._open["arguments"] += event.arguments
        return done

    def flush(self) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        call, self._open = self._open, None
        try:
            arguments = json.loads(call["arguments"] or "{}")
        except ValueError:
            raise APIError(400, f"The call to {call['name']!r} was cut off before its arguments were complete; "
                           "raise options.num_predict.", code="tool_call_incomplete") from None
        self.count += 1
        return [{"id": call["id"], "function": {"index": self.count - 1, "name": call["name"],
                                                "arguments": arguments}}]
# --8<-- [end:tool_calls]


# --8<-- [start:stream_lines]
async def stream_lines(run: Run, reply: Reply) -> AsyncIterator[dict[str, Any]]:
    """A line per text delta, a line per complete tool call, then the ``done`` line."""
    calls, finish, completion, timings = ToolCalls(), "stop", 0, None

    def with_calls(done: list[dict[str, Any]]) -> dict[str, Any]:
        out = reply.line("", done=False)
        out["message"]["tool_calls"] = done
        return out

    try:
        async for event in run.events:
            if isinstance(event, TextDelta):
                extra = {"logprobs": _logprobs(event.logprobs)} if reply.logprobs else {}
                yield reply.line(event.text, done=False, **extra)
            elif isinstance(event, ToolCallDelta) and reply.kind == "chat":
                if done := calls.feed(event):
                    yield with_calls(done)
            elif isinstance(event, ChoiceDone):
                finish, completion = event.finish_reason, event.completion_tokens
                if done := calls.flush():
                    yield with_calls(done)
            elif isinstance(event, Timings):
                timings = event
        yield reply.last("", finish, run.prompt_tokens, completion, timings)
    finally:
        await run.events.aclose()
# --8<-- [end:stream_lines]


async def collect(run: Run, reply: Reply) -> dict[str, Any]:
    """The whole reply as one object: the same events, accumulated."""
    text, logprobs, found = "", [], []
    calls, finish, completion, timings = ToolCalls(), "stop", 0, None
    try:
        async for event in run.events:
            if isinstance(event, TextDelta):
                text += event.text
                logprobs += event.logprobs
            elif isinstance(event, ToolCallDelta) and reply.kind == "chat":
                found += calls.feed(event)
            elif isinstance(event, ChoiceDone):
                finish, completion = event.finish_reason, event.completion_tokens
                found += calls.flush()
            elif isinstance(event, Timings):
                timings = event
    finally:
        await run.events.aclose()
    extra = {"logprobs": _logprobs(logprobs)} if reply.logprobs else {}
    out = reply.last(text, finish, run.prompt_tokens, completion, timings, **extra)
    if found:
        out["message"]["tool_calls"] = found
    return out


# --8<-- [start:ndjson]
async def _ndjson(lines: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    try:
        async for line in lines:
            yield (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    except APIError as exc:  # the response has started: the error is one more line
        yield (json.dumps({"error": exc.message}) + "\n").encode()
    except Exception:
        log.exception("error while streaming")
        yield (json.dumps({"error": "The server had an error while processing your request."}) + "\n").encode()
    finally:
        await lines.aclose()


def ndjson_response(lines: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    return StreamingResponse(_ndjson(lines), media_type="application/x-ndjson", headers=SSE_HEADERS)
# --8<-- [end:ndjson]


# ---- the model, as /api/tags, /api/show and /api/ps describe it ----------------------------------

@functools.cache
def _file_digest(path: str, size: int, mtime: float) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def digest(info: ModelInfo) -> str:
    """The model file's sha256, as Ollama names its blobs (computed once per file)."""
    path = Path(info.path)
    if not info.path or not path.is_file():
        return hashlib.sha256(info.id.encode()).hexdigest()
    stat = path.stat()
    return _file_digest(str(path), stat.st_size, stat.st_mtime)


def modified_at(info: ModelInfo) -> str:
    path = Path(info.path)
    return timestamp(path.stat().st_mtime if info.path and path.exists() else 0)


def details(info: ModelInfo) -> dict[str, Any]:
    family = info.metadata.get("general.architecture", "")
    size = info.metadata.get("general.size_label") or (
        f"{info.n_params / 1e9:.1f}B" if info.n_params >= 1e9 else f"{info.n_params / 1e6:.0f}M")
    return {"parent_model": "", "format": "gguf", "family": family, "families": [family] if family else None,
            "parameter_size": size, "quantization_level": info.description.rsplit(" ", 1)[-1]}


def model_entry(info: ModelInfo) -> dict[str, Any]:
    return {"name": info.id, "model": info.id, "modified_at": modified_at(info), "size": info.size,
            "digest": digest(info), "details": details(info)}


def _typed(value: str) -> Any:
    """GGUF values come back from llama.cpp as text; Ollama shows numbers as numbers."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def show(info: ModelInfo) -> dict[str, Any]:
    model_info = {k: _typed(v) for k, v in sorted(info.metadata.items()) if k != "tokenizer.chat_template"}
    model_info["general.parameter_count"] = info.n_params
    return {"modelfile": f"# Served by the reference server, from this GGUF file:\nFROM {info.path or info.id}\n",
            "parameters": f"num_ctx {info.n_ctx}", "template": info.chat_template,
            "details": details(info), "model_info": model_info,
            "license": info.metadata.get("general.license", ""), "capabilities": ["completion", "tools"],
            "modified_at": modified_at(info)}


NEVER = "9999-12-31T23:59:59Z"  # the model stays loaded for as long as the server runs


def running(info: ModelInfo) -> dict[str, Any]:
    return {**model_entry(info), "expires_at": NEVER, "size_vram": 0, "context_length": info.n_ctx}
