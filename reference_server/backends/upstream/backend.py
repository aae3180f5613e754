"""The upstream backend: the same API, answered by other OpenAI-compatible servers.

``reference-server --upstream URL --upstream URL#KEY ...`` loads no model. Each request goes to
an upstream that serves its model (pool.py picks the least busy), as a stream with usage; the
upstream's chunks become the seam's events (stream.py), and the serving layer renders them as
it renders the local model's.

The one rule that shapes this module: a request may move to another upstream only while
nothing of its reply has been sent. ``UpstreamCall.start`` connects and waits for the first
token, retrying on another upstream after a connection error, a 5xx, a 429, or no first token
within the timeout; the routers await it (``base.start``) before the response begins, so if
every upstream fails the client gets an HTTP status, not a broken stream. Once the first
token is out, a failure ends the stream with an error event: the client has started reading
one reply and must not receive the middle of another.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import httpx
import numpy as np

from ... import accounting
from ...errors import APIError
from ...protocol import CreateChatCompletionRequest, CreateCompletionRequest, CreateEmbeddingRequest
from ...settings import Settings
from ..base import Embedded, Event, ModelCard, Run
from .pool import Pool, Upstream, parse_upstream
from .stream import ChunkReader, sse_data, upstream_error

log = logging.getLogger("reference_server")
T = TypeVar("T")
MAX_RETRY_AFTER = 60.0  # an upstream's Retry-After beyond this is not believed


class Retry(Exception):
    """An upstream failed before the first token: try another one."""

    def __init__(self, reason: str, outcome: str, *, down: bool = False, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.outcome, self.down, self.retry_after = reason, outcome, down, retry_after


class Broken(Exception):
    """The upstream's stream stopped making sense: dropped, cut before ``[DONE]``, not JSON."""


def _retry_after(headers: httpx.Headers) -> float | None:
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(headers.get("retry-after", ""))))
    except ValueError:
        return None


# --8<-- [start:refusal]
def refusal(upstream: Upstream, response: httpx.Response, body: bytes) -> Exception:
    """What a non-200 answer means: ``Retry`` when another upstream may do better, else the client's error."""
    status = response.status_code
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = {"error": {"message": body.decode("utf-8", "replace")[:300]}}
    if status == 429:
        return Retry("busy (429)", "status_429", retry_after=_retry_after(response.headers))
    if status >= 500:
        return Retry(f"answered {status}", "status_5xx", retry_after=_retry_after(response.headers))
    if status in (401, 403, 404):  # its key or its model list is wrong: the gateway's fault, not the client's
        return Retry(f"answered {status}: {upstream_error(parsed, status).message}", f"status_{status}")
    return upstream_error(parsed, status)  # the request itself is wrong (400, 413, 422): the client's error
# --8<-- [end:refusal]


