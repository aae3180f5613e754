"""Checks for lab 01: the route table and the error mapping of the server you are about to build.

The expected values are the reference server's (``tests/test_coursekit.py`` keeps them equal).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ..checks import Mismatch, Section, check, require_schema, short, type_name
from ..checks import hint as hint  # check.hint(check.NAME): the concrete hint, on request

RESOURCES = Section("01-api-design", "The endpoints")
VERSIONING = Section("01-api-design", "What a client actually depends on")
STATUS_CODES = Section("05-errors", "Status codes, and what the official client does with each")
ENVELOPE = Section("05-errors", "The envelope")
RETRY = Section("05-errors", "Overload: 429 and Retry-After")
SECTIONS = (RESOURCES, VERSIONING, STATUS_CODES, ENVELOPE, RETRY)

#: (method, path) -> what it is for
EXPECTED_ROUTES = {
    ("GET", "/v1/models"): "list the models this server serves",
    ("GET", "/v1/models/{id}"): "describe one model, addressed by its id",
    ("POST", "/v1/chat/completions"): "create a chat completion",
    ("POST", "/v1/completions"): "create a (legacy) text completion",
    ("POST", "/v1/embeddings"): "create embeddings",
    ("GET", "/health"): "tell a load balancer whether the model is ready",
}

#: situation -> what happens (shown to the learner)
SITUATIONS = {
    "malformed_json": 'The body is not JSON at all: {"model": "SmolLM2-135M-Instruct",',
    "invalid_temperature": 'The JSON is fine, but "temperature" is the string "hot"',
    "unknown_model": '"model" is "gpt-4o", which this server does not serve',
    "bad_api_key": "The server requires a key and the request's Bearer key is wrong",
    "context_too_long": "The messages alone are longer than the model's context window",
    "model_loading": "A request arrives while the model is still loading",
    "queue_full": "16 requests are already waiting for the model",
    "unexpected": "A bug in the server raises an exception",
}

#: situation -> (status, type, param, code), as the reference server answers
EXPECTED_ERRORS: dict[str, tuple[int, str, str | None, str | None]] = {
    "malformed_json": (400, "invalid_request_error", None, None),
    "invalid_temperature": (400, "invalid_request_error", "temperature", None),
    "unknown_model": (404, "invalid_request_error", "model", "model_not_found"),
    "bad_api_key": (401, "invalid_request_error", None, "invalid_api_key"),
    "context_too_long": (400, "invalid_request_error", "messages", "context_length_exceeded"),
    "model_loading": (503, "server_error", None, "model_loading"),
    "queue_full": (429, "rate_limit_error", None, "rate_limit_exceeded"),
    "unexpected": (500, "server_error", None, None),
}

#: why, per situation: the hint a wrong answer gets
WHY = {
    "malformed_json": "the client sent something unparseable: its fault (4xx), a plain invalid request; "
                      "there is no single field to blame, so param is null",
    "invalid_temperature": "a 400 like malformed JSON, but now one field is to blame: param names it",
    "unknown_model": "the URL exists, the *model* named in the body does not: 404 with code "
                     "'model_not_found'; this server also names the field at fault, param 'model' (OpenAI "
                     "sends param null there: chapter 5, 'Where this server differs from OpenAI, on purpose')",
    "bad_api_key": "authentication failed: 401 (not 403, which means 'known, but not allowed'), "
                   "code 'invalid_api_key'",
    "context_too_long": "the request is well formed but too big for this model: 400 with code "
                        "'context_length_exceeded'; param says what is too long",
    "model_loading": "the server is fine but not ready yet: 503 (retry later), a server_error with "
                     "code 'model_loading'",
    "queue_full": "too many requests right now: 429, type 'rate_limit_error', code 'rate_limit_exceeded' "
                  "(the OpenAI client retries it by itself)",
    "unexpected": "our bug, not the client's: 500, type 'server_error', and nothing more specific",
}

#: situation -> words one of which a message that says what went wrong contains (lower case)
MESSAGE_WORDS = {
    "malformed_json": ("json", "parse"),
    "invalid_temperature": ("temperature",),
    "unknown_model": ("gpt-4o", "model"),
    "bad_api_key": ("key", "auth"),
    "context_too_long": ("context", "too long", "tokens", "length"),
    "model_loading": ("load", "not ready", "starting"),
    "queue_full": ("busy", "queue", "too many", "overload", "capacity", "rate limit"),
    "unexpected": ("error", "internal", "bug", "unexpected", "went wrong"),
}

#: stretch: situation -> (status, type, code)
EXPECTED_MORE_ERRORS = {
    "unknown_route": (404, "invalid_request_error", None),
    "wrong_method": (405, "invalid_request_error", None),
}
RETRY_AFTER = {429, 503}

_PARAM = re.compile(r"\{[^}]*\}")


def _normal_path(path: str) -> str:
    return _PARAM.sub("{id}", path)


def _pairs(routes: Any) -> list[tuple[Any, Any]]:
    if routes is None or isinstance(routes, (str, bytes, dict)) or not hasattr(routes, "__iter__"):
        raise Mismatch(f"ROUTES should be a list of (method, path) pairs, got {type_name(routes)}")
    pairs = list(routes)
    if not pairs:
        raise Mismatch("ROUTES is empty: the server needs six routes",
                       hint="start with the one every client calls first: the list of models")
    for item in pairs:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            raise Mismatch(f"every entry of ROUTES should be a (method, path) pair of strings, "
                           f"like ('GET', '/v1/models'); found {short(item)}")
    return [(m, p) for m, p in pairs]


@check("Route table", section=RESOURCES,
       nudge="a REST API names things (resources) in its paths and actions with its methods",
       hint="a resource is a noun in the path (/v1/models); the method says what you do with it: "
            "GET reads, POST creates")
def routes(table: Any) -> str:
    pairs = _pairs(table)
    details: list[str] = []
    section = RESOURCES
    seen: set[tuple[str, str]] = set()
    for method, path in pairs:
        key = (method, _normal_path(path))
        if key in seen:
            details.append(f"{method} {path} is listed twice")
        seen.add(key)
    expected_paths = {p for _, p in EXPECTED_ROUTES}
    for method, path in sorted(seen - set(EXPECTED_ROUTES)):
        if method.upper() != method and (method.upper(), path) in EXPECTED_ROUTES:
            details.append(f"{method!r} should be {method.upper()!r}: HTTP methods are written in capitals")
        elif path.endswith("/") and path != "/":
            details.append(f"{method} {path}: drop the trailing slash ({path.rstrip('/')})")
        elif path in expected_paths:
            right = next(m for m, p in EXPECTED_ROUTES if p == path)
            details.append(f"{method} {path} should be {right} {path}: "
                           + ("it only reads" if right == "GET" else "it creates something new, from a JSON body"))
        elif "/v1" + path in expected_paths:
            details.append(f"{method} {path} should be {method} /v1{path}: every API path carries its version")
            section = VERSIONING
        elif path.startswith("/v1/") and path[3:] in expected_paths:
            details.append(f"{method} {path} should be {method} {path[3:]}: the health check is for load "
                           "balancers, not API clients, and must not change when the API version does")
            section = VERSIONING
        else:
            details.append(f"{method} {path} is not part of this server")
    for method, path in EXPECTED_ROUTES:
        if (method, path) not in seen and not any(p == path or p == path.removeprefix("/v1")
                                                   or p == "/v1" + path or p.rstrip("/") == path
                                                   for _, p in seen):
            details.append(f"missing: the route to {EXPECTED_ROUTES[(method, path)]}")
    if details:
        right = len(seen & set(EXPECTED_ROUTES))
        raise Mismatch(f"{right} of {len(EXPECTED_ROUTES)} routes are right", details=details, section=section)
    return f"Route table: all {len(EXPECTED_ROUTES)} routes, with the right methods and versions"


@check("Error envelope", section=ENVELOPE,
       nudge="every error has one shape, so a client reads every failure the same way",
       hint="one top-level key, error, holding exactly the four keys message, type, param, code; keep "
            "param and code even when they are None")
def envelope(error_envelope: Callable[..., Any]) -> str:
    plain = error_envelope("Something broke.", "server_error")
    if not isinstance(plain, dict):
        raise Mismatch(f"error_envelope('Something broke.', 'server_error') returned {type_name(plain)}, "
                       "not a dict")
    expected = {"error": {"message": "Something broke.", "type": "server_error", "param": None, "code": None}}
    if plain != expected:
        require_schema(plain, "error", what="error_envelope('Something broke.', 'server_error')")
        raise Mismatch(f"error_envelope('Something broke.', 'server_error') returned {short(plain)}",
                       details=[f"expected {short(expected)}"])
    full = error_envelope("The model `gpt-4o` does not exist.", "invalid_request_error", "model", "model_not_found")
    expected = {"error": {"message": "The model `gpt-4o` does not exist.", "type": "invalid_request_error",
                          "param": "model", "code": "model_not_found"}}
    if full != expected:
        raise Mismatch("with param and code given, error_envelope(message, type, param, code) returned "
                       f"{short(full)}", details=[f"expected {short(expected)}"],
                       hint="the third argument is param, the fourth is code")
    return "Error envelope: the four fields, with null where there is nothing to say"


def _entry(name: str, value: Any) -> tuple[int, dict[str, Any]]:
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise Mismatch(f"ERRORS[{name!r}] should be a pair (status, envelope), found {short(value)}")
    status, body = value
    if not isinstance(status, int) or isinstance(status, bool):
        raise Mismatch(f"ERRORS[{name!r}]: the status should be an int like 400, found {short(status)}")
    require_schema(body, "error", what=f"the envelope of ERRORS[{name!r}]",
                   hint="build it with your error_envelope() from step 2")
    return status, body["error"]


@check("Error mapping", section=STATUS_CODES,
       nudge="the status says whose fault it is and whether a retry helps; the code names the case",
       hint="4xx: the client must change the request; 5xx: the server failed. The code names the case "
            "precisely, for programs; type is the broad family")
def errors(table: Any) -> str:
    if not isinstance(table, dict):
        raise Mismatch(f"ERRORS should be a dict situation -> (status, envelope), got {type_name(table)}")
    missing = [name for name in EXPECTED_ERRORS if name not in table]
    if len(missing) == len(EXPECTED_ERRORS):
        raise Mismatch("ERRORS has none of the situations yet",
                       details=[f"{name}: {SITUATIONS[name]}" for name in EXPECTED_ERRORS])
    details = [f"{name} is missing ({SITUATIONS[name]})" for name in missing]
    details += [f"{name!r} is not one of the situations" for name in table if name not in EXPECTED_ERRORS]
    wrong = 0
    for name, (status, type_, param, code) in EXPECTED_ERRORS.items():
        if name not in table:
            continue
        got_status, err = _entry(name, table[name])
        problems = []
        if got_status != status:
            problems.append(f"status {got_status}")
        if err["type"] != type_:
            problems.append(f"type {err['type']!r}")
        if err["code"] != code:
            problems.append(f"code {err['code']!r}")
        if err["param"] != param:
            problems.append(f"param {err['param']!r}")
        if not err["message"].strip():
            problems.append("an empty message (say what went wrong, for a human)")
        elif " " not in err["message"].strip():
            problems.append(f"the message {err['message']!r} is a word, not a sentence that says what went "
                            "wrong, for a human")
        elif not any(word in err["message"].lower() for word in MESSAGE_WORDS[name]):
            problems.append(f"the message {err['message']!r} does not say what went wrong (a human reading it "
                            f"should learn it: mention {' or '.join(repr(w) for w in MESSAGE_WORDS[name][:2])})")
        if problems:
            wrong += 1
            details.append(f"{name}: {', '.join(problems)} — {WHY[name]}")
    messages = [_entry(n, table[n])[1]["message"].strip().lower() for n in EXPECTED_ERRORS if n in table]
    if len(messages) > 1 and len(set(messages)) < len(messages):
        details.append("two situations share one message: each message says what went wrong in that situation")
    if details:
        raise Mismatch(f"{len(EXPECTED_ERRORS) - wrong - len(missing)} of {len(EXPECTED_ERRORS)} situations "
                       "are mapped right", details=details)
    return f"Error mapping: all {len(EXPECTED_ERRORS)} situations, with status, type, param and code"


@check("Stretch: routes and retries", section=RETRY,
       nudge="routing errors have their own statuses, and some refusals are only for now",
       hint="an unknown path is 'not found'; a known path with the wrong method has its own status. "
            "Retry-After tells a client when a temporary refusal may succeed")
def stretch(more_errors: Any, retry_after: Any) -> str:
    if not isinstance(more_errors, dict) or not more_errors:
        raise Mismatch(f"MORE_ERRORS should map 'unknown_route' and 'wrong_method' to (status, envelope), "
                       f"got {short(more_errors)}")
    details = []
    for name, (status, type_, code) in EXPECTED_MORE_ERRORS.items():
        if name not in more_errors:
            details.append(f"{name} is missing")
            continue
        got_status, err = _entry(name, more_errors[name])
        if (got_status, err["type"], err["code"]) != (status, type_, code):
            details.append(f"{name}: found ({got_status}, {err['type']!r}, {err['code']!r})")
    if not isinstance(retry_after, (set, frozenset, list, tuple)) or set(retry_after) != RETRY_AFTER:
        details.append(f"RETRY_AFTER is {short(sorted(retry_after) if isinstance(retry_after, (set, frozenset)) else retry_after)}: "
                       "which two of your statuses mean 'not now, try again shortly'?")
    if details:
        raise Mismatch("not quite", details=details)
    return "Stretch: 404 and 405 for the routing errors; Retry-After on 429 and 503"


def answer(table: Any, name: str) -> tuple[Any, ...] | None:
    """(status, type, param, code) of one situation in the learner's table; None if absent or malformed."""
    try:
        status, body = table[name]
        err = body["error"]
        return (status, err["type"], err["param"], err["code"])
    except Exception:
        return None


def summary(routes: Any, errors: Any) -> dict[str, Any]:
    """What the checkpoint records for this lab; never raises, whatever the learner wrote."""
    try:
        table = sorted(f"{m} {p}" for m, p in routes)
    except Exception:
        table = [repr(routes)[:200]]
    names = list(errors) if isinstance(errors, dict) else []
    return {"routes": table, "errors": {str(n): answer(errors, n) for n in sorted(names, key=str)}}
