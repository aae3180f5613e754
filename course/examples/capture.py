"""Regenerates the captured examples the chapters show: real requests against the real server.

    .venv/bin/python course/examples/capture.py                  # everything (5-10 min on 2 cores)
    .venv/bin/python course/examples/capture.py --only errors    # one part
    .venv/bin/python course/examples/capture.py --threads 1      # on a machine other programs keep busy

Every JSON file in this folder is what the reference server answered, byte for byte apart from
pretty-printing (and the embedding vectors, cut to their first numbers: see ``embeddings``).
The servers run in-process on 127.0.0.1 with the defaults of ``make serve`` (or ``--threads``);
the CLI captures run ``reference-server`` as a subprocess, as a learner would. Speed
measurements wait for a quiet CPU (``--patience``) and record the load they started at.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import uvicorn

from reference_server import Settings, create_app
from reference_server.backends.local import LocalBackend as Engine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MODEL = "SmolLM2-135M-Instruct"
CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Say hello in five words."}]
NO_EOG = {"0": -100, "2": -100, "4": -100}  # <|endoftext|>, <|im_end|>, <reponame>: never stop early


def save(name: str, data: Any) -> None:
    path = HERE / name
    if isinstance(data, (dict, list)):
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    else:
        path.write_text(data if data.endswith("\n") else data + "\n")
    print(f"  wrote {path.relative_to(ROOT)}")


class Server:
    """One uvicorn server in a thread, on a free port of 127.0.0.1."""

    def __init__(self, settings: Settings, engine: Engine | None = None, wait: bool = True) -> None:
        self.app = create_app(settings, backend=engine)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # so TCP_NODELAY
        sock.bind(("127.0.0.1", 0))
        self.root = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.base_url = self.root + "/v1"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        while wait:
            try:
                if httpx.get(self.root + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def body_of(r: httpx.Response) -> Any:
    return r.json()


def save_http(name: str, r: httpx.Response, headers: tuple[str, ...] = ()) -> None:
    """A response as an HTTP transcript: status line, the headers that matter, the JSON body."""
    (HERE / name).parent.mkdir(exist_ok=True)
    head = headers_of(r, ("content-type", *headers))
    save(name, head + "\n\n" + json.dumps(r.json(), indent=2, ensure_ascii=False))


def headers_of(r: httpx.Response, names: tuple[str, ...]) -> str:
    lines = [f"HTTP/1.1 {r.status_code} {r.reason_phrase}"]
    lines += [f"{k}: {v}" for k, v in r.headers.items() if k.lower() in names]
    return "\n".join(lines)


PATIENCE_S = 600.0


def wait_for_quiet_cpu(limit: float = 1.5, patience_s: float | None = None) -> float:
    """Speed means little while other programs share the cores: wait for a quiet moment, up to a
    point, and return the load average the measurement starts at (it is saved with the numbers)."""
    deadline = time.monotonic() + (PATIENCE_S if patience_s is None else patience_s)
    while hasattr(os, "getloadavg") and os.getloadavg()[0] > limit and time.monotonic() < deadline:
        print(f"  waiting for a quiet CPU (load {os.getloadavg()[0]:.2f})", flush=True)
        time.sleep(10)
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else 0.0


# ---- chapter 1 and 2: the shapes ----------------------------------------------------------------

def basics(srv: Server, engine: Engine) -> None:
    with httpx.Client(base_url=srv.root, timeout=120) as http:
        save("models.json", body_of(http.get("/v1/models")))
        save("health.json", body_of(http.get("/health")))
        request = {"model": MODEL, "messages": HELLO, "max_tokens": 32, "temperature": 0}
        save("chat_request.json", request)
        save("chat_response.json", body_of(http.post(CHAT, json=request)))
        length = {"model": MODEL, "messages": HELLO, "max_tokens": 4, "temperature": 0}
        save("chat_response_length.json", body_of(http.post(CHAT, json=length)))
        legacy = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
        save("completion_request.json", legacy)
        save("completion_response.json", body_of(http.post("/v1/completions", json=legacy)))
        ignored = {"model": MODEL, "messages": HELLO, "max_tokens": 4, "temperature": 0,
                   "store": True, "metadata": {"course": "chapter-2"}, "service_tier": "flex"}
        save("chat_ignored_fields_status.txt", f"HTTP {http.post(CHAT, json=ignored).status_code}")
    conversation = [{"role": "system", "content": "You are terse."}, HELLO[0]]
    save("chat_prompt.txt", engine.render_chat(conversation))
    tokens = engine.tokenize(engine.render_chat(HELLO))
    save("chat_prompt_tokens.json", {"prompt": engine.render_chat(HELLO), "tokens": len(tokens),
                                     "ids": tokens})


# ---- chapter 4: streaming -------------------------------------------------------------------

def streaming(srv: Server) -> None:
    request = {"model": MODEL, "messages": HELLO, "max_tokens": 6, "temperature": 0,
               "stream": True, "stream_options": {"include_usage": True}}
    with httpx.Client(base_url=srv.root, timeout=120) as http:
        with http.stream("POST", CHAT, json=request) as r:
            raw = b"".join(r.iter_raw())
            head = headers_of(r, ("content-type", "cache-control", "x-accel-buffering", "transfer-encoding"))
    save("stream_request.json", request)
    save("stream.txt", raw.decode())
    frames = [f[len("data: "):] for f in raw.decode().split("\n\n") if f.startswith("data: {")]
    save("stream_chunk_role.json", json.loads(frames[0]))
    save("stream_chunk_delta.json", json.loads(frames[1]))
    save("stream_chunk_finish.json", json.loads(frames[-2]))
    save("stream_chunk_usage.json", json.loads(frames[-1]))
    save("stream_headers.txt", head)
    plain = {k: v for k, v in request.items() if k != "stream_options"}
    with httpx.Client(base_url=srv.root, timeout=120) as http:
        with http.stream("POST", CHAT, json=plain) as r:
            frames = [f for f in b"".join(r.iter_raw()).decode().split("\n\n") if f]
    save("stream_without_usage_tail.txt", "\n\n".join(frames[-2:]))


# ---- chapter 5 and reference: errors --------------------------------------------------------

def errors(srv: Server, settings: Settings, engine: Engine) -> None:
    hi = [{"role": "user", "content": "Hi"}]
    out: dict[str, Any] = {}
    with httpx.Client(base_url=srv.root, timeout=120) as http:
        def record(name: str, r: httpx.Response, *headers: str) -> None:
            out[name] = {"status": r.status_code, "body": r.json()}
            if headers:
                out[name]["headers"] = {h: r.headers.get(h) for h in headers}
            save_http(f"errors/{name}.http", r, headers)

        record("model_not_found", http.post(CHAT, json={"model": "gpt-4o", "messages": hi}))
        record("unrecognized_argument", http.post(CHAT, json={"model": MODEL, "messages": hi, "maxTokens": 5}))
        record("out_of_range", http.post(CHAT, json={"model": MODEL, "messages": hi, "temperature": 3}))
        record("missing_parameter", http.post(CHAT, json={"model": MODEL}))
        record("bad_role", http.post(CHAT, json={"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}))
        record("image_part", http.post(CHAT, json={"model": MODEL, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}))
        record("malformed_json", http.post(CHAT, content=b'{"model": "x", "messages": [', headers={
            "Content-Type": "application/json"}))
        record("context_length_exceeded_max_tokens",
               http.post(CHAT, json={"model": MODEL, "messages": hi, "max_tokens": 5000}))
        long = [{"role": "user", "content": "word " * 4200}]
        record("context_length_exceeded_messages", http.post(CHAT, json={"model": MODEL, "messages": long}))
        record("stream_options_without_stream", http.post(CHAT, json={
            "model": MODEL, "messages": hi, "stream_options": {"include_usage": True}}))
        record("no_content_type", http.post(CHAT, content=json.dumps({"model": MODEL, "messages": hi}).encode(),
                                            headers={"Content-Type": "application/x-www-form-urlencoded"}))
        record("invalid_url_no_v1", http.post("/chat/completions", json={"model": MODEL, "messages": hi}))
        record("method_not_allowed", http.get(CHAT))
        record("embeddings_dimensions", http.post("/v1/embeddings", json={
            "model": MODEL, "input": "x", "dimensions": 256}))
        record("logit_bias_not_a_token", http.post(CHAT, json={
            "model": MODEL, "messages": hi, "logit_bias": {"hello": 5}}))
        record("top_logprobs_without_logprobs", http.post(CHAT, json={
            "model": MODEL, "messages": hi, "top_logprobs": 3}))

    secured = Server(settings.model_copy(update={"api_keys": ["sk-room-42"]}), engine)
    with httpx.Client(base_url=secured.root) as http:
        record("missing_api_key", http.get("/v1/models"), "www-authenticate")
        record("wrong_api_key", http.get("/v1/models", headers={"Authorization": "Bearer sk-nope"}))
    secured.stop()

    # 503: an app whose lifespan has not run has an engine still "loading".
    loading = create_app(settings, backend=Engine(settings))

    async def probe() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=loading), base_url="http://x") as c:
            return await c.post(CHAT, json={"model": MODEL, "messages": hi})
    record("model_loading", asyncio.run(probe()), "retry-after")

    # 429: --parallel 1 --max-queue 2, one long generation running and two waiting (with more
    # slots, the first requests would all be running).
    busy_engine = Engine(settings.model_copy(update={"parallel": 1, "max_queue": 2, "embeddings": False}))
    busy_engine.load()
    busy = Server(busy_engine.settings, busy_engine)
    long_gen = {"model": MODEL, "messages": hi, "max_tokens": 200, "logit_bias": NO_EOG}
    with httpx.Client(base_url=busy.root, timeout=300) as http:
        waiting = [threading.Thread(target=lambda: http.post(CHAT, json=long_gen)) for _ in range(3)]
        for t in waiting:
            t.start()
            time.sleep(0.3)
        record("queue_full", http.post(CHAT, json={"model": MODEL, "messages": hi, "max_tokens": 2}), "retry-after")
        for t in waiting:
            t.join()
    busy.stop()
    save("errors.json", out)
    fastapi_default(out)


def fastapi_default(out: dict[str, Any]) -> None:
    """What a bare FastAPI app answers for the same mistake: the shape OpenAI clients cannot read."""
    from fastapi.testclient import TestClient

    r = TestClient(_bare_fastapi_app()).post(CHAT, json={"model": MODEL, "temperature": "hot"})
    save_http("errors/fastapi_default_422.http", r)


def _bare_fastapi_app() -> Any:
    from fastapi import FastAPI
    from pydantic import BaseModel, create_model

    body_model: type[BaseModel] = create_model("Body", model=(str, ...), temperature=(float, ...))
    bare = FastAPI()

    def chat(body: body_model) -> dict[str, str]:  # type: ignore[valid-type]
        return {}
    chat.__annotations__ = {"body": body_model, "return": dict}
    bare.post("/v1/chat/completions")(chat)
    return bare


def sdk_errors(srv: Server) -> None:
    """What the official client raises: the messages learners paste into search engines."""
    def attempt(name: str, fn: Any) -> None:
        try:
            fn()
            text = "(no error)"
        except Exception as exc:  # noqa: BLE001 - we record whatever the SDK raises
            text = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
        (HERE / "errors").mkdir(exist_ok=True)
        save(f"errors/sdk_{name}.txt", text)

    saved = os.environ.pop("OPENAI_API_KEY", None)
    try:
        attempt("no_api_key", lambda: openai.OpenAI(base_url=srv.base_url))
    finally:
        if saved is not None:
            os.environ["OPENAI_API_KEY"] = saved
    no_v1 = openai.OpenAI(base_url=srv.root, api_key="not-needed", max_retries=0)
    attempt("no_v1", lambda: no_v1.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4))
    ok = openai.OpenAI(base_url=srv.base_url, api_key="not-needed", max_retries=0)
    attempt("model_not_found", lambda: ok.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=4))
    attempt("temperature", lambda: ok.chat.completions.create(model=MODEL, messages=HELLO, temperature=3))
    closed = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="not-needed", max_retries=0)
    attempt("connection", lambda: closed.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4))


def cli_errors() -> None:
    """The CLI's refusals, run as a learner runs them."""
    exe = str(Path(sys.executable).with_name("reference-server"))
    (HERE / "errors").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fake = Path(tmp) / "model.gguf"
        fake.write_text("<!DOCTYPE html><html>Sign in to download this model</html>")
        missing = Path(tmp) / "qwen2.5-0.5b-instruct-q4_k_m.gguf"
        blocker = socket.socket()
        try:
            blocker.bind(("127.0.0.1", 8000))
        except OSError:
            blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        runs = {
            "not_gguf": ("reference-server --model ~/Downloads/model.gguf", [exe, "--model", str(fake)],
                         str(fake), "~/Downloads/model.gguf"),
            "model_missing": ("reference-server --model qwen2.5-0.5b-instruct-q4_k_m.gguf",
                              [exe, "--model", str(missing)], str(missing), "qwen2.5-0.5b-instruct-q4_k_m.gguf"),
            "n_ctx": ("reference-server --n-ctx 32", [exe, "--n-ctx", "32"], None, None),
            "port_in_use": (f"reference-server --port {port}", [exe, "--port", str(port)], None, None),
        }
        for name, (shown_cmd, argv, real, shown) in runs.items():
            p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            text = (p.stdout + p.stderr).strip()
            if real:
                text = text.replace(real, shown)
            save(f"errors/cli_{name}.txt", f"$ {shown_cmd}\n{text}\n$ echo $?\n{p.returncode}")
        blocker.close()


