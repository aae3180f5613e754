"""The gateway (``--upstream``), per-key limits and /metrics, with real processes and no mocks.

Two reference servers run as upstreams for the whole module (``python -m reference_server``,
the smallest context, one thread each); a third is started, and killed, by the failover test.
Gateways run in-process on real sockets (conftest's ``start_server``), so every response they
send passes the schema check; several small gateways keep one test's cool-downs out of another.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from fastapi.testclient import TestClient

from conftest import EOG_TOKENS, MODEL, RunningServer, sse_events, start_server
from reference_server import Settings, create_app
from reference_server.backends.base import ChoiceDone, TextDelta, Timings, ToolCallDelta
from reference_server.backends.scripted import ScriptedBackend
from reference_server.backends.upstream import parse_upstream
from reference_server.backends.upstream.stream import ChunkReader, sse_data
from reference_server.errors import APIError

UPSTREAM = [sys.executable, "-m", "reference_server", "--port", "0", "--n-ctx", "512", "--no-embeddings",
            "--threads", "1"]
NO_EOS = {str(t): -100 for t in EOG_TOKENS}  # forces exactly max_tokens tokens
KEYS = {  # the upstream A's keys file: the gateways reach A with "sk-gateway-to-a"
    "window_seconds": 3,
    "keys": [
        {"name": "gateway", "key": "sk-gateway-to-a"},
        {"name": "gateway-tight", "key": "sk-gateway-tight", "requests_per_minute": 1},
        {"name": "limited", "key": "sk-limited-0001", "requests_per_minute": 2},
        {"name": "limited-client", "key": "sk-limited-0002", "requests_per_minute": 1},
        {"name": "tiny-budget", "key_sha256": "", "token_budget": 1},
        {"name": "tokens", "key": "sk-tokens-0001", "tokens_per_minute": 30},
    ],
}
TINY_KEY = "sk-tiny-budget-01"


# ---- units: no processes ---------------------------------------------------------------------

def test_upstream_urls_and_keys():
    u = parse_upstream("http://gpu-a:8080#sk-secret", 3)
    assert (u.url, u.key, u.number) == ("http://gpu-a:8080/v1", "sk-secret", 3)
    assert parse_upstream("https://x.example/v1/").url == "https://x.example/v1"
    assert "sk-secret" not in repr(u)
    with pytest.raises(ValueError, match="http"):
        parse_upstream("gpu-a:8080")


def test_the_chunk_reader_turns_chunks_into_events():
    r = ChunkReader(chat=True)
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
              {"choices": [{"index": 1, "delta": {"content": "Bon"}, "finish_reason": None}]},
              {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                                  "function": {"name": "f", "arguments": ""}}]}}]},
              {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"},
                           {"index": 1, "delta": {}, "finish_reason": "length"}]}]
    events = [e for c in chunks for e in r.read(c)]
    assert events == [TextDelta(1, "Bon"), ToolCallDelta(0, 0, "call_1", "f", ""), ToolCallDelta(0, 0, None, None, "{}")]
    tail = r.read({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}})
    assert tail == [Timings(9), ChoiceDone(0, "tool_calls", 2), ChoiceDone(1, "length", 5)]  # shares add up to 7
    assert r.prompt_tokens == 9
    with pytest.raises(APIError) as caught:
        r.read({"error": {"message": "grammar ran out", "type": "invalid_request_error", "code": "x"}})
    assert (caught.value.status, caught.value.code) == (400, "x")


def test_sse_frames_join_data_lines_and_skip_comments():
    async def lines():
        for line in [": ping", "data: {\"a\":", "data: 1}", "", "event: x", "data: [DONE]", ""]:
            yield line

    async def collect() -> list[str]:
        return [d async for d in sse_data(lines())]
    assert asyncio.run(collect()) == ['{"a":\n1}', "[DONE]"]


def test_the_gateway_needs_no_llama_cpp():
    code = ("import sys; sys.modules['llama_cpp'] = None\n"  # any import of it fails
            "from reference_server import Settings, create_app\n"
            "create_app(Settings(upstreams=['http://127.0.0.1:9']))\n"
            "import reference_server.cli\n"
            "print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "ok", r.stderr


def test_a_bad_keys_file_is_a_clear_error_without_the_key(tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text('[[keys]]\nname = "alice"\nkey = "sk-alice-secret"\nrequests_per_minute = 0\n')
    r = subprocess.run([*UPSTREAM, "--keys-file", str(keys)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "requests_per_minute" in r.stderr and "greater than or equal to 1" in r.stderr
    assert "Traceback" not in r.stderr and "sk-alice-secret" not in r.stderr


def test_keys_file_changes_apply_without_a_restart(tmp_path):
    """Scripted backend, in-process: a budget raised in the file is honoured within a second."""
    keys = tmp_path / "keys.toml"
    keys.write_text('[[keys]]\nname = "alice"\nkey = "sk-alice-0001"\ntoken_budget = 1\n')
    backend = ScriptedBackend([TextDelta(0, "Hi"), ChoiceDone(0, "stop", 1)])
    alice = {"Authorization": "Bearer sk-alice-0001"}
    body = {"model": backend.model, "messages": [{"role": "user", "content": "Hi"}]}
    with TestClient(create_app(Settings(keys_file=keys), backend=backend)) as c:
        assert c.post("/v1/chat/completions", json=body, headers=alice).status_code == 200
        refused = c.post("/v1/chat/completions", json=body, headers=alice)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
        keys.write_text('[[keys]]\nname = "alice"\nkey = "sk-alice-0001"\ntoken_budget = 100\n')
        os.utime(keys, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime even on a coarse clock
        time.sleep(1.1)  # the file is looked at once a second
        assert c.post("/v1/chat/completions", json=body, headers=alice).status_code == 200
        assert c.get("/v1/usage", headers=alice).json()["total_tokens"] == 12  # 5 prompt + 1 completion, twice
        assert c.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-other"}).status_code == 401


def test_an_error_in_a_non_streamed_reply_keeps_its_status():
    """unless_disconnected (api/deps.py) used to turn it into a 500: anyio wraps errors in a group."""
    backend = ScriptedBackend([TextDelta(0, "Hi"), APIError(502, "upstream died", type="server_error",
                                                            code="upstream_error")])
    with TestClient(create_app(Settings(), backend=backend)) as c:
        r = c.post("/v1/chat/completions", json={"model": backend.model, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"


# ---- processes -------------------------------------------------------------------------------

@dataclass
class Proc:
    proc: subprocess.Popen
    url: str = ""      # ends in /v1
    lines: list[str] = field(default_factory=list)

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")

    def kill(self) -> None:
        """SIGKILL to the supervisor and the server (one process group): a crash, not a shutdown."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)


