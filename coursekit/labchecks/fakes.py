"""A scripted engine, and ways to run the learner's app around it, for the checks.

Some things a server must do cannot be seen with the real model in a few seconds: a load that
takes a while, a queue that fills, a client that hangs up mid-stream. The learner's engine seam
(``load``, ``count_tokens``, ``generate``, ``embed``, ``state``) lets a check plug in an engine
whose timing it controls, as httpx's ``MockTransport`` does for a transport.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..model import MODEL_ID


def package_module(name: str) -> Any:
    """A module of the learner's package, as it is on disk now."""
    importlib.invalidate_caches()
    return importlib.import_module(f"myserver.{name}")


class FakeEngine:
    """Yields ``pieces`` (``delay`` seconds apart) then the learner's ``Done``; counts what happened."""

    local = True

    def __init__(self, *, pieces: int = 5, delay: float = 0.0, load_seconds: float = 0.0,
                 model_id: str = MODEL_ID, n_ctx: int = 1024) -> None:
        self.pieces, self.delay, self.load_seconds = pieces, delay, load_seconds
        self.model_id, self.n_ctx = model_id, n_ctx
        self.state = "idle"
        self.started = 0          # generations begun
        self.yielded = 0          # pieces produced, over all generations
        self.finished = 0         # generations run to their Done
        self.closed = threading.Event()  # set when a generation stops, whatever the reason
        self.load_thread: str | None = None

    def load(self) -> None:
        self.state = "loading"
        self.load_thread = threading.current_thread().name
        time.sleep(self.load_seconds)
        self.state = "ready"

    def count_tokens(self, prompt: Any) -> int:
        return 5

    def generate(self, prompt: Any, max_tokens: int, temperature: float = 1.0, json_schema: Any = None,
                 stop: Any = (), seed: int | None = None) -> Iterator[Any]:
        done = package_module("engine").Done
        self.started += 1
        count = 0
        try:
            for i in range(min(self.pieces, max_tokens)):
                time.sleep(self.delay)
                self.yielded += 1
                count += 1
                yield f" {i}"
            self.finished += 1
            yield done("length" if count >= max_tokens else "stop", 5, count)
        finally:
            self.closed.set()

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        return [[1.0, 0.0] for _ in texts], len(texts)


def run_async(make: Callable[[], Any], timeout: float = 60) -> Any:
    """Runs a coroutine to completion on a loop of its own (a notebook's loop is already running)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result(timeout=timeout)


@contextlib.contextmanager
def live_app(app: Any) -> Iterator[str]:
    """Serves ``app`` with uvicorn on a free port in a thread; yields its root URL."""
    import httpx
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    root = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 30
    try:
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        while time.monotonic() < deadline:  # the fake engine loads at once, if the lifespan asks it to
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{root}/health", timeout=5).status_code == 200:
                    break
            time.sleep(0.02)
        yield root
    finally:
        server.should_exit = True
        thread.join(timeout=10)