# ---- chapter 6: embeddings ------------------------------------------------------------------

def embeddings(srv: Server) -> None:
    import numpy as np

    request = {"model": MODEL, "input": ["The cat sat on the mat.", "A kitten rested on the rug."]}
    with httpx.Client(base_url=srv.root, timeout=120) as http:
        r = http.post("/v1/embeddings", json=request).json()
        b64 = http.post("/v1/embeddings", json={"model": MODEL, "input": "The cat sat on the mat.",
                                                 "encoding_format": "base64"}).json()
    dims = len(r["data"][0]["embedding"])
    shown = json.loads(json.dumps(r))
    for item in shown["data"]:
        item["embedding"] = [round(x, 6) for x in item["embedding"][:4]]
    save("embeddings_request.json", request)
    save("embeddings_response.json", shown)
    b64["data"][0]["embedding"] = b64["data"][0]["embedding"][:48]
    save("embeddings_response_base64.json", b64)

    sentences = ["The cat sat on the mat.", "A kitten rested on the rug.",
                 "The stock market fell sharply today.", "Shares dropped at the opening bell.",
                 "How do I bake bread?"]
    client = openai.OpenAI(base_url=srv.base_url, api_key="not-needed", max_retries=0)
    vectors = np.array([d.embedding for d in client.embeddings.create(model=MODEL, input=sentences).data])
    sims = vectors @ vectors.T
    # Lab 6's corpus: 24 documents in 8 topics. Same-topic pairs against different-topic pairs
    # shows how much of a cosine is meaning and how much is the direction all vectors share.
    corpus = [json.loads(line) for line in (ROOT / "labs" / "data" / "corpus.jsonl").read_text().splitlines()]
    docs = np.array([d.embedding for d in client.embeddings.create(model=MODEL, input=[c["text"] for c in corpus]).data])
    pairs = docs @ docs.T
    same, different = [], []
    for i in range(len(corpus)):
        for j in range(i + 1, len(corpus)):
            (same if corpus[i]["topic"] == corpus[j]["topic"] else different).append(float(pairs[i, j]))

    def spread(values: list[float]) -> dict[str, float]:
        return {"pairs": len(values), "min": round(min(values), 3), "median": round(float(np.median(values)), 3),
                "max": round(max(values), 3)}

    save("embeddings_similarity.json", {
        "dimensions": dims, "norms": [round(float(n), 6) for n in np.linalg.norm(vectors, axis=1)],
        "sentences": sentences,
        "cosine": [[round(float(x), 3) for x in row] for row in sims],
        "lab6_corpus": {"documents": len(corpus), "topics": len({c["topic"] for c in corpus}),
                        "same_topic": spread(same), "different_topic": spread(different)}})


