"""Per-key limits and budgets (``--keys-file``), answered as OpenAI answers them.

A small TOML (or JSON) file names each key and its limits::

    window_seconds = 60          # what "per minute" means; shorten it only for tests and demos

    [[keys]]
    name = "alice"               # shown in /metrics and usage reports: the key itself never is
    key_sha256 = "9f86d0..."     # or key = "sk-..."; a digest keeps the secret out of the file
    requests_per_minute = 60
    tokens_per_minute = 20000
    token_budget = 1000000       # prompt + completion tokens, ever; kept across restarts

Every key in the file is accepted by auth (api/auth.py), in addition to ``--api-key``, and is
compared in constant time, by its SHA-256 digest. Limits apply to generating requests (POST):
a key can always read ``GET /v1/usage``. The server rereads the file when it changes, so a
budget is raised without a restart.

The windows slide: at most N requests (tokens) in any ``window_seconds``. Tokens are counted
when a reply ends, from its usage; a request is admitted while the window has tokens left, so
one long reply can overshoot a little, as on OpenAI. Refusals are 429 with ``Retry-After``
(and ``retry-after-ms``, which the openai client prefers) and OpenAI's ``x-ratelimit-*``
headers, which every admitted request also carries. A spent budget is OpenAI's
``insufficient_quota``, with ``x-should-retry: false``: the openai client retries every other
429, and retrying this one cannot help.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import accounting
from .errors import APIError

log = logging.getLogger("reference_server")
RELOAD_EVERY = 1.0  # seconds between two looks at the keys file
SAVE_EVERY = 1.0    # seconds between two writes of the usage file


# ---- the file ----------------------------------------------------------------------------------

class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[\w.@-]+$")
    key: str | None = Field(None, min_length=8)
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    token_budget: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _one_key(self) -> "KeyEntry":
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of 'key' and 'key_sha256'")
        return self

    @property
    def digest(self) -> bytes:
        if self.key_sha256 is not None:
            return bytes.fromhex(self.key_sha256)
        return hashlib.sha256((self.key or "").encode()).digest()


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    window_seconds: float = Field(60.0, gt=0)
    keys: list[KeyEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "KeysFile":
        names = [k.name for k in self.keys]
        if len(set(names)) != len(names):
            raise ValueError("two keys have the same name")
        if len({k.digest for k in self.keys}) != len(self.keys):
            raise ValueError("the same key appears twice")
        return self


def read_keys_file(path: Path) -> KeysFile:
    """The parsed file, or ValueError with a sentence that names the file and the problem (never a key)."""
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data = tomllib.loads(text)
        return KeysFile.model_validate(data)
    except OSError as exc:
        raise ValueError(f"cannot read the keys file {path}: {exc.strerror}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "the file"
        raise ValueError(f"keys file {path}: {where}: {err['msg']}") from None
    except ValueError as exc:  # JSON and TOML syntax errors (their messages quote positions, not values)
        raise ValueError(f"keys file {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: "
                         f"{str(exc).splitlines()[0]}") from None


def hash_key(key: str) -> str:
    """What to write as ``key_sha256`` for ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()


# ---- one key's account -------------------------------------------------------------------------

@dataclass
class Usage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def duration(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset-* format: ``12ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if round(seconds, 1) < 60:
        return f"{round(seconds, 1):g}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"


def _wait_headers(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds))), "retry-after-ms": str(max(1, math.ceil(seconds * 1000)))}


