"""``coursekit conform``: it passes the reference server, and fails servers that break one rule each,
on exactly the rows about that rule.

The broken servers are test doubles of a *server under test*: one small Starlette app that fakes
generation (words, no model) and plays by OpenAI's rules, served by uvicorn on a free port. The
first segment of the path picks the rule it breaks (``/detail/v1``, ``/no-done/v1``, ...;
``/good/v1`` breaks none), so one server holds every variant. The fake offers only what the
checker requires: every optional feature is refused in words, which the checker must report as
"not offered". The reference server runs as a real process, with an API key.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import schemas
from coursekit import conform
from coursekit.conform import core
from coursekit.conform.openai_api import stop_sequence
from schemas import openai_spec

ROOT = Path(__file__).resolve().parent.parent
KEY = "test-key-1"
FAKE_MODEL = "fake-model"
FAKE_CTX = 2048
TOKEN_DELAY = 0.01  # the fake "generates" a token every 10 ms

# ---- a fake server under test ----------------------------------------------------------------

BREAKS = {
    "good": "breaks no rule",
    "detail": "errors as FastAPI's {\"detail\": ...}",
    "no-done": "streams without data: [DONE]",
    "no-usage": "no usage, not even with include_usage",
    "status-422": "422 for invalid requests, FastAPI's default",
    "buffered": "generates the whole stream, then sends it at once",
    "ignores-n": "answers one choice for n=2",
    # The rest also serve the Responses API (the variants above answer 404 there: "not offered").
    "responses": "serves the Responses API, and breaks no rule",
    "resp-no-seq": "Responses events without sequence_number",
    "resp-ignores-previous": "accepts previous_response_id and ignores it",
    "resp-chat-usage": "Responses usage with chat's names (prompt_tokens, completion_tokens)",
    "resp-forgets": "stores nothing: retrieving or continuing a response is a 404",
}


class Fake:
    """OpenAI's chat API over fake generation; ``brk`` names the rule it breaks."""

    def __init__(self, brk: str, api_key: str | None, received: list[tuple[str, Any]]) -> None:
        self.brk, self.api_key, self.received = brk, api_key, received
        self.stored: dict[str, tuple[dict[str, Any], list[str]]] = {}  # Responses: id -> (response, conversation)

    def error(self, status: int, message: str, param: str | None = None, code: str | None = None) -> Response:
        if self.brk == "detail":
            return JSONResponse({"detail": message}, status)
        if self.brk == "status-422" and status == 400 and code is None:
            status = 422
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                       "code": code}}, status)

    def authorized(self, request: Request) -> bool:
        return not self.api_key or request.headers.get("authorization") == f"Bearer {self.api_key}"

    async def handle(self, request: Request, path: str) -> Response:
        if not self.authorized(request):
            return self.error(401, "Incorrect API key provided.", code="invalid_api_key")
        if request.method == "GET" and path == "/models":
            return JSONResponse({"object": "list", "data": [self.model()]})
        if request.method == "GET" and path.startswith("/models/"):
            if path[len("/models/"):] != FAKE_MODEL:
                return self.error(404, "The model does not exist.", param="model", code="model_not_found")
            return JSONResponse(self.model())
        if request.method == "POST" and path == "/chat/completions":
            return await self.chat(request)
        if self.brk.startswith("resp") and path.startswith("/responses"):
            return await self.responses(request, path)
        return self.error(404, f"Invalid URL ({request.method} {request.url.path})")

    @staticmethod
    def model() -> dict[str, Any]:
        return {"id": FAKE_MODEL, "object": "model", "created": 1795428000, "owned_by": "tests"}

    async def chat(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            self.received.append(("/chat/completions", None))
            return self.error(400, "We could not parse the JSON body of your request.")
        self.received.append(("/chat/completions", body))
        if not isinstance(body, dict):
            return self.error(400, "The body must be a JSON object.")
        for name, kind in (("model", str), ("messages", list)):
            if name not in body:
                return self.error(400, f"Missing required parameter: '{name}'.", param=name)
            if not isinstance(body[name], kind):
                return self.error(400, f"Invalid type for '{name}'.", param=name)
        max_tokens = body.get("max_tokens")
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)):
            return self.error(400, "Invalid type for 'max_tokens': expected an integer.", param="max_tokens")
        if body["model"] != FAKE_MODEL:
            return self.error(404, f"The model `{body['model']}` does not exist.", param="model",
                              code="model_not_found")
        for name in ("tools", "response_format"):
            if body.get(name) is not None:
                return self.error(400, f"'{name}' is not supported by this server.", param=name)
        if body.get("n", 1) != 1 and self.brk != "ignores-n":
            return self.error(400, "Only n=1 is supported.", param="n")
        prompt = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        if prompt + (max_tokens or 0) > FAKE_CTX:
            return self.error(400, f"This model's maximum context length is {FAKE_CTX} tokens.",
                              param="messages", code="context_length_exceeded")
        stop = body.get("stop") or []
        tokens, finish = generate(max_tokens or FAKE_CTX - prompt, [stop] if isinstance(stop, str) else stop)
        usage = {"prompt_tokens": prompt, "completion_tokens": len(tokens), "total_tokens": prompt + len(tokens)}
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": FAKE_MODEL}
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = self.stream(head, tokens, finish, usage if include_usage else None, include_usage)
            return StreamingResponse(events, media_type="text/event-stream")
        reply = {**head, "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "".join(tokens), "refusal": None},
             "logprobs": None, "finish_reason": finish}]}
        if self.brk != "no-usage":
            reply["usage"] = usage
        return JSONResponse(reply)

    async def stream(self, head: dict[str, Any], tokens: list[str], finish: str, usage: dict[str, int] | None,
                     include_usage: bool) -> AsyncIterator[bytes]:
        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            chunk = {**head, "object": "chat.completion.chunk", "choices": choices, **extra}
            if include_usage and "usage" not in extra:
                chunk["usage"] = None
            return f"data: {json.dumps(chunk)}\n\n".encode()

        def choice(delta: dict[str, Any], reason: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]

        held: list[bytes] = []
        out = held.append if self.brk == "buffered" else None
        parts = [event(choice({"role": "assistant", "content": ""}))]
        for token in tokens:
            parts.append(event(choice({"content": token})))
        parts.append(event(choice({}, finish)))
        if usage is not None and self.brk != "no-usage":
            parts.append(event([], usage=usage))
        if self.brk != "no-done":
            parts.append(b"data: [DONE]\n\n")
        for i, part in enumerate(parts):
            if 0 < i <= len(tokens):
                await asyncio.sleep(TOKEN_DELAY)
            if out is not None:
                out(part)
            else:
                yield part
        if held:
            yield b"".join(held)


    # ---- the Responses API, on the same fake generation ----

    async def responses(self, request: Request, path: str) -> Response:
        if request.method == "GET" and path.startswith("/responses/"):
            found = self.stored.get(path[len("/responses/"):])
            if found is None:
                return self.error(404, "No response with that id.", code="response_not_found")
            return JSONResponse(found[0])
        if request.method != "POST" or path != "/responses":
            return self.error(404, f"Invalid URL ({request.method} {request.url.path})")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return self.error(400, "We could not parse the JSON body of your request.")
        items = body.get("input")
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        if not isinstance(items, list) or not items:
            return self.error(400, "Invalid type for 'input': a string or a list of items.", param="input")
        said = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or item.get("role") not in ("user", "assistant", "system", "developer"):
                return self.error(400, "Invalid value for the item's role.", param=f"input[{i}].role")
            content = item.get("content")
            said.append(content if isinstance(content, str) else " ".join(p.get("text", "") for p in content))
        if body.get("model") != FAKE_MODEL:
            return self.error(404, "The model does not exist.", param="model", code="model_not_found")
        history: list[str] = []
        if body.get("previous_response_id") is not None:
            found = self.stored.get(body["previous_response_id"])
            if found is None:
                return self.error(404, "Previous response not found.", param="previous_response_id",
                                  code="response_not_found")
            history = [] if self.brk == "resp-ignores-previous" else found[1]
        conversation = history + said
        prompt = sum(len(text.split()) for text in [body.get("instructions") or "", *conversation])
        tokens, finish = generate(body.get("max_output_tokens") or 16, [])
        usage = {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                 "output_tokens": len(tokens), "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": prompt + len(tokens)}
        if self.brk == "resp-chat-usage":
            usage = {"prompt_tokens": prompt, "completion_tokens": len(tokens), "total_tokens": prompt + len(tokens)}
        cut = finish == "length"
        head = {"id": f"resp_{uuid.uuid4().hex}", "object": "response", "created_at": int(time.time()),
                "status": "in_progress", "error": None, "incomplete_details": None,
                "instructions": body.get("instructions"), "model": FAKE_MODEL, "output": [], "tools": [],
                "tool_choice": "auto", "parallel_tool_calls": True, "temperature": body.get("temperature", 1.0),
                "top_p": 1.0, "metadata": {}, "previous_response_id": body.get("previous_response_id"),
                "store": body.get("store", True)}
        item_id = f"msg_{uuid.uuid4().hex}"
        part = {"type": "output_text", "text": "".join(tokens), "annotations": [], "logprobs": []}
        item = {"type": "message", "id": item_id, "status": "incomplete" if cut else "completed",
                "role": "assistant", "content": [part]}
        final = {**head, "status": "incomplete" if cut else "completed", "output": [item], "usage": usage,
                 "incomplete_details": {"reason": "max_output_tokens"} if cut else None}
        if final["store"] and self.brk != "resp-forgets":
            self.stored[final["id"]] = (final, conversation + ["".join(tokens)])
        if not body.get("stream"):
            return JSONResponse(final)
        ref = {"item_id": item_id, "output_index": 0, "content_index": 0}
        events = [("response.created", {"response": head}), ("response.in_progress", {"response": head}),
                  ("response.output_item.added", {"output_index": 0, "item": {**item, "status": "in_progress",
                                                                              "content": []}}),
                  ("response.content_part.added", {**ref, "part": {**part, "text": ""}})]
        events += [("response.output_text.delta", {**ref, "delta": token, "logprobs": []}) for token in tokens]
        events += [("response.output_text.done", {**ref, "text": part["text"], "logprobs": []}),
                   ("response.content_part.done", {**ref, "part": part}),
                   ("response.output_item.done", {"output_index": 0, "item": item}),
                   ("response.incomplete" if cut else "response.completed", {"response": final})]

        async def frames() -> AsyncIterator[bytes]:
            for number, (kind, fields) in enumerate(events):
                event = {"type": kind, **fields}
                if self.brk != "resp-no-seq":
                    event["sequence_number"] = number
                yield f"event: {kind}\ndata: {json.dumps(event)}\n\n".encode()
        return StreamingResponse(frames(), media_type="text/event-stream")