# ---- measurements: this machine -------------------------------------------------------------

def measure(srv: Server, settings: Settings, load_seconds: float) -> None:
    import llama_cpp

    load = wait_for_quiet_cpu()
    client = openai.OpenAI(base_url=srv.base_url, api_key="not-needed", max_retries=0, timeout=300)
    runs = []
    for seed in (1, 2, 3):
        start = time.perf_counter()
        first = None
        usage = None
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Tell me a long story about a lighthouse."}],
            max_tokens=256, temperature=0.7, seed=seed, logit_bias=NO_EOG, stream=True,
            stream_options={"include_usage": True})
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter()
            if chunk.usage:
                usage = chunk.usage
        end = time.perf_counter()
        runs.append({"ttft_s": round(first - start, 3),
                     "decode_tokens_per_s": round((usage.completion_tokens - 1) / (end - first), 1),
                     "completion_tokens": usage.completion_tokens, "prompt_tokens": usage.prompt_tokens})
    # prompt processing: a long prompt, one output token
    text = " ".join(["The lighthouse keeper wrote in his log every night."] * 150)
    start = time.perf_counter()
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=1)
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    client.embeddings.create(model=MODEL, input=["The cat sat on the mat."] * 16)
    emb = time.perf_counter() - start
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    save("measurements.json", {
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "threads_used": settings.n_threads,
                    "load_average_1min_at_start": load,
                    "python": platform.python_version(), "os": platform.platform()},
        "versions": {"llama_cpp_python": llama_cpp.__version__, "openai": openai.__version__},
        "model": {"file": settings.model_path.name, "bytes": settings.model_path.stat().st_size,
                  "n_ctx": settings.n_ctx, "load_seconds": round(load_seconds, 2)},
        "generation": runs,
        "prefill": {"prompt_tokens": r.usage.prompt_tokens, "seconds": round(prefill, 3),
                    "tokens_per_s": round(r.usage.prompt_tokens / prefill, 1)},
        "embeddings_16_short_inputs_s": round(emb, 3)})


