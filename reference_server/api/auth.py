"""Bearer-key authentication, on only when keys are configured."""

from __future__ import annotations

import secrets

from fastapi import Request

from ..errors import APIError

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


# --8<-- [start:require_api_key]
def require_api_key(request: Request) -> None:
    keys: list[str] = request.app.state.settings.api_keys
    accounts = getattr(request.app.state, "limits", None)  # the keys of --keys-file (limits.py)
    if not keys and accounts is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" and request.headers.get("x-api-key"):  # Anthropic's clients send this
        scheme, token = "bearer", request.headers["x-api-key"]
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(401, "You didn't provide an API key. Provide it in the Authorization header "
                       "as 'Authorization: Bearer YOUR_KEY'.", code="invalid_api_key", headers=_CHALLENGE)
    request.state.account = accounts.find(token.strip()) if accounts is not None else None
    if request.state.account is None and not any(secrets.compare_digest(token.strip(), key) for key in keys):
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key", headers=_CHALLENGE)
# --8<-- [end:require_api_key]
