"""The app factory: ``create_app(settings)`` builds a complete server; tests and labs build their own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from . import errors
from .auth import require_api_key
from .engine import Engine
from .routers import chat, completions, embeddings, health, models
from .settings import Settings

log = logging.getLogger("reference_server")


# --8<-- [start:create_app]
def create_app(settings: Settings | None = None, *, engine: Engine | None = None,
               on_ready: Callable[[Settings], None] | None = None) -> FastAPI:
    """Builds the app; the model loads in the background when the app starts.

    Pass an ``engine`` to share one loaded model between several apps (the tests do);
    ``on_ready`` runs once the model is loaded (the CLI prints its banner there).
    """
    settings = settings or Settings()
    engine = engine or Engine(settings)

    # --8<-- [start:lifespan]
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def load() -> None:
            try:
                await engine.start()
            except Exception:
                log.error("model failed to load: %s", engine.error)
                return
            if on_ready:
                on_ready(settings)
        task = asyncio.create_task(load())
        yield
        await asyncio.wait({task})
    # --8<-- [end:lifespan]

    app = FastAPI(title="llama.cpp OpenAI-compatible reference server", version="0.1.0", lifespan=lifespan)
    app.state.settings, app.state.engine = settings, engine
    errors.install(app)
    # --8<-- [start:mount_routers]
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], allow_credentials="*" not in settings.cors_origins)
    v1 = [Depends(require_api_key)]
    for router in (models.router, chat.router, completions.router, embeddings.router):
        app.include_router(router, prefix="/v1", dependencies=v1)
    app.include_router(health.router)
    # --8<-- [end:mount_routers]
    return app
# --8<-- [end:create_app]
