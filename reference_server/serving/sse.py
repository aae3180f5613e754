"""Server-Sent Events framing for OpenAI streams.

Each chunk is one ``data: {json}`` event followed by a blank line; the stream ends with the
literal ``data: [DONE]``. The wire format comes from FastAPI's own SSE support
(``fastapi.sse``); the endpoint cannot be a plain ``yield`` endpoint because the same route
answers JSON when ``stream`` is false.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi.sse import EventSourceResponse, format_sse_event

from ..errors import APIError, error_body

log = logging.getLogger("reference_server")

# --8<-- [start:sse]
DONE = format_sse_event(data_str="[DONE]")

# Proxies (nginx, some ingress controllers) buffer responses unless told not to, which turns
# a token stream into one late blob.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def encode(chunk: dict[str, Any]) -> bytes:
    return format_sse_event(data_str=json.dumps(chunk, ensure_ascii=False, separators=(",", ":")))


async def _frames(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield encode(chunk)
    except APIError as exc:  # the response has started: the error travels as an event
        yield encode(exc.body())
    except Exception:
        log.exception("error while streaming")
        yield encode(error_body("The server had an error while processing your request.", "server_error"))
    finally:
        await chunks.aclose()  # stops the generation now, not when the garbage collector runs
    yield DONE


def sse_response(chunks: AsyncIterator[dict[str, Any]]) -> EventSourceResponse:
    return EventSourceResponse(_frames(chunks), headers=SSE_HEADERS)
# --8<-- [end:sse]
