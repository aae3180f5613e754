"""How much one request may ask for (request_limits.py): a body over the limit is a 413 before anything
parses it, declared or chunked; too many messages, choices, tools or inputs is a 400 naming the
parameter. Each limit is a setting; the defaults apply to the shared test server."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from conftest import MODEL
from reference_server import Settings, cli

CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES = "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"
HI = [{"role": "user", "content": "Hi"}]


def envelope(r: httpx.Response, status: int, **fields: object) -> dict:
    assert r.status_code == status, r.text[:300]
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for key, value in fields.items():
        assert error[key] == value, error
    return error


def test_a_body_over_the_limit_is_refused_by_its_content_length_before_parsing(http: httpx.Client,
                                                                                settings: Settings) -> None:
    body = b"{" + b" " * settings.max_body_bytes + b"not even JSON"
    r = http.post(CHAT, content=body, headers={"content-type": "application/json"})
    error = envelope(r, 413, code="request_too_large", param=None, type="invalid_request_error")
    assert f"{len(body)} bytes" in error["message"] and str(settings.max_body_bytes) in error["message"]
    assert "connection" not in r.headers  # the rest of the body is read and dropped: the client reads its 413
    assert http.get("/health").status_code == 200  # on the same connection


def test_a_body_declared_far_over_the_limit_is_refused_without_reading_it(running, settings: Settings) -> None:
    """Content-Length over twice the limit: 413 and the connection closes, before the body is sent."""
    port = int(running.root.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {3 * settings.max_body_bytes}\r\n\r\n{{".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ") and b"connection: close" in head.lower()
    assert json.loads(body)["error"]["code"] == "request_too_large"


def test_a_chunked_body_is_counted_as_it_arrives(http: httpx.Client, settings: Settings) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: httpx sends Transfer-Encoding: chunked
        yield b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "'
        for _ in range(settings.max_body_bytes // 65536 + 1):
            yield b"x" * 65536
        yield b'"}]}'

    r = http.post(CHAT, content=chunks(), headers={"content-type": "application/json"})
    assert r.request.headers.get("transfer-encoding") == "chunked"
    error = envelope(r, 413, code="request_too_large")
    assert f"more than {settings.max_body_bytes} bytes" in error["message"]


def test_a_body_under_the_limit_is_parsed_and_judged(http: httpx.Client, settings: Settings) -> None:
    """Just under the limit, the body is parsed and validated: here a 400 for an unknown field."""
    r = http.post(CHAT, json={"model": MODEL, "messages": HI, "user": "x" * (settings.max_body_bytes - 200),
                              "bogus": 1})
    assert len(r.request.content) <= settings.max_body_bytes
    envelope(r, 400, param="bogus")


@pytest.mark.parametrize("path,body,param,code", [
    (CHAT, {"messages": HI * 1025}, "messages", "array_above_max_length"),
    (CHAT, {"messages": HI, "n": 17}, "n", "integer_above_max_value"),
    (CHAT, {"messages": HI, "tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]},
     "tools", "array_above_max_length"),
    (COMPLETIONS, {"prompt": "Hi", "n": 17}, "n", "integer_above_max_value"),
    (COMPLETIONS, {"prompt": ["Hi"] * 2049}, "prompt", "array_above_max_length"),
    (EMBEDDINGS, {"input": ["Hi"] * 2049}, "input", "array_above_max_length"),
    (EMBEDDINGS, {"input": [[504]] * 2049}, "input", "array_above_max_length"),
    (RESPONSES, {"input": [{"role": "user", "content": "Hi"}] * 1025}, "input", "array_above_max_length"),
    (RESPONSES, {"input": "Hi", "tools": [{"type": "function", "name": f"f{i}"} for i in range(129)]}, "tools",
     "array_above_max_length"),
], ids=["messages", "chat n", "tools", "completions n", "prompts", "inputs", "token inputs", "response items",
        "response tools"])
def test_each_limit_is_a_400_naming_the_parameter(http: httpx.Client, path: str, body: dict, param: str,
                                                  code: str) -> None:
    error = envelope(http.post(path, json={"model": MODEL, **body}), 400, param=param, code=code)
    assert f"'{param}'" in error["message"]


def test_one_prompt_of_token_ids_is_not_a_list_of_prompts(http: httpx.Client) -> None:
    """2049 token ids are one input, bounded by the context window (2048 here), not by max_inputs."""
    r = http.post(EMBEDDINGS, json={"model": MODEL, "input": [504] * 2049})
    envelope(r, 400, param="input", code="context_length_exceeded")


def test_limits_are_settings_with_flags_and_environment_variables(monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REFERENCE_SERVER_MAX_N", "4")
    monkeypatch.setenv("REFERENCE_SERVER_SHUTDOWN_GRACE", "2.5")
    assert (Settings().max_n, Settings().shutdown_grace) == (4, 2.5)
    args = cli.parse_args(["--max-body-bytes", "2048", "--max-tools", "0", "--shutdown-grace", "0"])
    assert (args.max_body_bytes, args.max_tools, args.shutdown_grace) == (2048, 0, 0.0)
    with pytest.raises(SystemExit):
        cli.parse_args(["--help"])
    out = capsys.readouterr().out
    for flag in ("--max-body-bytes", "--max-messages", "--max-n", "--max-inputs", "--max-tools", "--shutdown-grace"):
        assert flag in out
