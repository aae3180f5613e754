"""An OpenAI-compatible API server on local llama.cpp: the course's reference implementation."""

import sys

# jsonschema imports rfc3987_syntax when it is installed (jupyter-events brings it) to check the
# "iri" formats, and that import builds a parser: 0.9 s in every process. No schema here uses those
# formats, so the import is declined (None in sys.modules: the ImportError jsonschema expects).
if "jsonschema" not in sys.modules:
    sys.modules.setdefault("rfc3987_syntax", None)

from .app import create_app  # noqa: E402
from .settings import Settings  # noqa: E402

__all__ = ["create_app", "Settings"]
