"""An OpenAI-compatible API server on local llama.cpp: the course's reference implementation."""

from .app import create_app
from .settings import Settings

__all__ = ["create_app", "Settings"]