def tools(srv: Server) -> None:
    """Tool calling and structured outputs (reference_server/tools.py)."""
    weather = {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": False}}}
    ask = [{"role": "user", "content": "What's the weather in Paris?"}]
    with httpx.Client(base_url=srv.root, timeout=600) as http:
        forced = {"model": MODEL, "messages": ask, "tools": [weather], "temperature": 0,
                  "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
        save("tools_request.json", forced)
        save("tools_forced_response.json", http.post(CHAT, json=forced).json())
        auto = {"model": MODEL, "messages": ask, "tools": [weather], "tool_choice": "auto", "temperature": 0}
        save("tools_auto_response.json", http.post(CHAT, json=auto).json())
        schema = {"type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": {
            "type": "object", "properties": {"name": {"type": "string"}, "country": {"type": "string"}},
            "required": ["name", "country"], "additionalProperties": False}}}
        structured = {"model": MODEL, "messages": [{"role": "user", "content": "Name a city in Japan."}],
                      "response_format": schema, "temperature": 0, "max_tokens": 64}
        save("structured_request.json", structured)
        save("structured_response.json", http.post(CHAT, json=structured).json())
        streamed = {**forced, "stream": True}
        with http.stream("POST", CHAT, json=streamed) as r:
            save("tools_stream.txt", b"".join(r.iter_raw()).decode())
        # How often does auto mode call the tool on questions that need it?
        questions = ["What's the weather in Paris?", "Is it raining in Tokyo right now?",
                     "How hot is it in Cairo today?", "Weather for Berlin, please.",
                     "Do I need an umbrella in London today?"]
        unrelated = ["What is 2 + 2?", "Write a haiku about the sea.", "Who wrote Hamlet?",
                     "Translate 'thank you' into French.", "Name a prime number."]
        decided = []
        for q in questions + unrelated:
            for seed in (1, 2):
                r = http.post(CHAT, json={"model": MODEL, "messages": [{"role": "user", "content": q}],
                                          "tools": [weather], "tool_choice": "auto", "seed": seed,
                                          "max_tokens": 48}).json()
                choice = r["choices"][0]
                decided.append({"question": q, "needs_the_tool": q in questions, "seed": seed,
                                "called": bool(choice["message"].get("tool_calls")),
                                "finish_reason": choice["finish_reason"]})
        needs = [d for d in decided if d["needs_the_tool"]]
        others = [d for d in decided if not d["needs_the_tool"]]
        summary = {"tool_choice": "auto", "called_when_needed": f"{sum(d['called'] for d in needs)}/{len(needs)}",
                   "called_when_not_needed": f"{sum(d['called'] for d in others)}/{len(others)}"}
        save("tools_auto_summary.json", summary)
        save("tools_auto_decisions.json", {"summary": summary, "requests": decided})
    from reference_server.backends.local import tools as tools_module
    from reference_server.backends.local import LocalBackend as E
    from reference_server.protocol import CreateChatCompletionRequest

    save("tools_grammar_converter.gbnf", E.grammar_from_json_schema(weather["function"]["parameters"]))
    plan = tools_module.plan(srv.app.state.backend, CreateChatCompletionRequest(**forced))
    save("tools_grammar.gbnf", plan.grammar or "")
    save("tools_instructions.txt", plan.instructions)

    # The same instructions with and without the grammar: how often is the call usable?
    import re

    import jsonschema

    schema = weather["function"]["parameters"]
    questions = ["What's the weather in Paris?", "Is it raining in Tokyo right now?", "How hot is it in Cairo today?",
                 "Weather for Berlin, please.", "Do I need an umbrella in London today?"]

    def usable(arguments: Any) -> bool:
        try:
            jsonschema.validate(arguments, schema)
            return True
        except jsonschema.ValidationError:
            return False

    rows = []
    with httpx.Client(base_url=srv.root, timeout=600) as http:
        for q in questions:
            for seed in (1, 2):
                ask = [{"role": "user", "content": q}]
                r = http.post(CHAT, json={**forced, "messages": ask, "temperature": 0.8, "seed": seed}).json()
                calls = r["choices"][0]["message"].get("tool_calls") or []
                with_grammar = bool(calls) and all(
                    c["function"]["name"] == "get_weather" and usable(json.loads(c["function"]["arguments"]))
                    for c in calls)
                free = http.post(CHAT, json={
                    "model": MODEL, "temperature": 0.8, "seed": seed, "max_tokens": 64,
                    "messages": [{"role": "system", "content": plan.instructions}, *ask]}).json()
                text = free["choices"][0]["message"]["content"]
                m = re.search(r"<tool_call>(.*?)</tool_call>", text, re.S)
                try:
                    parsed = json.loads(m.group(1)) if m else None
                    without = (isinstance(parsed, list) and len(parsed) >= 1 and parsed[0].get("name") == "get_weather"
                               and usable(parsed[0].get("arguments")))
                except (ValueError, AttributeError):
                    without = False
                rows.append({"question": q, "seed": seed, "with_grammar": with_grammar,
                             "without_grammar": without, "without_grammar_text": text[:120]})
    summary = {"valid_calls_with_grammar": f"{sum(r['with_grammar'] for r in rows)}/{len(rows)}",
               "valid_calls_prompt_only": f"{sum(r['without_grammar'] for r in rows)}/{len(rows)}"}
    save("tools_grammar_vs_prompt_summary.json", summary)
    save("tools_grammar_vs_prompt.json", {"summary": summary, "requests": rows})


def responses(srv: Server) -> None:
    """The Responses API (chapter 9): a body, a raw stream, a refusal and an unknown id."""
    color = {"format": {"type": "json_schema", "name": "color", "strict": True, "schema": {
        "type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"],
        "additionalProperties": False}}}
    with httpx.Client(base_url=srv.root, timeout=600) as http:
        request = {"model": MODEL, "instructions": "Answer in one short sentence.", "max_output_tokens": 32,
                   "temperature": 0, "input": [{"role": "user", "content": "What is the capital of France?"}]}
        save("responses_request.json", request)
        save("responses_response.json", http.post("/v1/responses", json=request).json())
        streamed = {"model": MODEL, "input": "Name a color.", "text": color, "temperature": 0, "stream": True}
        save("responses_stream_request.json", streamed)
        with http.stream("POST", "/v1/responses", json=streamed) as r:
            save("responses_stream.txt", b"".join(r.iter_raw()).decode())
        save_http("errors/responses_web_search.http", http.post("/v1/responses", json={
            "model": MODEL, "input": "News about llamas?", "tools": [{"type": "web_search"}]}))
        save_http("errors/responses_not_found.http", http.get("/v1/responses/resp_0123456789abcdef"))