class UpstreamBackend:
    """Forwards to OpenAI-compatible upstreams; implements the Backend seam (backends/base.py)."""

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.pool = Pool([parse_upstream(spec, i + 1) for i, spec in enumerate(settings.upstreams)],
                         settings.upstream_cooldown)
        self.counts: Counter[str] = Counter()  # retries, gave_up: read by metrics.py
        # system_fingerprint: the configuration is the set of upstreams (each engine has its own, unseen here)
        urls = "|".join(sorted(u.url for u in self.pool.upstreams))
        self.fingerprint = "fp_" + hashlib.sha256(urls.encode()).hexdigest()[:10]
        self.state = "loading"
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._health: asyncio.Task[None] | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        timeout = httpx.Timeout(connect=s.upstream_connect_timeout, read=s.upstream_first_token_timeout,
                                write=s.upstream_first_token_timeout, pool=None)
        self._client = httpx.AsyncClient(timeout=timeout, transport=self._transport,
                                         limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
        await self.check_all()
        self.state = "ready"
        self._health = asyncio.create_task(self._check_forever())

    async def close(self) -> None:
        if self._health is not None:
            self._health.cancel()
            await asyncio.gather(self._health, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    # --8<-- [start:health]
    async def check(self, upstream: Upstream) -> None:
        """A health check: GET /v1/models, which every engine answers, and which refreshes its models."""
        assert self._client is not None
        try:
            r = await self._client.get(f"{upstream.url}/models", headers=self._auth(upstream),
                                       timeout=self.settings.upstream_connect_timeout)
            if r.status_code != 200:
                raise ValueError(f"GET /v1/models answered {r.status_code}")
            data = r.json()["data"]
            upstream.models = {m["id"]: ModelCard(m["id"], int(m.get("created") or 0), m.get("owned_by") or "upstream")
                               for m in data}
            if not upstream.healthy:
                log.warning("upstream %d (%s) is up: %s", upstream.number, upstream.url, ", ".join(upstream.models))
            upstream.healthy, upstream.error = True, None
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            if upstream.healthy or not upstream.checked:
                log.warning("upstream %d (%s) is down: %s", upstream.number, upstream.url, exc or type(exc).__name__)
            upstream.healthy, upstream.error = False, str(exc) or type(exc).__name__
        upstream.checked = True

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(u) for u in self.pool.upstreams))

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.upstream_health_interval)
            await self.check_all()
    # --8<-- [end:health]

    def require_ready(self) -> None:
        if self.state != "ready":
            raise APIError(503, "The gateway is still checking its upstreams; retry in a few seconds.",
                           type="server_error", code="model_loading", headers={"Retry-After": "1"})
        if not any(u.healthy for u in self.pool.upstreams):
            raise APIError(503, "No upstream is reachable; retry in a few seconds.", type="server_error",
                           code="upstream_unavailable", headers={"Retry-After": str(math.ceil(self.settings.upstream_health_interval))})

    def models(self) -> list[ModelCard]:
        return self.pool.models()

    @property
    def queue_depth(self) -> int:
        return sum(u.outstanding for u in self.pool.upstreams)

    def upstream_status(self) -> list[Upstream]:
        return list(self.pool.upstreams)

    def _auth(self, upstream: Upstream) -> dict[str, str]:
        return {"Authorization": f"Bearer {upstream.key}"} if upstream.key else {}

    # ---- requests ----------------------------------------------------------------------------

    # --8<-- [start:chat]
    def chat(self, body: CreateChatCompletionRequest) -> Run:
        self.require_ready()
        choice = body.tool_choice
        kind = getattr(choice, "type", None)
        calls_only = bool(body.tools) and (choice == "required" or kind == "function" or (
            kind == "allowed_tools" and choice.allowed_tools.mode == "required"))  # type: ignore[union-attr]
        return UpstreamCall(self, "/chat/completions", _payload(body), body.model, chat=True).run(
            body.n or 1, calls_only=calls_only)
    # --8<-- [end:chat]

    def complete(self, body: CreateCompletionRequest) -> list[Run]:
        """One upstream request per prompt, as the local backend queues one generation per prompt.

        Upstreams stream one prompt per request (ours refuses more), and the serving layer
        numbers the choices of several prompts itself. Later prompts start when they are read.
        """
        self.require_ready()
        prompt = body.prompt
        prompts = prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else [prompt]
        payload = _payload(body)
        return [UpstreamCall(self, "/completions", {**payload, "prompt": p}, body.model, chat=False).run(body.n or 1)
                for p in prompts]

    async def embed(self, body: CreateEmbeddingRequest) -> Embedded:
        self.require_ready()
        payload = {**body.model_dump(mode="json", exclude_none=True), "encoding_format": "float"}

        async def once(upstream: Upstream) -> Embedded:
            assert self._client is not None
            upstream.outstanding += 1
            try:
                with anyio.fail_after(self.settings.upstream_first_token_timeout):
                    r = await self._client.post(f"{upstream.url}/embeddings", json=payload, headers=self._auth(upstream))
                if r.status_code != 200:
                    raise refusal(upstream, r, r.content)
                data = r.json()
                vectors = [_vector(d["embedding"]) for d in sorted(data["data"], key=lambda d: d.get("index", 0))]
                upstream.outcomes["ok"] += 1
                accounting.response_header("x-upstream", str(upstream.number))
                return Embedded(vectors, int((data.get("usage") or {}).get("prompt_tokens") or 0))
            except TimeoutError:
                raise Retry(f"no answer within {self.settings.upstream_first_token_timeout:g} s", "timeout") from None
            except httpx.TransportError as exc:
                raise Retry(f"cannot be reached ({type(exc).__name__})", "connect_error", down=True) from None
            except (ValueError, KeyError, TypeError) as exc:
                raise Retry(f"answered something that is not an embedding list ({exc})", "broken") from None
            finally:
                upstream.outstanding -= 1

        return await self.attempts(body.model, once)

    # --8<-- [start:attempts]
    async def attempts(self, model: str, once: Callable[[Upstream], Awaitable[T]]) -> T:
        """Runs ``once`` on the least busy upstream; on ``Retry``, on another, up to --upstream-retries more."""
        tried: list[Upstream] = []
        failures: list[tuple[Upstream, Retry]] = []
        for _ in range(1 + self.settings.upstream_retries):
            upstream = self.pool.pick(model, exclude=tried)
            if upstream is None:
                break
            if tried:
                self.counts["retries"] += 1
            tried.append(upstream)
            try:
                return await once(upstream)
            except Retry as failure:
                failures.append((upstream, failure))
                upstream.outcomes[failure.outcome] += 1
                self.pool.fail(upstream, failure.reason, down=failure.down, seconds=failure.retry_after)
                log.warning("upstream %d (%s) %s before the first token", upstream.number, upstream.url, failure.reason)
        self.counts["gave_up"] += 1
        raise self.gave_up(model, failures)
    # --8<-- [end:attempts]

    def gave_up(self, model: str, failures: list[tuple[Upstream, Retry]]) -> APIError:
        """The client's error when no upstream could start the reply (upstreams are named by number)."""
        if not failures:
            wait = max(1, math.ceil(self.pool.soonest(model)))
            return APIError(503, f"No upstream serving `{model}` is available right now; retry in {wait} s.",
                            type="server_error", code="upstream_unavailable", headers={"Retry-After": str(wait)})
        said = "; ".join(f"upstream {u.number} {f.reason}" for u, f in failures)
        if all(f.outcome == "status_429" for _, f in failures):
            wait = max(1, math.ceil(min(f.retry_after or 1.0 for _, f in failures)))
            return APIError(429, f"Every upstream serving `{model}` is busy ({said}). Retry after {wait} s.",
                            type="rate_limit_error", code="rate_limit_exceeded", headers={"Retry-After": str(wait)})
        if failures[-1][1].outcome == "timeout":
            return APIError(504, f"No upstream sent a first token in time ({said}).", type="server_error",
                            code="upstream_timeout")
        return APIError(502, f"No upstream could answer ({said}).", type="server_error", code="upstream_error")


