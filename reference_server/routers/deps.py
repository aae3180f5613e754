"""Request-scoped dependencies shared by the routers."""

from __future__ import annotations

from fastapi import Request

from ..engine import Engine


def get_engine(request: Request) -> Engine:
    return request.app.state.engine