def checkpoints(settings: Settings) -> None:
    """Two real checkpoint logs from this machine, 2 threads and 1 thread, shown and compared."""
    from coursekit import checkpoint

    logs = {}
    wait_for_quiet_cpu()
    with tempfile.TemporaryDirectory() as tmp:
        for threads in (settings.n_threads, 1):
            engine = Engine(settings.model_copy(update={"n_threads": threads, "embeddings": False}))
            engine.load()
            srv = Server(engine.settings, engine)
            client = openai.OpenAI(base_url=srv.base_url, api_key="not-needed", max_retries=0)
            reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=32, temperature=0)
            start, first, usage = time.perf_counter(), None, None
            for chunk in client.chat.completions.create(
                    model=MODEL, messages=HELLO, max_tokens=128, temperature=0, logit_bias=NO_EOG,
                    stream=True, stream_options={"include_usage": True}):
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter()
                usage = chunk.usage or usage
            tps = (usage.completion_tokens - 1) / (time.perf_counter() - first)
            srv.stop()
            log = Path(tmp) / f"threads-{threads}.jsonl"
            observed = {"reply": reply.choices[0].message.content, "prompt_tokens": reply.usage.prompt_tokens}
            checkpoint.record("01_api_design", observed, tps, log=log, quiet=True, model_path=settings.model_path,
                              n_ctx=settings.n_ctx, n_threads=threads,
                              checks={"models_endpoint": True, "unknown_model_is_404": True})
            logs[threads] = log
        exe = str(Path(sys.executable).with_name("coursekit"))
        mine, ref = str(logs[1]), str(logs[settings.n_threads])
        show = subprocess.run([exe, "checkpoint", "show", ref], capture_output=True, text=True, check=True).stdout
        compare = subprocess.run([exe, "checkpoint", "compare", mine, ref], capture_output=True, text=True,
                                 check=True).stdout
        save("checkpoint_show.txt", "$ coursekit checkpoint show checkpoints/checkpoints.jsonl\n"
             + show.replace(ref, "checkpoints/checkpoints.jsonl"))
        merge = subprocess.run([exe, "checkpoint", "merge", ref, mine], capture_output=True, text=True,
                               check=True).stdout
        save("checkpoint_merge.txt", "$ coursekit checkpoint merge room/*.jsonl\n"
             + merge.replace(mine, "room/threads-1.jsonl").replace(ref, "room/threads-2.jsonl"))
        save("checkpoint_compare.txt", "$ coursekit checkpoint compare threads-1.jsonl threads-2.jsonl\n"
             + compare.replace(mine, "threads-1.jsonl").replace(ref, "threads-2.jsonl"))