def generate(limit: int, stops: list[str]) -> tuple[list[str], str]:
    """The fake model counts: '1,', ' 2,', ' 3,' ... up to ``limit`` tokens or a stop sequence."""
    text, tokens = "", []
    for i in range(1, limit + 1):
        token = f"{'' if i == 1 else ' '}{i},"
        text += token
        hit = min((text.find(s) for s in stops if s and s in text), default=-1)
        if hit >= 0:
            kept = text[:hit][len("".join(tokens)):]
            return tokens + ([kept] if kept else []), "stop"
        tokens.append(token)
    return tokens, "length"


def fake_app(received: list[tuple[str, Any]], api_key: str | None) -> Starlette:
    fakes = {name: Fake(name, api_key, received) for name in BREAKS}

    async def route(request: Request) -> Response:
        match = re.fullmatch(r"/([^/]+)/v1(/.*)?", request.url.path)
        if not match or match.group(1) not in fakes:
            return JSONResponse({"error": {"message": "no such fake", "type": "invalid_request_error",
                                           "param": None, "code": None}}, 404)
        return await fakes[match.group(1)].handle(request, match.group(2) or "/")

    return Starlette(routes=[Route("/{path:path}", route, methods=["GET", "POST", "DELETE"])])


def serve(app: Any) -> tuple[str, uvicorn.Server, threading.Thread]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    root = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    return root, server, thread


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[str, list[tuple[str, Any]]]]:
    """(root URL, every request body the fakes received) of the fakes, with API key KEY."""
    received: list[tuple[str, Any]] = []
    root, server, thread = serve(fake_app(received, KEY))
    yield root, received
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def open_fakes() -> Iterator[str]:
    """The same fakes without an API key: the auth rows are skipped."""
    root, server, thread = serve(fake_app([], None))
    yield root
    server.should_exit = True
    thread.join(timeout=10)


