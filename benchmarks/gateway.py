"""What the gateway costs, and what it saves when an upstream dies.

    python benchmarks/gateway.py                    # overhead: an upstream directly vs through a gateway
    python benchmarks/gateway.py --failover         # kill one of two upstreams in the middle of a load
    python benchmarks/gateway.py --repeats 12 --save

Overhead. One reference server (the upstream) and one gateway in front of it
(``reference-server --upstream``), both real processes. Each repeat sends the same kinds of
request to both, in alternating order, so that drift on a shared machine hits both alike:
a streamed reply of exactly N tokens (end-of-generation tokens banned) with a prompt that is
new every time, and a one-token reply that is not streamed. It reports the time to the first
token, the decode rate (tokens after the first, per second), the one-token latency, and the
gateway's own CPU time per token (from /proc): the cost of reading each upstream chunk back into
an event and rendering it again, rather than passing bytes through.

Failover. Two upstreams and a gateway; a few clients stream requests without pause; once a
third of them have been sent, and while a reply is streaming from the second upstream, that
upstream is killed (SIGKILL: a crash, not a shutdown). It reports requests sent, answered,
retried by the gateway, and failed, and checks that every request whose reply had not yet
started was answered.

Results: a Markdown report on the terminal, and with ``--save`` in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.append(str(ROOT))

from machine import LoadMeter, machine_info  # noqa: E402

RESULTS = HERE / "results"
MODEL = "SmolLM2-135M-Instruct"
NO_EOS = {"0": -100, "2": -100, "4": -100}
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# ---- processes -------------------------------------------------------------------------------

@dataclass
class Server:
    """A reference-server process run without its supervisor, so its pid is the server's own."""

    args: list[str]
    proc: subprocess.Popen | None = None
    url: str = ""
    lines: list[str] = field(default_factory=list)

    def start(self) -> "Server":
        env = {**os.environ, "REFERENCE_SERVER_SUPERVISED": str(os.getpid()), "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "reference_server", "--port", "0", *self.args],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                                     start_new_session=True)
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()  # type: ignore[union-attr, arg-type]
        return self

    def wait(self, timeout: float = 300) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"^Ready: .* at (http://\S+/v1)$", "".join(self.lines), re.M)
            if found:
                self.url = found.group(1)
                return self
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {''.join(self.lines)[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError("server did not start")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def metrics(base_url: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(base_url.removesuffix("/v1") + "/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


# ---- one request -----------------------------------------------------------------------------

@dataclass
class Reply:
    ttft: float | None = None
    last: float | None = None
    tokens: int = 0
    upstream: str | None = None
    started_at: float | None = None  # monotonic, when the response began (the first token had come)
    end: str = ""                    # done | error:<code> | status:<n> | unfinished
    times: list[float] = field(default_factory=list)  # perf_counter() of each content chunk

    @property
    def decode_tps(self) -> float | None:
        if self.ttft is None or self.last is None or self.tokens < 2 or self.last <= self.ttft:
            return None
        return (self.tokens - 1) / (self.last - self.ttft)


def messages(tag: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": f"[{tag}] You are a helpful assistant."},
            {"role": "user", "content": "Write a few sentences about a lighthouse keeper."}]


async def stream(client: httpx.AsyncClient, url: str, tag: str, max_tokens: int, reply: Reply | None = None) -> Reply:
    """Fills ``reply`` as the stream arrives (the failover run watches it)."""
    body = {"model": MODEL, "messages": messages(tag), "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}, "logit_bias": NO_EOS, "temperature": 0.8, "seed": 1}
    reply, t0 = reply or Reply(), time.perf_counter()
    async with client.stream("POST", f"{url}/chat/completions", json=body) as r:
        if r.status_code != 200:
            reply.end = f"status:{r.status_code}"
            await r.aread()
            return reply
        reply.upstream, reply.started_at = r.headers.get("x-upstream"), time.monotonic()
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                reply.end = reply.end or "unfinished"
                break
            chunk = json.loads(line[6:])
            now = time.perf_counter() - t0
            if "error" in chunk:
                reply.end = f"error:{chunk['error'].get('code')}"
            elif chunk.get("usage"):
                reply.tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                reply.ttft = reply.ttft if reply.ttft is not None else now
                reply.last = now
                reply.times.append(now + t0)
            elif chunk["choices"] and chunk["choices"][0]["finish_reason"]:
                reply.end = "done"
    return reply


async def one_token(client: httpx.AsyncClient, url: str, tag: str) -> float:
    body = {"model": MODEL, "messages": messages(tag), "max_tokens": 1, "logit_bias": NO_EOS}
    t0 = time.perf_counter()
    r = await client.post(f"{url}/chat/completions", json=body)
    r.raise_for_status()
    return time.perf_counter() - t0


# ---- a relay that sees the upstream's tokens pass -----------------------------------------------

CONTENT = re.compile(rb'"content":"[^"]')  # a content delta (the role chunk's "content":"" is not one)


class Tee:
    """A TCP relay between a gateway and its upstream, in this process, that notes when each of the
    upstream's content chunks passes. The client, in the same process, notes when the gateway's
    copy of that chunk arrives: the difference is what the gateway adds to each token, on the very
    same generation, whatever else the machine is doing."""

    def __init__(self, upstream: str) -> None:
        host_port = upstream.split("//", 1)[1].split("/", 1)[0]
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        self.times: list[float] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, watch: bool) -> None:
            seen = b""
            try:
                while data := await src.read(65536):
                    if watch:
                        now = time.perf_counter()
                        seen = seen[-64:] + data  # a pattern split between two reads is still found
                        self.times += [now] * len(CONTENT.findall(seen, max(0, len(seen) - len(data) - 16)))
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()
        await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))


# ---- overhead --------------------------------------------------------------------------------

# --8<-- [start:rerender]
async def rerender_cost(n: int = 20000) -> float:
    """Microseconds to read one upstream chunk back into an event and render our own: what passing
    the upstream's bytes through unchanged would save (the I/O around it is paid either way)."""
    from reference_server.backends.upstream.stream import ChunkReader, sse_data
    from reference_server.serving.chat import _choice
    from reference_server.serving.common import Responder
    from reference_server.serving.sse import encode

    chunk = {"id": "chatcmpl-0123456789abcdef01234567", "object": "chat.completion.chunk", "created": 1,
             "model": MODEL, "system_fingerprint": "fp_0123456789", "usage": None,
             "choices": [{"index": 0, "delta": {"content": " lighthouse"}, "logprobs": None, "finish_reason": None}]}
    line = "data: " + json.dumps(chunk)

    async def lines():  # type: ignore[no-untyped-def]
        for _ in range(n):
            yield line
            yield ""
    reader, r = ChunkReader(chat=True), Responder.start("chatcmpl", "chat.completion.chunk", MODEL, "fp_x")
    t0 = time.perf_counter()
    async for data in sse_data(lines()):
        for event in reader.read(json.loads(data)):
            encode(r.chunk([_choice(event.index, {"content": event.text})]))
    return (time.perf_counter() - t0) / n * 1e6
# --8<-- [end:rerender]


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


async def overhead(args: argparse.Namespace) -> str:
    common = ["--n-ctx", "1024", "--no-embeddings"]
    upstream = Server([*common, "--threads", str(args.threads)]).start().wait()
    gateway = Server(["--upstream", upstream.url]).start().wait()
    targets = {"direct": upstream.url, "gateway": gateway.url}
    seen: dict[str, dict[str, list[float]]] = {k: {"ttft": [], "tps": [], "one": []} for k in targets}
    quiet: list[float] = []
    gateway_cpu = gateway_tokens = 0.0
    meter = LoadMeter([upstream.pid, gateway.pid, os.getpid()])
    try:
        async with httpx.AsyncClient(timeout=300) as client:
            for name, url in targets.items():  # warm-up, not counted
                await stream(client, url, f"warm-{name}", 8)
                await one_token(client, url, f"warm1-{name}")
            for rep in range(args.repeats):
                order = list(targets) if rep % 2 == 0 else list(reversed(targets))
                for name in order:
                    url = targets[name]
                    cpu0 = cpu_seconds(gateway.pid)
                    with meter.measure() as window:
                        reply = await stream(client, url, f"r{rep}-{name}-{time.time_ns()}", args.tokens)
                        latency = await one_token(client, url, f"o{rep}-{name}-{time.time_ns()}")
                    if window.other is not None:
                        quiet.append(window.other)
                    if reply.end != "done" or reply.tokens != args.tokens:
                        raise RuntimeError(f"{name}: {reply}")
                    seen[name]["ttft"].append(reply.ttft * 1000)  # type: ignore[operator]
                    seen[name]["tps"].append(reply.decode_tps or float("nan"))
                    seen[name]["one"].append(latency * 1000)
                    if name == "gateway":
                        gateway_cpu += cpu_seconds(gateway.pid) - cpu0
                        gateway_tokens += reply.tokens + 1
                print(f"repeat {rep + 1}/{args.repeats}: " + ", ".join(
                    f"{n} ttft {seen[n]['ttft'][-1]:.0f} ms, {seen[n]['tps'][-1]:.1f} tok/s" for n in targets),
                    flush=True)
    finally:
        gateway.kill()
        upstream.kill()

    added = await per_token(args)
    rerender = median([await rerender_cost() for _ in range(3)])
    d, g = seen["direct"], seen["gateway"]
    rows = [("time to first token (ms)", median(d["ttft"]), median(g["ttft"])),
            ("decode (tokens/s)", median(d["tps"]), median(g["tps"])),
            ("1-token reply, not streamed (ms)", median(d["one"]), median(g["one"]))]
    paired_ttft = median([b - a for a, b in zip(d["ttft"], g["ttft"])])
    paired_tps = median([b / a for a, b in zip(d["tps"], g["tps"])])
    paired_one = median([b - a for a, b in zip(d["one"], g["one"])])
    lines = [
        f"### The gateway's overhead ({dt.date.today().isoformat()})", "",
        *_machine(args), "",
        f"One upstream (`reference-server --n-ctx 1024 --threads {args.threads}`) and a gateway in front of it "
        f"(`reference-server --upstream URL`), {args.repeats} repeats in alternating order; each repeat streams "
        f"exactly {args.tokens} tokens (a new prompt every time) and asks for one token without streaming. "
        "Medians; the differences are the medians of the per-repeat differences.", "",
        "| | upstream directly | through the gateway | difference |", "| --- | ---: | ---: | ---: |",
        f"| {rows[0][0]} | {rows[0][1]:.1f} | {rows[0][2]:.1f} | {paired_ttft:+.1f} ms |",
        f"| {rows[1][0]} | {rows[1][1]:.1f} | {rows[1][2]:.1f} | ×{paired_tps:.3f} |",
        f"| {rows[2][0]} | {rows[2][1]:.1f} | {rows[2][2]:.1f} | {paired_one:+.1f} ms |",
        "",
        f"The gateway process used {gateway_cpu * 1000:.0f} ms of CPU for the {args.repeats * 2} requests "
        f"({gateway_tokens:.0f} tokens): {gateway_cpu / max(gateway_tokens, 1) * 1e6:.0f} µs per token, "
        "each request's own work (HTTP, validation, the upstream's connection) included, against a decode step of "
        f"{1e6 / median(g['tps']):.0f} µs. Of that, reading the chunk back into an event and rendering it "
        f"again takes {rerender:.0f} µs per token (measured alone, in-process): passing the upstream's bytes "
        "through would save no more than that; the rest (HTTP in, HTTP out, the event loop) is paid either way.",
        f"Other processes used a median {median(quiet) * 100:.0f}% of the machine's CPU during the measurements."
        if quiet else "",
        "",
        "On a busy machine the two columns above differ by noise more than by the gateway. Measured on the "
        "same generations instead (a relay in the benchmark's process notes when each of the upstream's "
        "tokens passes on its way to the gateway, and the client notes when the gateway's copy arrives), "
        f"over {added['n']} streams of {args.tokens} tokens:", "",
        "| what the gateway adds | median | 90th percentile |", "| --- | ---: | ---: |",
        f"| to the first token (ms) | {added['first'][0]:.2f} | {added['first'][1]:.2f} |",
        f"| to every later token (ms) | {added['later'][0]:.2f} | {added['later'][1]:.2f} |",
    ]
    return "\n".join(lines) + "\n"


def quantiles(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return (statistics.median(xs), xs[min(len(xs) - 1, int(0.9 * len(xs)))]) if xs else (float("nan"),) * 2


async def per_token(args: argparse.Namespace) -> dict[str, object]:
    """What the gateway adds to each token, paired on the same generation (see ``Tee``)."""
    upstream = Server(["--n-ctx", "1024", "--no-embeddings", "--threads", str(args.threads)]).start()
    await asyncio.to_thread(upstream.wait)
    tee = Tee(upstream.url)
    port = await tee.start()
    gateway = Server(["--upstream", f"http://127.0.0.1:{port}", "--upstream-health-interval", "1"]).start()
    first: list[float] = []
    later: list[float] = []
    try:
        await asyncio.to_thread(gateway.wait)
        async with httpx.AsyncClient(timeout=300) as client:
            while (await client.get(gateway.url.removesuffix("/v1") + "/health")).status_code != 200:
                await asyncio.sleep(0.2)
            await stream(client, gateway.url, "warm-tee", 8)
            for rep in range(args.repeats):
                tee.times = []
                reply = await stream(client, gateway.url, f"t{rep}-{time.time_ns()}", args.tokens)
                if len(tee.times) != len(reply.times):
                    raise RuntimeError(f"the relay saw {len(tee.times)} tokens, the client {len(reply.times)}")
                gaps = [(c - u) * 1000 for c, u in zip(reply.times, tee.times)]
                first.append(gaps[0])
                later += gaps[1:]
    finally:
        gateway.kill()
        upstream.kill()
        tee.server.close()
    return {"n": len(first), "first": quantiles(first), "later": quantiles(later)}


# ---- failover --------------------------------------------------------------------------------

async def failover(args: argparse.Namespace) -> str:
    common = ["--n-ctx", "1024", "--no-embeddings", "--threads", "1"]
    ups = [Server(common).start(), Server(common).start()]
    for u in ups:
        u.wait()
    gateway = Server(["--upstream", ups[0].url, "--upstream", ups[1].url,
                      "--upstream-health-interval", "1", "--upstream-cooldown", "5"]).start().wait()
    replies: list[Reply] = []
    killed: list[float] = []
    sent = 0

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < args.requests:
            sent += 1
            reply = Reply()
            replies.append(reply)
            try:
                await stream(client, gateway.url, f"f{sent}-{time.time_ns()}", args.tokens, reply)
            except httpx.HTTPError as exc:
                reply.end = f"transport:{type(exc).__name__}"

    async def killer() -> None:
        while sent < args.requests // 3 or not any(
                r.upstream == "2" and r.ttft is not None and not r.end for r in replies):
            await asyncio.sleep(0.005)
        ups[1].kill()
        killed.append(time.monotonic())
        print(f"killed upstream 2 after {sent} requests had been sent", flush=True)

    try:
        async with httpx.AsyncClient(timeout=300) as client:
            t0 = time.monotonic()
            await asyncio.gather(killer(), *(client_loop(client) for _ in range(args.clients)))
            elapsed = time.monotonic() - t0
        m = metrics(gateway.url)
    finally:
        gateway.kill()
        for u in ups:
            u.kill()

    kill = killed[0]
    started = [r for r in replies if r.started_at is not None and r.started_at < kill]
    not_started = [r for r in replies if r not in started]
    answered = [r for r in replies if r.end == "done"]
    mid = [r for r in replies if r.end.startswith("error:")]
    other = [r for r in replies if r.end != "done" and not r.end.startswith("error:")]
    lost = [r for r in not_started if r.end != "done"]
    outcomes = {k.split("{", 1)[1].rstrip("}"): int(v) for k, v in m.items()
                if k.startswith("reference_server_upstream_requests_total")}
    lines = [
        f"### Killing an upstream mid-load ({dt.date.today().isoformat()})", "",
        *_machine(args), "",
        f"Two upstreams (`reference-server --n-ctx 1024 --threads 1`) behind a gateway "
        f"(`--upstream-health-interval 1 --upstream-cooldown 5`); {args.clients} clients stream "
        f"{args.requests} requests of exactly {args.tokens} tokens without pause. After a third of them had been "
        "sent, while a reply was streaming from upstream 2, upstream 2 was killed with SIGKILL.", "",
        "| requests | count |", "| --- | ---: |",
        f"| sent | {len(replies)} |",
        f"| answered in full | {len(answered)} |",
        f"| retried on the other upstream before their first token (gateway) | "
        f"{int(m.get('reference_server_upstream_retries_total', 0))} |",
        f"| failed: cut mid-stream, ended with an error event | {len(mid)} |",
        f"| failed otherwise (HTTP error, transport error, unfinished) | {len(other)} |",
        f"| not yet started at the kill, and not answered (must be 0) | {len(lost)} |",
        "",
        f"At the kill, {len(started)} replies had started ({sum(r.upstream == '2' for r in started)} of them from "
        f"upstream 2, {len(mid)} of them cut mid-stream) and "
        f"{len(not_started)} had not; {sum(r.upstream == '1' for r in not_started)} of those were answered by "
        f"upstream 1. The run took {elapsed:.1f} s.", "",
        "Gateway outcomes by upstream (`reference_server_upstream_requests_total`):", "",
        "| labels | count |", "| --- | ---: |",
        *(f"| `{k}` | {v} |" for k, v in sorted(outcomes.items())),
    ]
    if lost:
        print("FAILED: requests that had not started were lost", file=sys.stderr)
    return "\n".join(lines) + "\n"


def _machine(args: argparse.Namespace) -> list[str]:
    info = machine_info()
    return [f"- CPU: {info.get('cpu_model')}, {info.get('cores')} cores; Python {info.get('python')}",
            f"- load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--failover", action="store_true", help="the failover run instead of the overhead run")
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--tokens", type=int, default=None, help="tokens per streamed reply (64; failover 32)")
    p.add_argument("--threads", type=int, default=1, help="upstream threads in the overhead run")
    p.add_argument("--requests", type=int, default=36, help="failover: requests in all")
    p.add_argument("--clients", type=int, default=6, help="failover: concurrent clients")
    p.add_argument("--save", action="store_true", help="write the report to benchmarks/results/")
    args = p.parse_args()
    args.tokens = args.tokens or (32 if args.failover else 64)
    report = asyncio.run(failover(args) if args.failover else overhead(args))
    print(report)
    if args.save:
        name = f"{dt.date.today().isoformat()}-gateway-{'failover' if args.failover else 'overhead'}.md"
        (RESULTS / name).write_text(report, encoding="utf-8")
        print(f"saved {RESULTS / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