def room(settings: Settings) -> None:
    """30 learners press "run" at the same moment: what one shared server does with them, serial
    (``--deterministic``, the server of chapters 1 to 7) and batching (chapter 8)."""
    import concurrent.futures

    rooms = {  # name -> settings; the queue bound and the slots belong to the engine's runner
        "serial (--deterministic), max_queue=32": {"deterministic": True, "max_queue": 32},
        "batching (--parallel 4), max_queue=16": {"parallel": 4, "max_queue": 16},
        "batching (--parallel 4), max_queue=32": {"parallel": 4, "max_queue": 32},
        "batching (--parallel 8), max_queue=32": {"parallel": 8, "max_queue": 32},
    }
    results: dict[str, Any] = {"threads": settings.n_threads, "cores": os.cpu_count()}
    for name, update in rooms.items():
        room_engine = Engine(settings.model_copy(update={**update, "embeddings": False}))
        room_engine.load()
        srv = Server(room_engine.settings, room_engine)
        load = wait_for_quiet_cpu()

        def one(i: int) -> dict[str, Any]:
            client = openai.OpenAI(base_url=srv.base_url, api_key="not-needed", max_retries=0, timeout=600)
            start = time.perf_counter()
            try:
                r = client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"Write a haiku about the number {i}."}],
                    max_tokens=64, temperature=0.7, seed=i, logit_bias=NO_EOG)
                return {"status": 200, "seconds": time.perf_counter() - start,
                        "tokens": r.usage.completion_tokens}
            except openai.RateLimitError:
                return {"status": 429, "seconds": time.perf_counter() - start}

        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=30) as pool:
            runs = list(pool.map(one, range(30)))
        wall = time.perf_counter() - start
        srv.stop()
        served = sorted(r["seconds"] for r in runs if r["status"] == 200)
        refused = [r["seconds"] for r in runs if r["status"] == 429]
        results[name] = {
            "slots": room_engine.memory, "load_average_1min_at_start": load,
            "requests": 30, "max_tokens": 64, "served": len(served), "refused_429": len(refused),
            "slowest_429_s": round(max(refused), 3) if refused else None,
            "first_answer_s": round(served[0], 2), "median_answer_s": round(served[len(served) // 2], 2),
            "last_answer_s": round(served[-1], 2), "wall_s": round(wall, 2),
            "tokens_per_s_overall": round(sum(r.get("tokens", 0) for r in runs) / wall, 1)}
        del room_engine, srv
    save("room_simulation.json", results)


def threads(settings: Settings) -> None:
    """Decode speed with 1 and with all threads, at whatever load the machine has right now."""
    import llama_cpp

    runs = []
    for n_threads in (1, settings.n_threads) * 2:
        llm = llama_cpp.Llama(model_path=str(settings.model_path), n_ctx=512, n_threads=n_threads,
                              n_threads_batch=n_threads, verbose=False)
        prompt = llm.tokenize(b"Tell me a story about a lighthouse.")
        count, start = 0, time.perf_counter()
        for _ in llm.generate(prompt, temp=0.0):
            count += 1
            if count == 100:
                break
        runs.append({"threads": n_threads, "tokens_per_s": round(count / (time.perf_counter() - start), 1),
                     "load_average_1min": round(os.getloadavg()[0], 2)})
        del llm
    save("threads_under_load.json", {"cores": os.cpu_count(), "tokens": 100, "runs": runs})


EXAMPLES = ("hello", "finish_reason", "stream", "stream_raw", "errors_client", "embeddings", "tools", "responses",
            "providers")


def outputs(srv: Server) -> None:
    """Runs each example script against the server, as a learner would, and keeps what it printed."""
    for name in EXAMPLES:
        script = HERE / f"{name}.py"
        if not script.exists():
            continue
        p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "BASE_URL": srv.base_url})
        if p.returncode:
            raise SystemExit(f"{script.name} failed:\n{p.stderr}")
        save(f"{name}.out.txt", p.stdout)