# ---- the checker on the fakes ----------------------------------------------------------------

RESPONSES_ROWS = [row_id for _, row_id, _, _ in conform.all_rows(["responses"])]
OPTIONAL_REFUSED = ["chat.n", "completions", "completions.stream", "embeddings.float", "embeddings.base64",
                    "tools", "tools.stream", "json.object", "json.schema", *RESPONSES_ROWS]


def expected_good(auth: bool) -> dict[str, str]:
    """What the fake that breaks nothing earns: required rows pass, refused options are not offered."""
    out = {row_id: "pass" for _, row_id, _, _ in conform.all_rows()}
    out.update(dict.fromkeys(OPTIONAL_REFUSED, "not offered"))
    if not auth:
        out.update({"auth.missing": "skipped", "auth.wrong": "skipped"})
    return out


def test_a_server_that_breaks_no_rule_conforms(fakes: tuple[str, list]) -> None:
    root, _ = fakes
    report = conform.run(f"{root}/good/v1", api_key=KEY)
    assert report.statuses() == expected_good(auth=True), report.table()
    assert report.ok and report.ok_strict and report.model == FAKE_MODEL
    for row in report.rows:
        assert (row.reason == "") == (row.status == "pass"), f"{row.id}: every non-pass says why"
    assert "refused" not in report.row("tools").reason and "'tools' is not supported" in report.row("tools").reason