def spawn(*args: str) -> Proc:
    proc = subprocess.Popen([*UPSTREAM, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    p = Proc(proc)
    threading.Thread(target=lambda: p.lines.extend(proc.stdout), daemon=True).start()  # type: ignore[arg-type]
    return p


def wait_ready(p: Proc, timeout: float = 120) -> Proc:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"^Ready: .* at (http://127\.0\.0\.1:\d+/v1)$", "".join(p.lines), re.M)
        if found:
            p.url = found.group(1)
            return p
        if p.proc.poll() is not None:
            raise RuntimeError(f"upstream exited with {p.proc.returncode}: {''.join(p.lines)[-2000:]}")
        time.sleep(0.05)
    p.kill()
    raise RuntimeError("upstream did not print its banner")


@pytest.fixture(scope="module")
def keys_a(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import hashlib
    keys = json.loads(json.dumps(KEYS))
    keys["keys"][4]["key_sha256"] = hashlib.sha256(TINY_KEY.encode()).hexdigest()
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    path.write_text(json.dumps(keys))
    return path


@pytest.fixture(scope="module")
def upstreams(keys_a: Path) -> Iterator[tuple[Proc, Proc]]:
    """A (with a keys file: the local backend's limits) and B; started together, once."""
    a, b = spawn("--keys-file", str(keys_a)), spawn()
    try:
        yield wait_ready(a), wait_ready(b)
    finally:
        for p in (a, b):
            p.kill()


def gateway(ups: list[str], **settings) -> RunningServer:
    options = dict(upstream_health_interval=0.5, upstream_cooldown=5.0, upstream_connect_timeout=2.0)
    return start_server(Settings(upstreams=ups, **{**options, **settings}))


@pytest.fixture(scope="module")
def pair(upstreams: tuple[Proc, Proc]) -> Iterator[RunningServer]:
    """A gateway over A (with its key) and B."""
    a, b = upstreams
    g = gateway([f"{a.url}#sk-gateway-to-a", b.url])
    yield g
    g.stop()


@pytest.fixture(autouse=True)
def _contract_of_gateways(request: pytest.FixtureRequest) -> Iterator[None]:
    """Like conftest's: the module's shared gateway answered inside the schemas during each test."""
    if "pair" not in request.fixturenames:
        yield
        return
    g: RunningServer = request.getfixturevalue("pair")
    before = len(g.contract.violations)
    yield
    assert not g.contract.violations[before:], g.contract.violations[before:]


def chat(max_tokens: int = 2, **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": max_tokens, **extra}


def metrics(root: str) -> dict[str, float]:
    """``name{labels}`` -> value, from a /metrics page."""
    out = {}
    for line in httpx.get(f"{root}/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def delta(after: dict[str, float], before: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


# ---- routing ---------------------------------------------------------------------------------

def test_models_are_the_union_and_requests_spread(pair, upstreams):
    a, b = upstreams
    assert [m["id"] for m in httpx.get(f"{pair.base_url}/models").json()["data"]] == [MODEL]
    served = Counter()
    for _ in range(4):  # one after another: the pool is idle each time, so it takes turns
        r = httpx.post(f"{pair.base_url}/chat/completions", json=chat(), timeout=60)
        assert r.status_code == 200, r.text
        served[r.headers["x-upstream"]] += 1
    assert served == {"1": 2, "2": 2}

    async def at_once() -> list[str]:  # all in flight together: least outstanding alternates
        async with httpx.AsyncClient(base_url=pair.base_url, timeout=60) as c:
            rs = await asyncio.gather(*(c.post("/chat/completions", json=chat(4)) for _ in range(4)))
        assert all(r.status_code == 200 for r in rs)
        return [r.headers["x-upstream"] for r in rs]
    assert Counter(asyncio.run(at_once())) == {"1": 2, "2": 2}


def test_the_official_client_streams_through_the_gateway(pair):
    client = openai.OpenAI(base_url=pair.base_url, api_key="unused", max_retries=0)
    chunks = list(client.chat.completions.create(**chat(6, logit_bias=NO_EOS), stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage.completion_tokens == 6 and chunks[-1].usage.prompt_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    completion = client.completions.create(model=MODEL, prompt=["Once upon a time", "The cat"], max_tokens=3,
                                           logit_bias=NO_EOS)
    assert [c.index for c in completion.choices] == [0, 1] and completion.usage.completion_tokens == 6


def test_the_responses_api_works_through_the_gateway(pair):
    """Another protocol over the same events: the gateway is a backend, not a byte pipe."""
    client = openai.OpenAI(base_url=pair.base_url, api_key="unused", max_retries=0)
    reply = client.responses.create(model=MODEL, input="Say hi.", max_output_tokens=16)
    assert reply.status in ("completed", "incomplete") and reply.output_text and reply.usage.input_tokens > 0
    events = [e.type for e in client.responses.create(model=MODEL, input="Say hi.", max_output_tokens=16,
                                                      stream=True)]
    assert events[0] == "response.created" and "response.output_text.delta" in events
    assert events[-1] in ("response.completed", "response.incomplete")


def test_ollama_and_anthropic_work_through_the_gateway_and_model_views_are_501(pair):
    """The other protocols are translations above the seam too; what needs the model file is not there."""
    import anthropic
    import ollama

    reply = ollama.Client(host=pair.root).chat(model=MODEL, messages=[{"role": "user", "content": "Say hi."}],
                                                options={"num_predict": 4})
    assert reply.done and reply.message.content and reply.eval_count <= 4
    message = anthropic.Anthropic(base_url=pair.root, api_key="unused", max_retries=0).messages.create(
        model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Say hi."}])
    assert message.content[0].text and message.usage.output_tokens <= 4
    with httpx.Client(base_url=pair.root) as http:
        assert http.get("/props").json()["error"]["code"] == 501
        assert http.get("/api/tags").status_code == 501
        assert http.post("/v1/messages/count_tokens", json={"model": MODEL, "messages": [
            {"role": "user", "content": "Hi"}]}).json()["error"]["type"] == "api_error"


def test_an_upstream_4xx_is_the_clients_error_and_is_not_retried(pair):
    before = metrics(pair.root)
    r = httpx.post(f"{pair.base_url}/embeddings", json={"model": MODEL, "input": "hi"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "embeddings_disabled"  # from the upstream
    assert delta(metrics(pair.root), before, "reference_server_upstream_retries_total") == 0


def test_a_429_is_retried_on_another_upstream_before_the_first_token(upstreams):
    a, b = upstreams
    g = gateway([f"{a.url}#sk-gateway-tight", b.url])  # A lets this key through once per 3 s
    try:
        spend = httpx.post(f"{a.url}/chat/completions", json=chat(1), timeout=60,
                           headers={"Authorization": "Bearer sk-gateway-tight"})
        assert spend.status_code == 200  # A's window for the gateway's key is now full
        r = httpx.post(f"{g.base_url}/chat/completions", json=chat(), timeout=60)
        assert r.status_code == 200 and r.headers["x-upstream"] == "2"  # tried A first, got 429, moved to B
        m = metrics(g.root)
        assert m[f'reference_server_upstream_requests_total{{outcome="status_429",upstream="{a.url}"}}'] == 1
        assert m["reference_server_upstream_retries_total"] == 1
        assert m[f'reference_server_upstream_healthy{{upstream="{a.url}"}}'] == 0  # cooling down: Retry-After
    finally:
        g.stop()


def test_no_first_token_in_time_is_a_504_after_trying_each_upstream(upstreams):
    a, b = upstreams
    g = gateway([f"{a.url}#sk-gateway-to-a", b.url], upstream_first_token_timeout=0.01)
    try:
        long_prompt = "Repeat these words: " + "apple banana cherry " * 80  # ~250 tokens: not 10 ms on 1 thread
        r = httpx.post(f"{g.base_url}/chat/completions", json={**chat(), "messages": [
            {"role": "user", "content": long_prompt}], "stream": True}, timeout=60)
        assert r.status_code == 504, r.text
        err = r.json()["error"]
        assert err["code"] == "upstream_timeout" and "upstream 1" in err["message"] and "upstream 2" in err["message"]
        assert "127.0.0.1" not in err["message"]  # upstreams are named by number to clients
        assert metrics(g.root)["reference_server_upstream_gave_up_total"] == 1
    finally:
        g.stop()


def test_a_client_that_hangs_up_cancels_the_upstream_generation(pair, upstreams):
    by_number = {"1": upstreams[0], "2": upstreams[1]}
    with httpx.Client(timeout=60) as c:
        with c.stream("POST", f"{pair.base_url}/chat/completions",
                      json=chat(450, logit_bias=NO_EOS, stream=True)) as r:
            upstream = by_number[r.headers["x-upstream"]]
            before = metrics(upstream.root)
            next(line for line in r.iter_lines() if '"content":"' in line and '"content":""' not in line)
    deadline = time.monotonic() + 20  # 450 tokens take longer than this on one thread, if not cancelled
    while time.monotonic() < deadline:
        after = metrics(upstream.root)
        if delta(after, before, f'reference_server_generations_cancelled_total{{model="{MODEL}"}}') >= 1:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the upstream kept generating for a client that had gone")
    assert httpx.get(f"{upstream.root}/health").json()["queue_depth"] == 0


# ---- limits ----------------------------------------------------------------------------------

def test_requests_per_minute_on_the_local_backend_429_with_headers_then_recovers(upstreams):
    a = upstreams[0]  # a plain reference server, limits from its keys file
    headers = {"Authorization": "Bearer sk-limited-0001"}
    seen = [httpx.post(f"{a.url}/chat/completions", json=chat(1), headers=headers, timeout=60) for _ in range(3)]
    assert [r.status_code for r in seen] == [200, 200, 429]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in seen] == ["1", "0", "0"]
    assert all(r.headers["x-ratelimit-limit-requests"] == "2" for r in seen)
    assert re.fullmatch(r"\d+ms|[\d.]+s", seen[2].headers["x-ratelimit-reset-requests"])
    err = seen[2].json()["error"]
    assert (err["type"], err["code"]) == ("requests", "rate_limit_exceeded") and "'limited'" in err["message"]
    assert "sk-limited" not in seen[2].text
    wait = int(seen[2].headers["retry-after"])
    assert 1 <= wait <= 3
    time.sleep(int(seen[2].headers["retry-after-ms"]) / 1000)
    assert httpx.post(f"{a.url}/chat/completions", json=chat(1), headers=headers, timeout=60).status_code == 200

    # The official client retries a rate limit by itself, after the server's Retry-After
    client = openai.OpenAI(base_url=a.url, api_key="sk-limited-0002", max_retries=2, timeout=60)
    before = metrics(a.root)
    for _ in range(2):
        assert client.chat.completions.create(**chat(1)).choices
    statuses = {s: delta(metrics(a.root), before, f'reference_server_requests_total{{method="POST",'
                         f'route="/v1/chat/completions",status="{s}"}}') for s in ("200", "429")}
    assert statuses == {"200": 2, "429": 1}


def test_tokens_per_minute(upstreams):
    a = upstreams[0]
    headers = {"Authorization": "Bearer sk-tokens-0001"}
    first = httpx.post(f"{a.url}/chat/completions", json=chat(8), headers=headers, timeout=60)
    assert first.status_code == 200 and first.headers["x-ratelimit-limit-tokens"] == "30"
    assert first.json()["usage"]["total_tokens"] >= 30  # spends the window in one reply
    second = httpx.post(f"{a.url}/chat/completions", json=chat(8), headers=headers, timeout=60)
    assert second.status_code == 429 and second.json()["error"]["type"] == "tokens"
    assert second.headers["x-ratelimit-remaining-tokens"] == "0" and int(second.headers["retry-after"]) <= 3


def test_a_spent_budget_is_insufficient_quota_which_the_client_does_not_retry(upstreams):
    a = upstreams[0]
    client = openai.OpenAI(base_url=a.url, api_key=TINY_KEY, max_retries=2, timeout=60)
    assert client.chat.completions.create(**chat(2)).usage.total_tokens > 1  # admitted with 0 used; now spent
    before = metrics(a.root)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**chat(2))
    assert caught.value.code == "insufficient_quota" and caught.value.body["type"] == "insufficient_quota"
    assert "budget" in caught.value.message and "token_budget" in caught.value.message
    assert caught.value.response.headers["x-should-retry"] == "false"
    sent = delta(metrics(a.root), before, 'reference_server_requests_total{method="POST",'
                 'route="/v1/chat/completions",status="429"}')
    assert sent == 1, "the openai client retried an insufficient_quota error"
    usage = httpx.get(f"{a.url}/usage", headers={"Authorization": f"Bearer {TINY_KEY}"}).json()
    assert usage["key_name"] == "tiny-budget" and usage["budget_remaining"] == 0 and usage["total_tokens"] > 1
    assert usage["requests"] == 1  # the refused one was not counted


def test_limits_and_usage_on_the_gateway(upstreams, tmp_path):
    a, b = upstreams
    keys = tmp_path / "gateway-keys.toml"
    keys.write_text('window_seconds = 2\n[[keys]]\nname = "team"\nkey = "sk-team-000001"\nrequests_per_minute = 1\n')
    g = gateway([f"{a.url}#sk-gateway-to-a", b.url], keys_file=keys)
    try:
        team = {"Authorization": "Bearer sk-team-000001"}
        assert httpx.post(f"{g.base_url}/chat/completions", json=chat(), timeout=60).status_code == 401
        ok = httpx.post(f"{g.base_url}/chat/completions", json=chat(3), headers=team, timeout=60)
        refused = httpx.post(f"{g.base_url}/chat/completions", json=chat(3), headers=team, timeout=60)
        assert ok.status_code == 200 and ok.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.status_code == 429 and refused.headers["retry-after"] in ("1", "2")
        usage = httpx.get(f"{g.base_url}/usage", headers=team).json()
        assert usage["total_tokens"] == ok.json()["usage"]["total_tokens"] and usage["requests"] == 1
        time.sleep(int(refused.headers["retry-after-ms"]) / 1000)
        assert httpx.post(f"{g.base_url}/chat/completions", json=chat(), headers=team, timeout=60).status_code == 200
    finally:
        g.stop()
    saved = json.loads((tmp_path / "gateway-keys.usage.json").read_text())
    assert saved["team"]["requests"] == 2 and "sk-team" not in json.dumps(saved)


# ---- metrics ---------------------------------------------------------------------------------

def test_metrics_count_what_was_sent(pair, upstreams):
    before = {"g": metrics(pair.root), "1": metrics(upstreams[0].root), "2": metrics(upstreams[1].root)}
    usage, served = Counter(), Counter()
    for stream in (False, False, True):
        extra = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
        r = httpx.post(f"{pair.base_url}/chat/completions", json=chat(3, **extra), timeout=60)
        body = json.loads(sse_events(r.text)[-2]) if stream else r.json()
        usage.update({k: v for k, v in body["usage"].items() if isinstance(v, int)})
        served[r.headers["x-upstream"]] += 1
    after = metrics(pair.root)
    route = 'reference_server_requests_total{method="POST",route="/v1/chat/completions",status="200"}'
    assert delta(after, before["g"], route) == 3
    assert delta(after, before["g"], f'reference_server_prompt_tokens_total{{key="-",model="{MODEL}"}}') == usage["prompt_tokens"]
    assert delta(after, before["g"], f'reference_server_completion_tokens_total{{key="-",model="{MODEL}"}}') == usage["completion_tokens"]
    assert delta(after, before["g"], f'reference_server_time_to_first_token_seconds_count{{model="{MODEL}"}}') == 3
    assert delta(after, before["g"], 'reference_server_request_duration_seconds_count{route="/v1/chat/completions"}') == 3
    assert all(after[f'reference_server_upstream_healthy{{upstream="{u.url}"}}'] == 1 for u in upstreams)
    assert after["reference_server_queue_depth"] == 0
    for number, upstream in zip("12", upstreams):  # the local backends count what the gateway sent them
        assert delta(metrics(upstream.root), before[number], route) == served[number]


# ---- failover --------------------------------------------------------------------------------

@dataclass
class Stream:
    upstream: str | None = None
    started_at: float | None = None  # when the response began: the first token had arrived
    contents: int = 0
    end: str = ""                     # "done", "error:<code>" or "status:<n>"


async def _one_stream(client: httpx.AsyncClient, s: Stream) -> None:
    async with client.stream("POST", "/chat/completions", json=chat(40, logit_bias=NO_EOS, stream=True)) as r:
        if r.status_code != 200:
            s.end = f"status:{r.status_code}"
            return
        s.upstream, s.started_at = r.headers["x-upstream"], time.monotonic()
        last = None
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                s.end = s.end or ("done" if last == "length" else f"unfinished:{last}")
                return
            chunk = json.loads(line[6:])
            if "error" in chunk:
                s.end = f"error:{chunk['error']['code']}"
            elif chunk["choices"]:
                last = chunk["choices"][0]["finish_reason"] or last
                s.contents += bool(chunk["choices"][0]["delta"].get("content"))


def test_killing_an_upstream_mid_load_loses_no_request_that_had_not_started(upstreams):
    b = upstreams[1]
    victim = wait_ready(spawn())
    g = gateway([b.url, victim.url])
    streams = [Stream() for _ in range(6)]
    killed_at: list[float] = []

    async def main() -> None:
        async with httpx.AsyncClient(base_url=g.base_url, timeout=120) as client:
            tasks = [asyncio.create_task(_one_stream(client, s)) for s in streams]
            while not any(s.upstream == "2" and s.contents >= 1 and not s.end for s in streams):
                await asyncio.sleep(0.005)
            victim.kill()
            killed_at.append(time.monotonic())
            await asyncio.gather(*tasks)
    try:
        asyncio.run(main())
        started = [s for s in streams if s.started_at is not None and s.started_at < killed_at[0]]
        waiting = [s for s in streams if s not in started]
        on_victim = [s for s in started if s.upstream == "2"]
        assert on_victim and all(s.end == "error:upstream_error" for s in on_victim), streams
        assert all(s.end == "done" for s in started if s.upstream == "1"), streams
        assert waiting and all(s.end == "done" and s.upstream == "1" for s in waiting), streams
        m = metrics(g.root)
        gone = f'upstream="{victim.url}"'
        assert m[f'reference_server_upstream_requests_total{{outcome="failed_mid_stream",{gone}}}'] == len(on_victim)
        assert m["reference_server_upstream_retries_total"] >= 1  # those queued on the victim moved to B
        assert m["reference_server_upstream_gave_up_total"] == 0
        assert m[f"reference_server_upstream_healthy{{{gone}}}"] == 0
        assert not g.contract.violations, g.contract.violations
    finally:
        g.stop()
        victim.kill()