# ---- chapter 11: scaling out ------------------------------------------------------------------

def gateway(settings: Settings, engine: Engine) -> None:
    """A gateway over two upstreams (in-process, one model), its limits and metrics; then a real
    upstream process killed in the middle of a stream."""
    keys = Path(tempfile.mkdtemp()) / "keys.toml"
    keys.write_text('window_seconds = 60\n'
                    '[[keys]]\nname = "alice"\nkey = "sk-alice-0001"\nrequests_per_minute = 2\n'
                    'tokens_per_minute = 20000\n'
                    '[[keys]]\nname = "bob"\nkey = "sk-bob-00001"\ntoken_budget = 30\n')
    ups = [Server(settings, engine), Server(settings, engine)]
    gw = Server(Settings(upstreams=[u.base_url for u in ups], keys_file=keys))
    hi = {"model": MODEL, "messages": HELLO, "max_tokens": 12}
    limit_headers = ("x-upstream", "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                     "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens",
                     "x-ratelimit-reset-tokens", "retry-after", "retry-after-ms", "x-should-retry")
    try:
        with httpx.Client(base_url=gw.root, timeout=120) as http:
            alice = {"Authorization": "Bearer sk-alice-0001"}
            save_http("gateway/answered.http", http.post(CHAT, json=hi, headers=alice), limit_headers)
            http.post(CHAT, json=hi, headers=alice)
            save_http("gateway/rate_limited.http", http.post(CHAT, json=hi, headers=alice), limit_headers)
            bob = {"Authorization": "Bearer sk-bob-00001"}
            http.post(CHAT, json={**hi, "max_tokens": 40}, headers=bob)
            save_http("gateway/insufficient_quota.http", http.post(CHAT, json=hi, headers=bob), limit_headers)
            save("gateway/usage.json", http.get("/v1/usage", headers=bob).json())
            wanted = ("reference_server_requests_total", "reference_server_prompt_tokens_total",
                      "reference_server_completion_tokens_total", "reference_server_time_to_first_token_seconds_count",
                      "reference_server_queue_depth", "reference_server_upstream", "reference_server_rate_limited")
            page = http.get("/metrics").text.splitlines()
            save("gateway/metrics.txt", "\n".join(line for line in page if line.startswith(wanted)))
    finally:
        gw.stop()
        for u in ups:
            u.stop()
    mid_stream_failure()