def _payload(body: CreateChatCompletionRequest | CreateCompletionRequest) -> dict[str, Any]:
    """The client's request as the upstream gets it: always a stream, always with usage (see stream.py)."""
    payload = body.model_dump(mode="json", by_alias=True, exclude_none=True)
    payload["stream"] = True
    payload["stream_options"] = {"include_usage": True}
    return payload


def _vector(embedding: Any) -> list[float]:
    if isinstance(embedding, str):  # base64 float32, if an upstream ignores encoding_format
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").tolist()
    return [float(x) for x in embedding]


# --8<-- [start:upstream_call]
class UpstreamCall:
    """One request's reply from an upstream, as the seam's events (``Run.events``).

    ``start`` picks an upstream, sends the request and reads up to the first event, retrying
    on another upstream as long as nothing has been delivered. After that, the events come
    straight from the upstream's stream as they arrive: nothing is buffered.
    """

    def __init__(self, backend: UpstreamBackend, path: str, payload: dict[str, Any], model: str, *, chat: bool) -> None:
        self.backend, self.path, self.payload, self.model = backend, path, payload, model
        self.reader = ChunkReader(chat)
        self.upstream: Upstream | None = None   # the one answering
        self._held: Upstream | None = None      # counted in its ``outstanding`` until released
        self._response: httpx.Response | None = None
        self._frames: Any = None
        self._pending: deque[Event] = deque()
        self._started = self._finished = False
        self._run: Run | None = None

    def run(self, n: int, *, calls_only: bool = False) -> Run:
        self._run = Run(self, 0, n, calls_only=calls_only)  # prompt_tokens: set when the usage arrives
        return self._run

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self.backend.attempts(self.model, self._first_token)
        assert self.upstream is not None
        accounting.response_header("x-upstream", str(self.upstream.number))

    async def _first_token(self, upstream: Upstream) -> None:
        client = self.backend._client
        assert client is not None
        upstream.outstanding += 1
        self._held, self.upstream = upstream, upstream
        try:
            with anyio.fail_after(self.backend.settings.upstream_first_token_timeout):
                request = client.build_request("POST", upstream.url + self.path, json=self.payload,
                                               headers=self.backend._auth(upstream))
                self._response = await client.send(request, stream=True)
                if self._response.status_code != 200:
                    raise refusal(upstream, self._response, await self._response.aread())
                self._frames = sse_data(self._response.aiter_lines())
                while not self._pending and not self._finished:
                    await self._read()
        except (TimeoutError, httpx.ReadTimeout, httpx.WriteTimeout):
            await self._release()
            raise Retry(f"sent no first token within {self.backend.settings.upstream_first_token_timeout:g} s",
                        "timeout") from None
        except httpx.TransportError as exc:  # refused, reset, DNS: nothing there
            await self._release()
            raise Retry(f"cannot be reached ({type(exc).__name__})", "connect_error", down=True) from None
        except Broken as exc:
            await self._release()
            raise Retry(f"broke off before the first token ({exc})", "broken", down=True) from None
        except APIError as exc:
            await self._release()
            if exc.status >= 500 or exc.status == 429:  # an error event before any token: still movable
                raise Retry(f"sent an error before the first token: {exc.message}", "status_5xx") from None
            raise
        except BaseException:
            await self._release()
            raise

    async def _read(self) -> None:
        """Reads one SSE event; raises Broken if the stream stops making sense."""
        try:
            data = await self._frames.__anext__()
        except StopAsyncIteration:
            raise Broken("the stream ended without [DONE]") from None
        except httpx.ReadTimeout:
            raise  # the caller says which timeout: the first token's, or the one between tokens
        except httpx.TransportError as exc:
            raise Broken(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
        if data.strip() == "[DONE]":
            self._pending.extend(self.reader.finish())
            self._finished = True
        else:
            try:
                chunk = json.loads(data)
            except ValueError:
                raise Broken(f"a chunk that is not JSON: {data[:80]!r}") from None
            self._pending.extend(self.reader.read(chunk))
        if self._run is not None:
            self._run.prompt_tokens = self.reader.prompt_tokens

    def __aiter__(self) -> "UpstreamCall":
        return self

    async def __anext__(self) -> Event:
        if not self._started:
            await self.start()
        while not self._pending:
            if self._finished:
                if self._held is not None and self.upstream is not None:
                    self.upstream.outcomes["ok"] += 1
                await self._release()
                raise StopAsyncIteration
            try:
                await self._read()
            except httpx.ReadTimeout:
                up = self.upstream
                assert up is not None
                up.outcomes["stalled_mid_stream"] += 1
                self.backend.pool.fail(up, "stalled mid-stream")
                await self._release()
                raise APIError(504, f"The upstream serving this reply sent no token for "
                               f"{self.backend.settings.upstream_first_token_timeout:g} s; the reply is incomplete. "
                               "Send the request again.", type="server_error", code="upstream_timeout") from None
            except Broken as exc:  # after the first token: the client already has part of this reply
                up = self.upstream
                assert up is not None
                up.outcomes["failed_mid_stream"] += 1
                self.backend.pool.fail(up, str(exc), down=True)
                log.warning("upstream %d (%s) failed mid-stream: %s", up.number, up.url, exc)
                await self._release()
                raise APIError(502, f"The upstream serving this reply failed after it had started ({exc}); "
                               "the reply is incomplete. Send the request again.", type="server_error",
                               code="upstream_error") from None
            except BaseException:
                await self._release()
                raise
        return self._pending.popleft()

    async def aclose(self) -> None:
        """The client is gone or done: closing the upstream connection cancels the upstream's work."""
        await self._release()

    async def _release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.outstanding -= 1
        frames, self._frames = self._frames, None
        response, self._response = self._response, None
        with anyio.CancelScope(shield=True):
            if frames is not None:
                try:
                    await frames.aclose()
                except RuntimeError:  # still running: it is being torn down by its own cancellation
                    pass
            if response is not None:
                await response.aclose()

    def __del__(self) -> None:
        if self._held is not None:  # never closed (a response abandoned before it began)
            self._held.outstanding -= 1
            self._held = None
# --8<-- [end:upstream_call]

