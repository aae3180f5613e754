"""A gateway in front of OpenAI-compatible engines: routing (pool.py), streams (stream.py), the backend."""

from .backend import UpstreamBackend
from .pool import Upstream, parse_upstream

__all__ = ["UpstreamBackend", "Upstream", "parse_upstream"]
