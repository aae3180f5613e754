"""The app factory: ``create_app(settings)`` builds a complete server; tests and labs build their own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from . import accounting, errors, lifecycle, limits, metrics, openapi, request_limits
from .api import anthropic, chat, completions, embeddings, health, llamacpp, models, ollama, responses
from .api.auth import require_api_key
from .limits import enforce_limits
from .backends.base import Backend
from .settings import Settings

log = logging.getLogger("reference_server")


# --8<-- [start:create_app]
def create_app(settings: Settings | None = None, *, backend: Backend | None = None,
               on_ready: Callable[[Settings], None] | None = None) -> FastAPI:
    """Builds the app; the backend (by default the local llama.cpp one) starts with the app.

    Pass a ``backend`` to share one loaded model between several apps (the tests do), or to
    serve from something else behind the same seam (backends/base.py); ``on_ready`` runs once
    it has started (the CLI prints its banner there).
    """
    settings = settings or Settings()
    owned = backend is None
    if backend is None and settings.upstreams:  # a gateway (chapter 11): no local model
        from .backends.upstream import UpstreamBackend
        backend = UpstreamBackend(settings)
    if backend is None:
        from .backends.local import LocalBackend
        backend = LocalBackend(settings)

    # --8<-- [start:lifespan]
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def load() -> None:
            try:
                await backend.start()
            except Exception:
                log.error("model failed to load: %s", getattr(backend, "error", "see above"))
                return
            if on_ready:
                on_ready(settings)
        task = asyncio.create_task(load())
        yield
        await asyncio.wait({task})
    # --8<-- [end:lifespan]

    app = FastAPI(title="llama.cpp OpenAI-compatible reference server", version="0.1.0", lifespan=lifespan)
    errors.install(app)
    # --8<-- [start:reliability]
    # Reliability (course/reference/reliability.md): bodies over the limit are a 413 before parsing;
    # on shutdown, requests in flight get shutdown_grace seconds; /openapi.json says what is enforced.
    app.state.drain = lifecycle.Drain(settings.shutdown_grace)
    backend = lifecycle.Drained(backend, app.state.drain)  # at the deadline, its runs end with an error
    app.add_middleware(request_limits.BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(lifecycle.DrainMiddleware, drain=app.state.drain)
    openapi.install(app, settings, lambda: [card.id for card in app.state.backend.models()])
    # --8<-- [end:reliability]
    # --8<-- [start:mount_routers]
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], allow_credentials="*" not in settings.cors_origins)
    backend = accounting.install(app, settings, backend, owned)  # metrics, per-key limits (chapter 11)
    app.state.settings, app.state.backend = settings, backend
    v1 = [Depends(require_api_key), Depends(enforce_limits)]
    for router in (models.router, chat.router, completions.router, embeddings.router, responses.router,
                   limits.router):
        app.include_router(router, prefix="/v1", dependencies=v1)
    app.include_router(health.router)
    app.include_router(metrics.router)
    # Other protocols (chapter 10): each is documented by its own JSON Schemas in schemas/ and
    # course/reference/endpoints.md, not in this OpenAPI document of the OpenAI API.
    app.include_router(ollama.router, prefix="/api", dependencies=v1, include_in_schema=False)
    app.include_router(anthropic.router, prefix="/v1", dependencies=v1, include_in_schema=False)
    app.include_router(llamacpp.router, dependencies=v1, include_in_schema=False)
    # --8<-- [end:mount_routers]
    return app
# --8<-- [end:create_app]
