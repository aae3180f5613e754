"""A backend that plays a script: the HTTP and serving layers tested without a model, in milliseconds.

Like httpx's ``MockTransport``: it implements the same seam as the real backend
(backends/base.py), so interleaved choices, tool-call deltas, a failure in the middle of a
stream and cancellation can be tested exactly, while the real-model tests stay for the real
thing. A script is a list of events, exceptions (raised at that point) and numbers (seconds to
pause); it may also be a function of the request that returns such a list.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Union

from .. import errors
from .base import Embedded, Event, ModelCard, ModelInfo, Run

Step = Union[Event, BaseException, float]
Script = Union[Sequence[Step], Callable[[Any], Sequence[Step]]]


class ScriptedEvents:
    """A Run's events from a script; records whether it was closed before its end."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self._steps, self._at = list(steps), 0
        self.closed_early = False

    def __aiter__(self) -> "ScriptedEvents":
        return self

    async def __anext__(self) -> Event:
        while self._at < len(self._steps):
            step = self._steps[self._at]
            self._at += 1
            if isinstance(step, BaseException):
                raise step
            if isinstance(step, (int, float)):
                await asyncio.sleep(step)
                continue
            return step
        raise StopAsyncIteration

    async def aclose(self) -> None:
        if self._at < len(self._steps):
            self.closed_early = True
        self._at = len(self._steps)


class ScriptedBackend:
    """Serves one model id; every chat or completion request plays ``script``."""

    fingerprint = "fp_scripted"

    def __init__(self, script: Script, *, model: str = "scripted-model", prompt_tokens: int = 5,
                 ready: bool = True, busy: bool = False) -> None:
        self.script, self.model, self.prompt_tokens = script, model, prompt_tokens
        self.ready, self.busy = ready, busy
        self.runs: list[ScriptedEvents] = []  # every run started, for the tests to inspect

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def require_ready(self) -> None:
        if not self.ready:
            raise errors.model_loading()

    def models(self) -> list[ModelCard]:
        return [ModelCard(self.model, 0, "scripted")]

    @property
    def queue_depth(self) -> int:
        return sum(not r.closed_early and r._at < len(r._steps) for r in self.runs)

    def _run(self, body: Any) -> Run:
        self.require_ready()
        if self.busy:
            raise errors.queue_full(0)
        steps = self.script(body) if callable(self.script) else self.script
        events = ScriptedEvents(steps)
        self.runs.append(events)
        return Run(events, self.prompt_tokens, getattr(body, "n", None) or 1)

    def chat(self, body: Any) -> Run:
        return self._run(body)

    def complete(self, body: Any) -> list[Run]:
        return [self._run(body)]

    async def embed(self, body: Any) -> Embedded:
        self.require_ready()
        inputs = [body.input] if isinstance(body.input, str) else list(body.input)
        return Embedded([[1.0, 0.0] for _ in inputs], len(inputs))

    # A byte-level tokenizer: one token per UTF-8 byte, so a piece can be part of a character.
    def tokenize(self, text: str, *, special: bool = True, add_special: bool = True) -> list[int]:
        return [256] * add_special + list(text.encode("utf-8"))

    def token_bytes(self, token: int) -> bytes:
        return b"<s>" if token == 256 else bytes([token])

    def count_chat_tokens(self, body: Any) -> int:
        self.require_ready()
        return self.prompt_tokens

    def info(self) -> ModelInfo:
        self.require_ready()
        return ModelInfo(self.model, "", 0, "scripted 0M bytes", 64, 64, 0, 2, 257, "{{ messages }}", "<s>", "",
                         {"general.architecture": "scripted"})