BROKEN = {
    # break: (rows that fail, what their reason must say)
    "detail": (["errors.bad_json", "errors.missing_field", "errors.wrong_type", "errors.unknown_model",
                "errors.context_length", "errors.unknown_path"], '{"detail": ...}'),
    "no-done": (["chat.stream"], "[DONE]"),
    "no-usage": (["chat.usage", "chat.stream.usage"], "usage"),
    "status-422": (["errors.bad_json", "errors.missing_field", "errors.wrong_type"], "422"),
    "buffered": (["chat.stream.incremental"], "sent in one go"),
    "ignores-n": (["chat.n"], "n=2, got 1 choice"),
}


@pytest.mark.parametrize("brk", list(BROKEN))
def test_a_broken_server_fails_exactly_the_rows_of_its_rule(open_fakes: str, brk: str) -> None:
    report = conform.run(f"{open_fakes}/{brk}/v1")
    rows, says = BROKEN[brk]
    expected = expected_good(auth=False)
    expected.update(dict.fromkeys(rows, "fail"))
    assert report.statuses() == expected, report.table()
    for row_id in rows:
        assert says in report.row(row_id).reason, report.row(row_id).reason
    required = any(report.row(r).required for r in rows)
    assert report.ok is not required and not report.ok_strict


def test_a_server_without_the_responses_api_is_not_offered_in_one_request(fakes: tuple[str, list]) -> None:
    """A 404 for POST /responses makes every Responses row "not offered", and blocks nothing."""
    root, received = fakes
    report = conform.run(f"{root}/good/v1", api_key=KEY, groups=["responses"])
    assert report.statuses() == dict.fromkeys(RESPONSES_ROWS, "not offered") and report.ok and report.ok_strict
    assert all(r.reason.startswith("no Responses API: POST /good/v1/responses answered 404") for r in report.rows)


