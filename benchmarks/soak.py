"""Soak: the real server (``python -m reference_server``) under mixed traffic for a bounded time.

On 127.0.0.1 only, for ``--minutes`` (or ``--max-requests``), several kinds of clients at once:

- good: chat (plain and streamed), completions, embeddings, the Responses API, now and then a
  forced tool call;
- malformed: broken JSON, deep nesting, wrong types, wrong Content-Type, bytes that are not
  UTF-8, unknown models, NaN, numbers past every limit;
- oversized: bodies past --max-body-bytes, declared (Content-Length) and chunked;
- slow: a body trickled in over seconds, and a stream read slowly;
- disconnecting: a stream abandoned after a few chunks (the generation must stop);
- bursts: every ``--burst-every`` seconds, ``--burst`` good requests at once, past the queue.

It reports requests by kind and outcome, the 5xx count (must be 0), latency of the good requests
(outside bursts, and in them), the server's RSS at the start (after a warm-up) and the end with
samples in between, that the queue drains to 0 once the load stops, and, last, that SIGTERM
stops the server with exit status 0. Exits 1 if any 5xx, transport error on a well-formed
request, undrained queue or unclean exit was seen.

Usage: .venv/bin/python benchmarks/soak.py [--minutes 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import httpx  # noqa: E402
import psutil  # noqa: E402

from machine import LoadMeter, machine_info, machine_lines  # noqa: E402
from reference_server.settings import Settings  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
HI = [{"role": "user", "content": "Say hello in five words."}]
NO_EOG = {"0": -100, "2": -100, "4": -100}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


class Soak:
    def __init__(self, root: str, args: argparse.Namespace) -> None:
        self.root, self.args = root, args
        self.outcomes: Counter = Counter()      # (kind, outcome) -> requests
        self.latency: dict[str, list[float]] = {"good": [], "burst": []}
        self.problems: list[str] = []
        self.sent = 0
        self.deadline = 0.0

    def more(self) -> bool:
        return time.monotonic() < self.deadline and self.sent < self.args.max_requests

    def record(self, kind: str, outcome: str, problem: str | None = None) -> None:
        self.sent += 1
        self.outcomes[(kind, outcome)] += 1
        if problem:
            self.problems.append(f"{kind}: {problem}")

    def judge(self, kind: str, status: int, expected: set[int], text: str = "") -> None:
        outcome = str(status)
        problem = None
        if status >= 500:
            problem = f"{status}: {text[:200]}"
        elif status not in expected:
            problem = f"unexpected {status} (expected {sorted(expected)}): {text[:200]}"
        self.record(kind, outcome, problem)

    # ---- good requests ----------------------------------------------------------------------------

    def good_request(self) -> tuple[str, dict[str, Any]]:
        r = random.random()
        if r < 0.3:
            return "/v1/chat/completions", {"model": MODEL, "messages": HI, "max_tokens": 16,
                                            "temperature": random.choice([0, 0.7, 1.0])}
        if r < 0.55:
            return "/v1/chat/completions", {"model": MODEL, "messages": HI, "max_tokens": 24, "stream": True,
                                            "stream_options": {"include_usage": True}}
        if r < 0.75:
            return "/v1/completions", {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 12}
        if r < 0.88:
            return "/v1/embeddings", {"model": MODEL, "input": ["first text", "second text"]}
        if r < 0.94:
            return "/v1/responses", {"model": MODEL, "input": "Say hello in five words.", "max_output_tokens": 16,
                                     "stream": random.random() < 0.5}
        return "/v1/chat/completions", {"model": MODEL, "max_tokens": 48, "tools": [TOOL], "tool_choice": "required",
                                        "messages": [{"role": "user", "content": "Weather in Paris?"}]}

    async def good_one(self, client: httpx.AsyncClient, bucket: str) -> None:
        path, body = self.good_request()
        start = time.monotonic()
        try:
            if body.get("stream"):
                async with client.stream("POST", self.root + path, json=body) as r:
                    lines = [line async for line in r.aiter_lines() if line]
                    status, text = r.status_code, "\n".join(lines[-3:])
                    if path == "/v1/responses":  # the last event is response.completed (or .incomplete)
                        names = [line for line in lines if line.startswith("event: ")]
                        ok = bool(names) and names[-1] in ("event: response.completed", "event: response.incomplete")
                    else:
                        ok = bool(lines) and lines[-1] == "data: [DONE]"
                    if status == 200 and not ok:
                        self.record(bucket, "stream ended badly", f"stream ended badly: {text[-300:]}")
                        return
            else:
                r = await client.post(self.root + path, json=body)
                status, text = r.status_code, r.text
        except httpx.TransportError as exc:
            self.record(bucket, "transport error", repr(exc))
            return
        if status == 200:
            self.latency[bucket].append(time.monotonic() - start)
        self.judge(bucket, status, {200, 429}, text)

    async def good(self, client: httpx.AsyncClient) -> None:
        while self.more():
            await self.good_one(client, "good")

    async def bursts(self, client: httpx.AsyncClient) -> None:
        await asyncio.sleep(self.args.burst_every / 2)
        while self.more():
            await asyncio.gather(*(self.good_one(client, "burst") for _ in range(self.args.burst)))
            await asyncio.sleep(self.args.burst_every)

    # ---- bad requests -----------------------------------------------------------------------------

    MALFORMED: list[tuple[str, bytes, str, set[int]]] = [
        ("broken JSON", b'{"model": "' + MODEL.encode() + b'", "messages": [', "application/json", {400}),
        ("deep nesting", b"[" * 200_000, "application/json", {400}),
        ("wrong type", json.dumps({"model": MODEL, "messages": "hi"}).encode(), "application/json", {400}),
        ("string for a number", json.dumps({"model": MODEL, "messages": HI, "max_tokens": "5"}).encode(),
         "application/json", {400}),
        ("not JSON content type", json.dumps({"model": MODEL, "messages": HI}).encode(), "text/plain", {400}),
        ("empty body", b"", "application/json", {400}),
        ("not UTF-8", b'{"model": "\xff\xfe"}', "application/json", {400}),
        ("NaN", b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "hi"}], '
                b'"temperature": NaN}', "application/json", {400}),
        ("unknown model", json.dumps({"model": "gpt-4o", "messages": HI}).encode(), "application/json", {404}),
        ("n past the limit", json.dumps({"model": MODEL, "messages": HI, "n": 1000}).encode(), "application/json",
         {400}),
        ("max_tokens past the context", json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 10**12}).encode(),
         "application/json", {400}),
        ("special tokens only", json.dumps({"model": MODEL, "input": [[0, 2]]}).encode(), "application/json", {400}),
        ("unknown field", json.dumps({"model": MODEL, "messages": HI, "maxTokens": 5}).encode(), "application/json",
         {400}),
    ]

    async def malformed(self, client: httpx.AsyncClient) -> None:
        paths = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
        while self.more():
            name, body, content_type, expected = random.choice(self.MALFORMED)
            path = random.choice(paths) if name not in ("unknown model", "n past the limit", "unknown field") \
                else "/v1/chat/completions"
            if name in ("max_tokens past the context",):
                path = "/v1/completions"
            if name == "special tokens only":
                path = "/v1/embeddings"
            try:
                r = await client.post(self.root + path, content=body, headers={"content-type": content_type})
                self.judge("malformed", r.status_code, expected if r.status_code != 404 else {404} | expected, r.text)
            except httpx.TransportError as exc:
                self.record("malformed", "transport error", f"{name}: {exc!r}")
            await asyncio.sleep(0.05)

    async def oversized(self, client: httpx.AsyncClient) -> None:
        limit = self.args.max_body_bytes
        while self.more():
            size = limit + random.randint(1, limit)
            if random.random() < 0.5:
                kind, content = "oversized (Content-Length)", b'{"x": "' + b"x" * size + b'"}'
            else:
                async def chunks(n: int = size) -> Any:
                    yield b'{"x": "'
                    for _ in range(n // 65536 + 1):
                        yield b"x" * 65536
                    yield b'"}'
                kind, content = "oversized (chunked)", chunks()
            try:
                r = await client.post(self.root + "/v1/chat/completions", content=content,
                                      headers={"content-type": "application/json"})
                self.judge(kind, r.status_code, {413}, r.text)
            except httpx.TransportError:
                # The server answers 413 and closes; a client still sending may see the reset first.
                self.record(kind, "connection closed while sending")
            await asyncio.sleep(1.0)

    async def slow(self, client: httpx.AsyncClient) -> None:
        while self.more():
            if random.random() < 0.5:  # a body trickled in over ~4 seconds
                body = json.dumps({"model": MODEL, "messages": HI, "max_tokens": 8}).encode()

                async def trickle() -> Any:
                    for i in range(0, len(body), 8):
                        yield body[i:i + 8]
                        await asyncio.sleep(4 / (len(body) / 8))
                try:
                    r = await client.post(self.root + "/v1/chat/completions", content=trickle(),
                                          headers={"content-type": "application/json"})
                    self.judge("slow sender", r.status_code, {200, 429}, r.text)
                except httpx.TransportError as exc:
                    self.record("slow sender", "transport error", repr(exc))
            else:  # a stream read a line at a time, slowly
                body = {"model": MODEL, "messages": HI, "max_tokens": 32, "stream": True}
                try:
                    async with client.stream("POST", self.root + "/v1/chat/completions", json=body) as r:
                        lines = []
                        async for line in r.aiter_lines():
                            if line:
                                lines.append(line)
                            await asyncio.sleep(0.2)
                        ok = r.status_code != 200 or (lines and lines[-1] == "data: [DONE]")
                        self.judge("slow reader", r.status_code, {200, 429} if ok else set(), "".join(lines[-3:]))
                except httpx.TransportError as exc:
                    self.record("slow reader", "transport error", repr(exc))
            await asyncio.sleep(1.0)

    async def disconnecting(self, client: httpx.AsyncClient) -> None:
        while self.more():
            body = {"model": MODEL, "messages": HI, "max_tokens": 400, "stream": True, "logit_bias": NO_EOG}
            try:
                async with client.stream("POST", self.root + "/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        self.judge("disconnects mid-stream", r.status_code, {429}, (await r.aread()).decode())
                    else:
                        seen = 0
                        async for line in r.aiter_lines():
                            seen += line.startswith("data: ")
                            if seen >= 4:
                                break  # leaving the block closes the connection
                        self.record("disconnects mid-stream", "left after 4 events")
            except httpx.TransportError as exc:
                self.record("disconnects mid-stream", "transport error", repr(exc))
            await asyncio.sleep(2.0)


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "reference_server", "--host", "127.0.0.1", "--port", "0", "--n-ctx", str(args.n_ctx),
         "--threads", str(args.threads), "--max-queue", str(args.max_queue), "--max-body-bytes", str(args.max_body_bytes),
         "--shutdown-grace", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    out, deadline = "", time.monotonic() + 180
    while "print(reply" not in out and time.monotonic() < deadline and proc.poll() is None:
        out += proc.stdout.readline()
    match = re.search(r'base_url="(http://127\.0\.0\.1:\d+)/v1"', out)
    if not match:
        raise SystemExit(f"the server did not start:\n{out}\n{proc.stderr.read() if proc.poll() is not None else ''}")
    return proc, match.group(1)


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def run(args: argparse.Namespace) -> int:
    proc, root = start_server(args)
    server = psutil.Process(proc.pid).children()[0].pid  # the supervisor's child serves (supervise.py)
    soak = Soak(root, args)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        for _ in range(3):  # warm-up: every path once, so the start RSS is not a cold one
            for path, body in [("/v1/chat/completions", {"model": MODEL, "messages": HI, "max_tokens": 8}),
                               ("/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 8}),
                               ("/v1/embeddings", {"model": MODEL, "input": "hi"}),
                               ("/v1/chat/completions", {"model": MODEL, "max_tokens": 24, "tools": [TOOL],
                                                         "tool_choice": "required", "messages": HI})]:
                await client.post(root + path, json=body)
        rss_start = rss_mib(server)
        samples = [(0.0, rss_start)]
        started, began = datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), time.monotonic()
        soak.deadline = began + args.minutes * 60

        async def sample_rss() -> None:
            while soak.more():
                await asyncio.sleep(30)
                samples.append((time.monotonic() - began, rss_mib(server)))

        meter = LoadMeter([os.getpid(), proc.pid, server])
        with meter.measure() as window:
            await asyncio.gather(soak.good(client), soak.good(client), soak.bursts(client), soak.malformed(client),
                                 soak.oversized(client), soak.slow(client), soak.disconnecting(client), sample_rss())
        elapsed = time.monotonic() - began
        # The load has stopped: the queue must drain to 0.
        depth, drained_after = None, None
        for i in range(120):
            depth = (await client.get(root + "/health")).json()["queue_depth"]
            if depth == 0:
                drained_after = i * 0.5
                break
            await asyncio.sleep(0.5)
        rss_end = rss_mib(server)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    stderr = proc.stderr.read()

    five = sum(n for (_, outcome), n in soak.outcomes.items() if outcome.startswith("5"))
    transport = sum(n for (kind, outcome), n in soak.outcomes.items()
                    if outcome == "transport error")
    good, burst = soak.latency["good"], soak.latency["burst"]
    lines = [f"### Soak: {soak.sent} requests in {elapsed / 60:.1f} minutes", "",
             f"Run {started} with `.venv/bin/python benchmarks/soak.py --minutes {args.minutes:g}`: the real command "
             f"(`python -m reference_server --n-ctx {args.n_ctx} --threads {args.threads} --max-queue "
             f"{args.max_queue} --max-body-bytes {args.max_body_bytes}`) on 127.0.0.1. Other processes took "
             f"{'?' if window.other is None else f'{window.other:.0%}'} of the machine's CPU meanwhile "
             f"(a shared 2-core machine: latencies are the neighbours' as much as ours).", "",
             *machine_lines(machine_info(), Settings().model_path, args.n_ctx, args.threads), "",
             "#### Verdict", "",
             f"- 5xx responses: **{five}**",
             f"- transport errors on well-formed requests: **{transport}**",
             f"- other problems: **{len(soak.problems) - five - transport}**",
             f"- queue after the load stopped: **{depth}** (drained in {drained_after} s)" if drained_after is not None
             else f"- queue after the load stopped: **{depth}** (did not drain in 60 s)",
             f"- server RSS: **{rss_start:.0f} MiB** after warm-up, **{rss_end:.0f} MiB** at the end "
             f"({rss_end - rss_start:+.0f} MiB); samples every 30 s: "
             + ", ".join(f"{m:.0f}" for _, m in samples),
             f"- SIGTERM afterwards: exit status **{code}**" + (" (stderr had a traceback)" if "Traceback" in stderr else ""),
             "",
             "#### Latency of good requests answered 200 (seconds, to the last byte)", "",
             "| requests | n | p50 | p95 | max |", "| --- | ---: | ---: | ---: | ---: |",
             f"| steady (2 clients) | {len(good)} | {percentile(good, 50):.2f} | {percentile(good, 95):.2f} | "
             f"{max(good, default=float('nan')):.2f} |",
             f"| in bursts of {args.burst} | {len(burst)} | {percentile(burst, 50):.2f} | {percentile(burst, 95):.2f} | "
             f"{max(burst, default=float('nan')):.2f} |", "",
             "#### Requests by kind and outcome", "", "| kind | outcome | requests |", "| --- | --- | ---: |"]
    lines += [f"| {kind} | {outcome} | {n} |" for (kind, outcome), n in sorted(soak.outcomes.items())]
    if soak.problems:
        lines += ["", "#### Problems", "", *[f"- `{p[:300]}`" for p in soak.problems[:40]]]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    failed = five or transport or soak.problems or depth != 0 or code != 0
    return 1 if failed else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--max-requests", type=int, default=200_000)
    p.add_argument("--burst", type=int, default=24, help="good requests at once, past the queue")
    p.add_argument("--burst-every", type=float, default=60, help="seconds between bursts")
    p.add_argument("--max-queue", type=int, default=16)
    p.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024)
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="write the report here too")
    return asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
