"""The long fuzz run: tests/test_fuzz.py's checks (tests/fuzzing.py), many more requests, a random seed.

Serves the real model on 127.0.0.1 (in this process, so generations can be capped after
validation, as in the tests: a fuzzer asks for thousands of tokens, and the verdicts do not
depend on how many are generated), lets schemathesis generate valid and invalid requests for
every operation from the server's own /openapi.json, and writes a Markdown report: requests by
operation, mode and status, how many valid requests reached the model, which rules JSON Schema
cannot state refused the others, and every failure (there must be none).

Usage: .venv/bin/python benchmarks/fuzz.py [--positive 300] [--negative 200] [--seed N] [--out FILE]
Exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

from fuzzing import UNDECLARABLE, Tally, fuzz, short_generations  # noqa: E402
from machine import LoadMeter, machine_info, machine_lines  # noqa: E402
from reference_server import Settings, create_app  # noqa: E402
from reference_server.backends.local import LocalBackend  # noqa: E402

# Limits the document declares, small enough that a 2-core machine gets through hundreds of requests.
LIMITS = {"max_n": 4, "max_messages": 8, "max_inputs": 8, "max_tools": 4}


def serve(settings: Settings, backend: LocalBackend) -> tuple[str, uvicorn.Server, threading.Thread]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(settings, backend=backend), log_level="error"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    root = f"http://127.0.0.1:{sock.getsockname()[1]}"
    while True:
        try:
            if httpx.get(root + "/health", timeout=2).status_code == 200:
                return root, server, thread
        except httpx.TransportError:
            time.sleep(0.1)


def report(tally: Tally, args: argparse.Namespace, settings: Settings, other: float | None, started: str) -> str:
    ops = sorted({op for op, _, _ in tally.statuses})
    lines = [f"### Fuzzing the server from its OpenAPI document: {tally.requests} requests", "",
             f"Run {started} with `.venv/bin/python benchmarks/fuzz.py --positive {args.positive} "
             f"--negative {args.negative} --seed {args.seed}` (schemathesis, tests/fuzzing.py's checks), "
             f"{tally.seconds / 60:.1f} minutes; other processes took "
             f"{'?' if other is None else f'{other:.0%}'} of the machine's CPU meanwhile.", "",
             *machine_lines(machine_info(), settings.model_path, settings.n_ctx, settings.n_threads), "",
             f"Server: the real model, limits {', '.join(f'{k}={v}' for k, v in LIMITS.items())} (declared in "
             f"/openapi.json), generations cut at {args.tokens} tokens after validation.", "",
             "#### Verdict", "",
             f"- 5xx responses: **{tally.server_errors}**",
             f"- failures (a response outside the document, a valid request refused by a declared rule, an invalid "
             f"request accepted, a broken stream): **{len(tally.failures)}**",
             f"- valid requests to the three generation endpoints that reached the model: "
             f"**{tally.share_reached():.0%}** ({sum(tally.reached[o] for o in ops if o.startswith('POST'))} of "
             f"{sum(tally.valid[o] for o in ops if o.startswith('POST'))})",
             f"- requests generated as invalid that the document in fact admits (the generator's doing, not "
             f"counted as failures): {tally.valid_negatives}", "",
             "#### Requests by operation, mode and status", "",
             "| operation | mode | status | requests |", "| --- | --- | ---: | ---: |"]
    for (op, mode, status), n in sorted(tally.statuses.items()):
        lines.append(f"| {op} | {mode} | {status} | {n} |")
    lines += ["", "#### Valid requests refused by a rule JSON Schema cannot state", "",
              "The document states these rules in words on the field; the server answers 400 naming it.", "",
              "| rule | requests |", "| --- | ---: |"]
    lines += [f"| {rule} | {tally.rules[rule]} |" for rule in UNDECLARABLE]
    lines += ["", "#### Seconds per operation and mode", "", "| operation and mode | seconds |", "| --- | ---: |"]
    lines += [f"| {k} | {v} |" for k, v in tally.timings.items()]
    if tally.failures:
        lines += ["", "#### Failures", "", *[f"```\n{f}\n```" for f in tally.failures[:50]]]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--positive", type=int, default=300, help="valid requests per operation (at most)")
    p.add_argument("--negative", type=int, default=200, help="invalid requests per operation (at most)")
    p.add_argument("--seed", type=int, default=random.randrange(2**31))
    p.add_argument("--tokens", type=int, default=4, help="generations are cut at this many tokens")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="write the report here too")
    args = p.parse_args()

    settings = Settings(n_ctx=2048, n_threads=args.threads, **LIMITS)
    backend = LocalBackend(settings)
    backend.load()
    root, server, thread = serve(settings, backend)
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    done = [0]

    def progress(_: str) -> None:
        done[0] += 1
        if done[0] % 100 == 0:
            print(f"  {done[0]} requests", file=sys.stderr, flush=True)

    meter = LoadMeter([os.getpid()])
    with meter.measure() as window, short_generations(backend, args.tokens):
        tally = fuzz(root, {GenerationMode.POSITIVE: args.positive, GenerationMode.NEGATIVE: args.negative},
                     seed=args.seed, on_response=progress)
    server.should_exit = True
    thread.join(timeout=30)
    text = report(tally, args, settings, window.other, started)
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 1 if tally.failures or tally.server_errors else 0


if __name__ == "__main__":
    sys.exit(main())
