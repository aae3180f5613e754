"""The upstreams a gateway forwards to, and which one gets the next request.

Each upstream is an OpenAI-compatible server (another reference server, llama-server, vLLM,
Ollama's ``/v1``). The pool picks, among the upstreams that serve the requested model and are
neither down nor cooling down, the one with the fewest requests outstanding: a long generation
keeps its upstream busy, so counting what is in flight balances better than taking turns.
Ties (an idle pool) go round the list, so sequential requests spread too.

A failure takes an upstream out for a cool-down (its ``Retry-After`` for a 429); one that
cannot be reached at all is also marked down until a health check (backend.py) reaches it again.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..base import ModelCard


# --8<-- [start:upstream]
@dataclass(eq=False)
class Upstream:
    """One OpenAI-compatible server; ``key`` never appears in its repr, logs or metrics."""

    url: str                                   # base URL, ending in /v1
    key: str | None = field(default=None, repr=False)
    number: int = 0                            # its place in --upstream, from 1 (the x-upstream header)
    models: dict[str, ModelCard] = field(default_factory=dict)  # as last listed; kept while it is down
    healthy: bool = False                      # the last health check reached it
    checked: bool = False                      # a health check has run at least once
    cooldown_until: float = 0.0                # time.monotonic() before which it is left out
    outstanding: int = 0                       # requests sent and not finished
    outcomes: Counter[str] = field(default_factory=Counter)  # ok, retried, failed_mid_stream, ...
    error: str | None = None                   # why it last failed, in words

    def available(self, now: float) -> bool:
        return self.healthy and now >= self.cooldown_until
# --8<-- [end:upstream]


def parse_upstream(spec: str, number: int = 0) -> Upstream:
    """``URL`` or ``URL#KEY``: the base URL an OpenAI client would use (``/v1`` is added if missing).

    ``#`` is free to mark the key because a fragment is never sent to a server.
    """
    url, _, key = spec.strip().partition("#")
    url = url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"an upstream must be an http:// or https:// URL (got {url!r})")
    if not url.endswith("/v1"):
        url += "/v1"
    return Upstream(url, key or None, number)


# --8<-- [start:pick]
class Pool:
    def __init__(self, upstreams: list[Upstream], cooldown: float) -> None:
        self.upstreams, self.cooldown = upstreams, cooldown
        self._turn = 0

    def serving(self, model: str) -> list[Upstream]:
        return [u for u in self.upstreams if model in u.models]

    def pick(self, model: str, exclude: list[Upstream]) -> Upstream | None:
        """The available upstream serving ``model`` with the fewest requests outstanding."""
        now = time.monotonic()
        candidates = [u for u in self.serving(model) if u not in exclude and u.available(now)]
        if not candidates:
            return None
        n, turn = len(self.upstreams), self._turn
        self._turn += 1
        return min(candidates, key=lambda u: (u.outstanding, (self.upstreams.index(u) - turn) % n))
# --8<-- [end:pick]

    def fail(self, upstream: Upstream, reason: str, *, down: bool = False, seconds: float | None = None) -> None:
        """Leaves ``upstream`` out for a cool-down; ``down``: until a health check reaches it."""
        upstream.error = reason
        upstream.cooldown_until = time.monotonic() + (self.cooldown if seconds is None else seconds)
        if down:
            upstream.healthy = False

    def models(self) -> list[ModelCard]:
        """The union of every upstream's models (the first upstream to list an id describes it)."""
        seen: dict[str, ModelCard] = {}
        for upstream in self.upstreams:
            for card in upstream.models.values():
                seen.setdefault(card.id, card)
        return list(seen.values())

    def soonest(self, model: str) -> float:
        """Seconds until an upstream serving ``model`` comes out of its cool-down (0 if one is free)."""
        now = time.monotonic()
        waits = [max(0.0, u.cooldown_until - now) for u in self.serving(model) if u.healthy]
        return min(waits, default=self.cooldown)
