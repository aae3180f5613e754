"""The API's contract as JSON Schemas (draft 2020-12), one file per object, and a validator.

    >>> import schemas
    >>> [str(p) for p in schemas.validate({"error": {"message": "x", "type": "y", "code": None}}, "error")]
    ['error.param: required field is missing']

``python -m schemas validate FILE --schema NAME`` does the same from a shell.
"""

import sys

if "jsonschema" not in sys.modules:  # the parser jsonschema would build for "iri" formats: see reference_server/__init__.py
    sys.modules.setdefault("rfc3987_syntax", None)

from .validation import BASE_URI, Problem, SchemaError, check, load, names, registry, validate  # noqa: E402

__all__ = ["BASE_URI", "Problem", "SchemaError", "check", "load", "names", "registry", "validate"]
