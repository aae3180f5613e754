"""``coursekit conform`` on the reference server and on llama-cpp-python's own server, in one go.

    python benchmarks/conform_peers.py            # prints the side-by-side table
    python benchmarks/conform_peers.py --save     # also writes benchmarks/results/conform-*.{md,json}

Both servers start as the benchmark starts them (``contenders.py``): the embedded model, the same
context size and thread count, each with an API key so that the auth rows run too. They load at
the same time; the checker then runs on one, then on the other, never both at once (the
incremental-stream row measures timing). llama-cpp-python's server runs with its defaults
otherwise, as a user would start it: without ``--embedding true``, which would make its
context embedding-only and unable to chat.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import httpx  # noqa: E402

from contenders import Server, peer_available, peer_server, reference_server  # noqa: E402
from machine import LoadMeter  # noqa: E402
from coursekit import conform  # noqa: E402
from reference_server.settings import embedded_model_path  # noqa: E402

RESULTS = HERE / "results"
KEY = "conform-peers-key"
LABELS = {"reference": "reference server", "peer": "llama-cpp-python server"}
FILES = {"reference": "conform-reference.json", "peer": "conform-llama-cpp-python.json"}


def wait_ready(server: Server, timeout: float) -> None:
    """Ready when the model list answers with the key (its /health-less peer has nothing else)."""
    deadline = time.monotonic() + timeout
    while True:
        if server.proc is not None and server.proc.poll() is not None:
            raise RuntimeError(f"{server.label} exited with code {server.proc.returncode}; see {server.log_path}")
        try:
            if httpx.get(f"{server.base_url}/models", headers={"Authorization": f"Bearer {KEY}"},
                         timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.label} not ready after {timeout:.0f} s; see {server.log_path}")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="threads for both servers (default 1)")
    parser.add_argument("--n-ctx", type=int, default=2048, help="context size for both servers (default 2048)")
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/conform-peers.md and each "
                        "server's --json results")
    args = parser.parse_args(argv)
    problem = peer_available()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    model = embedded_model_path()
    logs = Path(tempfile.mkdtemp(prefix="conform-peers-"))
    servers = {
        "reference": reference_server(model=model, n_ctx=args.n_ctx, threads=args.threads, log_dir=logs),
        "peer": peer_server("peer", model=model, n_ctx=args.n_ctx, threads=args.threads, log_dir=logs),
    }
    servers["reference"].argv += ["--api-key", KEY]
    servers["peer"].argv += ["--api_key", KEY]
    reports: dict[str, conform.Report] = {}
    others: dict[str, float | None] = {}
    try:
        for server in servers.values():
            server.start()
        for key, server in servers.items():
            wait_ready(server, 180)
            print(f"{LABELS[key]}: {' '.join(server.argv[1:])}", file=sys.stderr)
            with LoadMeter([os.getpid(), server.proc.pid]).measure() as load:
                reports[LABELS[key]] = conform.run(server.base_url, api_key=KEY)
            others[LABELS[key]] = load.other
            print(reports[LABELS[key]].table(), file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()
    text = render(reports, others, args)
    print(text)
    if args.save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "conform-peers.md").write_text(text + "\n", encoding="utf-8")
        for key, name in FILES.items():
            reports[LABELS[key]].write_json(RESULTS / name)
        print(f"wrote {RESULTS / 'conform-peers.md'}, {', '.join(FILES.values())}", file=sys.stderr)
    return 0


def render(reports: dict[str, conform.Report], others: dict[str, float | None], args: argparse.Namespace) -> str:
    day = dt.date.today().isoformat()
    versions = ", ".join(f"{p} {version(p)}" for p in ("llama-cpp-python", "openai", "fastapi"))
    times = ", ".join(f"{name}: {report.seconds:.0f} s" + (
        f" (other processes took {others[name]:.0%} of the CPU meanwhile)" if others.get(name) is not None else "")
        for name, report in reports.items())
    return "\n".join([
        f"`python benchmarks/conform_peers.py --save` on {day}: SmolLM2-135M-Instruct Q4_1, "
        f"n_ctx {args.n_ctx}, {args.threads} thread{'s' * (args.threads != 1)} each, an API key on both; "
        f"{versions}. Time for the whole battery: {times}.",
        "",
        conform.markdown(reports),
    ])


if __name__ == "__main__":
    sys.exit(main())