def test_a_server_that_serves_the_responses_api_passes_its_rows(open_fakes: str) -> None:
    report = conform.run(f"{open_fakes}/responses/v1", groups=["responses"])
    assert report.statuses() == dict.fromkeys(RESPONSES_ROWS, "pass"), report.table()
    assert report.seconds < 10


RESPONSES_BROKEN = {
    # break: (rows that fail, what the first of them must say)
    "resp-no-seq": (["responses.stream"], "sequence_number"),
    "resp-ignores-previous": (["responses.previous"], "the stored conversation was not sent to the model"),
    "resp-chat-usage": (["responses.create", "responses.stream", "responses.items", "responses.instructions",
                         "responses.previous"], "usage"),  # retrieve: the same defect, already reported
    "resp-forgets": (["responses.previous", "responses.retrieve"], "answered 404"),
}


@pytest.mark.parametrize("brk", list(RESPONSES_BROKEN))
def test_a_broken_responses_api_fails_exactly_the_rows_of_its_rule(open_fakes: str, brk: str) -> None:
    report = conform.run(f"{open_fakes}/{brk}/v1", groups=["responses"])
    rows, says = RESPONSES_BROKEN[brk]
    expected = dict.fromkeys(RESPONSES_ROWS, "pass")
    expected.update(dict.fromkeys(rows, "fail"))
    assert report.statuses() == expected, report.table()
    assert says in report.row(rows[0]).reason, report.row(rows[0]).reason
    assert report.ok and not report.ok_strict  # optional rows: broken, yet not blocking


def test_a_broken_server_fails_the_auth_rows_too(fakes: tuple[str, list]) -> None:
    """With a key, the {"detail": ...} server's 401s are not OpenAI's envelope either."""
    root, _ = fakes
    report = conform.run(f"{root}/detail/v1", api_key=KEY)
    assert report.row("auth.missing").status == report.row("auth.wrong").status == "fail"
    assert "detail" in report.row("auth.wrong").reason


def test_a_server_that_ignores_its_key_fails_auth(open_fakes: str) -> None:
    report = conform.run(f"{open_fakes}/good/v1", api_key="a-key-the-server-does-not-check")
    assert report.row("auth.missing").status == "fail" and not report.ok
    assert "accepted the request" in report.row("auth.missing").reason


def test_every_request_the_checker_sends_is_valid_but_the_deliberate_ones(fakes: tuple[str, list]) -> None:
    """The checker must hold servers to OpenAI's API, so it may only send what OpenAI accepts."""
    root, received = fakes
    received.clear()
    conform.run(f"{root}/good/v1", api_key=KEY)
    invalid = []
    for path, body in received:
        if body is None:
            invalid.append("unparsable")
            continue
        ours = [str(p) for p in schemas.validate(body, "chat_completion_request")]
        spec = openai_spec.problems(body, "chat_completion_request")
        if ours or spec:
            invalid.append((sorted(body), ours, spec))
    assert len(received) > 15
    assert [i if i == "unparsable" else i[1] for i in invalid] == [
        "unparsable", ["messages: required field is missing"],
        ["max_tokens: expected an integer or null, found a string 'ten'"]]


def test_an_unreachable_server_fails_every_row_in_words() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    report = conform.run(f"http://127.0.0.1:{port}/v1", api_key=KEY, timeout=5)
    assert time.perf_counter() - t0 < 30
    assert {r.status for r in report.rows} == {"fail"} and not report.ok
    assert "cannot connect" in report.row("models.list").reason
    assert report.row("chat").reason.startswith("no model to ask for")
    assert report.row("errors.bad_json").reason.startswith("not checked: the server could not be reached")


# ---- the command line ------------------------------------------------------------------------