def mid_stream_failure() -> None:
    """A real upstream process, SIGKILLed after the first tokens of a reply streamed through a gateway."""
    env = {**os.environ, "REFERENCE_SERVER_SUPERVISED": str(os.getpid())}  # no supervisor: one pid to kill
    proc = subprocess.Popen([sys.executable, "-m", "reference_server", "--port", "0", "--n-ctx", "512",
                             "--no-embeddings", "--threads", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        url = ""
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith("Ready: "):
                url = line.split(" at ")[1].strip()
                break
        gw = Server(Settings(upstreams=[url]))
        body = {"model": MODEL, "messages": HELLO, "max_tokens": 200, "logit_bias": NO_EOG, "stream": True}
        frames = []
        with httpx.Client(timeout=120) as http, http.stream("POST", gw.base_url + "/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    frames.append(line)
                    if len(frames) == 4:
                        proc.kill()
        gw.stop()
        save("gateway/mid_stream_failure.txt", "...\n" + "\n\n".join(frames[-3:]))
    finally:
        proc.kill()
        proc.wait()


def banner() -> None:
    """What `make serve` prints: the real CLI, on the default port (stop anything on 8000 first)."""
    exe = str(Path(sys.executable).with_name("reference-server"))
    proc = subprocess.Popen([exe], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, notices = [], []
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith("llama_"):
                notices.append(line.rstrip())  # llama.cpp's own notice on stderr, not part of the banner
                continue
            lines.append(line.rstrip())
            if "print(reply" in line or line.startswith("reference-server:"):
                break
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    save("banner.txt", "\n".join(lines))
    if notices:
        save("errors/startup_notice.txt", "\n".join(notices))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*",
                        help="basics streaming errors sdk cli embeddings measure tools responses outputs banner "
                             "checkpoints room threads gateway")
    parser.add_argument("--threads", type=int, help="llama.cpp threads (default: all cores, as `make serve`); "
                        "on a machine other programs keep busy, 1 is far faster")
    parser.add_argument("--patience", type=float, default=PATIENCE_S,
                        help="seconds to wait for a quiet CPU before measuring anyway (the load is recorded)")
    args = parser.parse_args()
    globals()["PATIENCE_S"] = args.patience
    want = set(args.only or ["basics", "streaming", "errors", "sdk", "cli", "embeddings", "measure", "tools",
                             "responses", "outputs", "banner", "checkpoints", "room", "threads", "gateway"])
    settings = Settings(**({"n_threads": args.threads} if args.threads else {}))  # else: `make serve`
    start = time.perf_counter()
    engine = Engine(settings)
    engine.load()
    load_seconds = time.perf_counter() - start
    srv = Server(settings, engine)
    try:
        if "basics" in want:
            basics(srv, engine)
        if "streaming" in want:
            streaming(srv)
        if "errors" in want:
            errors(srv, settings, engine)
        if "sdk" in want:
            sdk_errors(srv)
        if "cli" in want:
            cli_errors()
        if "embeddings" in want:
            embeddings(srv)
        if "measure" in want:
            measure(srv, settings, load_seconds)
        if "tools" in want:
            tools(srv)
        if "responses" in want:
            responses(srv)
        if "outputs" in want:
            outputs(srv)
        if "checkpoints" in want:
            checkpoints(settings)
        if "room" in want:
            room(settings)
        if "threads" in want:
            threads(settings)
        if "gateway" in want:
            gateway(settings, engine)
    finally:
        srv.stop()
    if "banner" in want:
        banner()


if __name__ == "__main__":
    main()
