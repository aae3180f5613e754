"""The local llama.cpp backend: ``LocalBackend`` and its runners."""

from .backend import LocalBackend

__all__ = ["LocalBackend"]