def test_command_line_table_json_and_exit_codes(fakes: tuple[str, list], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = fakes
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    # Both at once: each start-up imports the openai client (a second or two).
    runs = [subprocess.Popen([sys.executable, "-m", "coursekit", command, "--base-url", f"{root}/{name}/v1",
                              "--api-key", KEY, "--json", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for command, name, out in (("conform", "good", good), ("exam", "no-done", bad))]
    (good_out, good_err), (bad_out, _) = [r.communicate(timeout=120) for r in runs]
    assert [r.returncode for r in runs] == [0, 1], good_err
    assert "CONFORMS: every required feature passes" in good_out
    assert re.search(r"^not offered +optional +tools +tools: forced", good_out, re.M)
    assert re.search(r"^FAIL +required +chat\.stream +streamed.*\n +-> the stream does not end with 'data: \[DONE\]'",
                     bad_out, re.M), bad_out
    assert "DOES NOT CONFORM: 1 required row not passing (chat.stream)" in bad_out
    saved = json.loads(bad.read_text())
    assert saved["ok"] is False and KEY not in bad.read_text()
    assert {r["id"]: r["status"] for r in saved["rows"]}["chat.stream"] == "fail"
    assert conform.Report.from_json(saved).statuses() == {r["id"]: r["status"] for r in saved["rows"]}

    from coursekit.__main__ import main

    assert main(["conform", "--compare", str(good), str(bad)]) == 0
    compared = capsys.readouterr().out
    assert re.search(r"^chat\.stream +\. +F\s*$", compared, re.M), compared
    assert "[2] bad" in compared and "chat.stream: the stream does not end" in compared
    assert main(["conform", "--compare", str(good), str(bad), "--markdown"]) == 0
    assert capsys.readouterr().out.startswith("| row | need | good | bad |\n")


def test_strict_fails_on_a_broken_optional_feature(open_fakes: str) -> None:
    assert conform.main(_args(f"{open_fakes}/ignores-n/v1")) == 0
    assert conform.main(_args(f"{open_fakes}/ignores-n/v1", strict=True)) == 1


def test_one_group_from_the_command_line(open_fakes: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--group responses runs those rows alone; --strict fails a Responses API that breaks one."""
    assert conform.main(_args(f"{open_fakes}/resp-no-seq/v1", group=["responses"])) == 0
    out = capsys.readouterr().out
    assert "responses.stream" in out and "chat.stream" not in out
    assert conform.main(_args(f"{open_fakes}/resp-no-seq/v1", group=["responses"], strict=True)) == 1


def _args(base_url: str, **extra: Any) -> Any:
    import argparse

    parser = argparse.ArgumentParser()
    conform.add_arguments(parser)
    args = parser.parse_args(["--base-url", base_url])
    for k, v in extra.items():
        setattr(args, k, v)
    return args


def test_markdown_side_by_side(fakes: tuple[str, list], open_fakes: str) -> None:
    root, _ = fakes
    reports = {"good": conform.run(f"{root}/good/v1", api_key=KEY),
               "buffered": conform.run(f"{open_fakes}/buffered/v1")}
    text = conform.markdown(reports)
    lines = text.splitlines()
    assert lines[0] == "| row | need | good | buffered |"
    assert len(lines) == 2 + len(conform.all_rows()) + 1
    incremental = next(line for line in lines if "`chat.stream.incremental`" in line).split(" | ")
    assert incremental[2] == "pass" and incremental[3].startswith("**fail**: all ")
    assert lines[-1].endswith("| **conforms** | **does not conform** (1 required row not passing) |")


# ---- the reference server --------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference() -> Iterator[str]:
    """``python -m reference_server`` as a learner starts it, with an API key, on a free port."""
    proc = subprocess.Popen([sys.executable, "-m", "reference_server", "--port", "0", "--threads", "1",
                             "--n-ctx", "2048", "--api-key", KEY], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        base_url = None
        deadline = time.monotonic() + 120
        while base_url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            match = re.search(r"^Ready: \S+ at (http://\S+)", line)
            base_url = match.group(1) if match else None
        assert base_url, "the reference server did not start"
        yield base_url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# Found by the checker, not fixed here (reference_server/ is not this test's to change): a prompt
# that alone overflows the context, sent with max_tokens, is refused with param 'max_tokens'; the
# messages are what to shrink, and OpenAI says 'messages'. When generation.py is fixed, this test
# fails: empty the dict.
KNOWN_REFERENCE_BUGS: dict[str, str] = {}  # row id -> reason, while a bug the checker found is open


def test_the_reference_server_passes_every_row(reference: str) -> None:
    report = conform.run(reference, api_key=KEY)
    assert {r.id: r.reason for r in report.rows if r.status != "pass"} == KNOWN_REFERENCE_BUGS, report.table()
    assert report.ok == (not KNOWN_REFERENCE_BUGS) and report.model == "SmolLM2-135M-Instruct"
    assert report.seconds < 60, "the battery must stay short on the embedded model"


# ---- pieces ----------------------------------------------------------------------------------

def test_events_are_parsed_as_sse_not_as_lines() -> None:
    events, rest = core.parse_events('data: {"a": 1}\r\n\r\n: keep-alive\n\ndata:x\ndata: y\n\ndata: [DO', 1.5)
    assert [(e.data, e.at) for e in events] == [('{"a": 1}', 1.5), ("x\ny", 1.5)]
    assert rest == "data: [DO"
    events, rest = core.parse_events("data: 1\r\n\r", 2.0)  # the CR of a CRLF split across two reads
    assert (events, rest) == ([], "data: 1\n\r")
    assert [e.data for e in core.parse_events(rest + "\n", 2.5)[0]] == ["1"]


def test_stop_sequence_is_taken_from_the_reply() -> None:
    assert stop_sequence("1. 1\n2. 2\n3. 3") == ("2.", "1. 1\n")
    assert stop_sequence("1, 2, 3, 4,") == ("3,", "1, 2, ")
    assert stop_sequence("Hello") is None


def test_base_url_without_path_gets_v1() -> None:
    assert core.normalize_base_url("localhost:8000/")[0] == "http://localhost:8000/v1"
    assert core.normalize_base_url("http://h/proxy/v1/")[0] == "http://h/proxy/v1"


def test_the_entry_point_the_last_lab_calls_is_documented() -> None:
    import inspect

    assert list(inspect.signature(conform.run).parameters)[:3] == ["base_url", "api_key", "model"]
    assert "from coursekit.conform import run" in conform.__doc__
    assert {g for g, *_ in conform.all_rows()} == set(conform.GROUPS)
    with pytest.raises(ValueError, match="openai"):
        conform.run("http://127.0.0.1:9/v1", groups=["ollama"])


# ---- the committed results the course shows ------------------------------------------------------

RESULTS = ROOT / "benchmarks" / "results"


def test_committed_results_and_the_pages_showing_them_agree(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/conform_peers.py wrote the JSON and the Markdown; the instructor page shows --compare of the JSON."""
    from coursekit.__main__ import main

    files = [RESULTS / "conform-reference.json", RESULTS / "conform-llama-cpp-python.json"]
    reports = [conform.Report.from_json(json.loads(f.read_text())) for f in files]
    assert reports[0].ok == (not KNOWN_REFERENCE_BUGS) and not reports[1].ok
    assert [r.id for r in reports[0].rows] == [row_id for _, row_id, _, _ in conform.all_rows()], \
        "rows changed: rerun python benchmarks/conform_peers.py --save"
    table = (RESULTS / "conform-peers.md").read_text()
    assert conform.markdown({"reference server": reports[0], "llama-cpp-python server": reports[1]}) in table
    assert main(["conform", "--compare", *map(str, files)]) == 0
    assert capsys.readouterr().out == (ROOT / "course" / "examples" / "conform_compare.txt").read_text()