# --8<-- [start:account]
class Account:
    """One key's windows and lifetime usage. Times are time.monotonic()."""

    def __init__(self, entry: KeyEntry, window: float, usage: Usage | None = None) -> None:
        self.entry, self.window = entry, window
        self.usage = usage or Usage()
        self.requests: deque[float] = deque()            # admission times within the window
        self.tokens: deque[tuple[float, int]] = deque()  # (time, tokens) of replies within the window

    @property
    def name(self) -> str:
        return self.entry.name

    def _slide(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - self.window:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - self.window:
            self.tokens.popleft()

    def tokens_in_window(self) -> int:
        return sum(n for _, n in self.tokens)

    def admit(self, now: float) -> dict[str, str]:
        """Counts one request, or raises the 429 that says why not; returns the x-ratelimit-* headers."""
        self._slide(now)
        e = self.entry
        if e.token_budget is not None and self.usage.total_tokens >= e.token_budget:
            raise insufficient_quota(self)
        if e.requests_per_minute is not None and len(self.requests) >= e.requests_per_minute:
            wait = self.requests[0] + self.window - now
            raise rate_limited(self, "requests", e.requests_per_minute, len(self.requests), wait, now)
        if e.tokens_per_minute is not None and self.tokens_in_window() >= e.tokens_per_minute:
            used, wait = self.tokens_in_window(), 0.0
            for t, n in self.tokens:  # until enough tokens have left the window
                used -= n
                if used < e.tokens_per_minute:
                    wait = t + self.window - now
                    break
            raise rate_limited(self, "tokens", e.tokens_per_minute, self.tokens_in_window(), wait, now)
        self.requests.append(now)
        self.usage.requests += 1
        return self.headers(now)

    def charge(self, prompt_tokens: int, completion_tokens: int, now: float) -> None:
        self.tokens.append((now, prompt_tokens + completion_tokens))
        self.usage.prompt_tokens += prompt_tokens
        self.usage.completion_tokens += completion_tokens

    # --8<-- [start:headers]
    def headers(self, now: float) -> dict[str, str]:
        """OpenAI's rate-limit headers; reset = until the window is empty again."""
        e, out = self.entry, {}
        if e.requests_per_minute is not None:
            out["x-ratelimit-limit-requests"] = str(e.requests_per_minute)
            out["x-ratelimit-remaining-requests"] = str(max(0, e.requests_per_minute - len(self.requests)))
            out["x-ratelimit-reset-requests"] = duration(self.requests[-1] + self.window - now if self.requests else 0)
        if e.tokens_per_minute is not None:
            out["x-ratelimit-limit-tokens"] = str(e.tokens_per_minute)
            out["x-ratelimit-remaining-tokens"] = str(max(0, e.tokens_per_minute - self.tokens_in_window()))
            out["x-ratelimit-reset-tokens"] = duration(self.tokens[-1][0] + self.window - now if self.tokens else 0)
        return out
    # --8<-- [end:headers]
# --8<-- [end:account]


# --8<-- [start:refusals]
def rate_limited(account: Account, kind: str, limit: int, used: int, wait: float, now: float) -> APIError:
    """OpenAI's words and shape: type ``requests`` or ``tokens``, code ``rate_limit_exceeded``."""
    unit = "RPM" if kind == "requests" else "TPM"
    return APIError(429, f"Rate limit reached for key '{account.name}' on {kind} per minute ({unit}): "
                    f"Limit {limit}, Used {used}. Please try again in {duration(wait)}.",
                    type=kind, code="rate_limit_exceeded", headers={**account.headers(now), **_wait_headers(wait)})


def insufficient_quota(account: Account) -> APIError:
    budget = account.entry.token_budget
    return APIError(429, f"You exceeded your current quota: key '{account.name}' has used "
                    f"{account.usage.total_tokens:,} tokens of its budget of {budget:,}. The budget does not "
                    f"refill; to raise it, the server's administrator increases token_budget for "
                    f"'{account.name}' in the keys file (the server rereads it within a second).",
                    type="insufficient_quota", code="insufficient_quota", headers={"x-should-retry": "false"})
# --8<-- [end:refusals]


# ---- every key ---------------------------------------------------------------------------------

class Limits:
    """The keys of one file, their accounts, and the usage file that outlives restarts."""

    def __init__(self, path: Path, usage_path: Path | None = None) -> None:
        self.path = path
        self.usage_path = usage_path or path.with_name(path.stem + ".usage.json")
        self._lock = threading.Lock()  # auth runs in a thread pool, the rest on the event loop
        self._mtime = path.stat().st_mtime_ns if path.exists() else 0
        self._looked = self._saved = time.monotonic()
        self._dirty = False
        config = read_keys_file(path)
        usage = self._read_usage()
        self.accounts = [Account(e, config.window_seconds, usage.get(e.name)) for e in config.keys]

    def _read_usage(self) -> dict[str, Usage]:
        try:
            data = json.loads(self.usage_path.read_text(encoding="utf-8"))
            return {name: Usage(**counts) for name, counts in data.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"cannot read the usage file {self.usage_path}: {exc}") from None

    # --8<-- [start:find]
    def find(self, key: str) -> Account | None:
        """The account of ``key``, comparing digests in constant time with every account's."""
        self.reload_if_changed()
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for account in self.accounts:  # no early exit: the time taken does not say which key matched
            if secrets.compare_digest(account.entry.digest, digest):
                found = account
        return found
    # --8<-- [end:find]

    def reload_if_changed(self) -> None:
        now = time.monotonic()
        if now - self._looked < RELOAD_EVERY:
            return
        self._looked = now
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            return
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            config = read_keys_file(self.path)
        except ValueError as exc:
            log.error("%s; keeping the keys loaded before", exc)
            return
        with self._lock:
            old = {a.name: a for a in self.accounts}
            accounts = []
            for entry in config.keys:
                account = Account(entry, config.window_seconds, old[entry.name].usage if entry.name in old else None)
                if entry.name in old:
                    account.requests, account.tokens = old[entry.name].requests, old[entry.name].tokens
                accounts.append(account)
            self.accounts = accounts
        log.warning("reloaded the keys file %s: %d keys", self.path, len(accounts))

    def admit(self, account: Account) -> dict[str, str]:
        with self._lock:
            headers = account.admit(time.monotonic())
        self._dirty = True
        return headers

    def charge(self, account: Account, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            account.charge(prompt_tokens, completion_tokens, time.monotonic())
        self._dirty = True
        self.save()

    def save(self, force: bool = False) -> None:
        """Writes the usage file (at most once a second unless ``force``), atomically."""
        now = time.monotonic()
        if not self._dirty or (not force and now - self._saved < SAVE_EVERY):
            return
        self._saved, self._dirty = now, False
        with self._lock:
            data = {a.name: asdict(a.usage) for a in self.accounts}
        tmp = self.usage_path.with_name(self.usage_path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
            os.replace(tmp, self.usage_path)
        except OSError as exc:
            log.error("cannot write the usage file %s: %s", self.usage_path, exc.strerror)


# ---- the HTTP side -----------------------------------------------------------------------------

# --8<-- [start:enforce_limits]
async def enforce_limits(request: Request) -> None:
    """A dependency after auth: counts a generating request against its key, or refuses it (429)."""
    limits: Limits | None = getattr(request.app.state, "limits", None)
    account: Account | None = getattr(request.state, "account", None)  # set by api/auth.py
    if limits is None or account is None:
        return
    accounting.set_account(account)
    if request.method != "POST":
        return
    try:
        headers = limits.admit(account)
    except APIError as exc:
        request.app.state.metrics.rate_limited.labels(account.name, exc.type).inc()
        raise
    accounting.response_headers(headers)
# --8<-- [end:enforce_limits]


router = APIRouter(tags=["usage"])


@router.get("/usage", response_model=None)
async def read_usage(request: Request) -> dict[str, Any]:
    """What this request's key has used, for its owner; the key's name, never the key."""
    account: Account | None = getattr(request.state, "account", None)
    if account is None:
        raise APIError(404, "Usage is kept only for the keys of the server's keys file (--keys-file); "
                       "this request's key is not one of them.")
    e, u = account.entry, account.usage
    now = time.monotonic()
    account._slide(now)
    return {"object": "usage", "key_name": account.name, "requests": u.requests,
            "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens, "token_budget": e.token_budget,
            "budget_remaining": None if e.token_budget is None else max(0, e.token_budget - u.total_tokens),
            "requests_per_minute": e.requests_per_minute, "tokens_per_minute": e.tokens_per_minute,
            "window": {"seconds": account.window, "requests": len(account.requests),
                       "tokens": account.tokens_in_window()}}
