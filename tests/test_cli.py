"""The console command: help, clear refusals of bad model paths, and a real start."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time

import httpx
import openai

from conftest import MODEL
from reference_server.cli import listen_socket

CMD = [sys.executable, "-m", "reference_server"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*CMD, *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_setting():
    out = run("--help").stdout
    for flag in ("--model", "--model-id", "--n-ctx", "--threads", "--host", "--port", "--api-key",
                 "--cors-origin", "--max-queue"):
        assert flag in out
    assert "REFERENCE_SERVER_MODEL_PATH" in out


def test_missing_model_is_a_clear_error_not_a_traceback(tmp_path):
    r = run("--model", str(tmp_path / "nope.gguf"))
    assert r.returncode == 2
    assert "model file not found" in r.stderr and "Traceback" not in r.stderr


def test_non_gguf_file_is_refused(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a model")
    r = run("--model", str(fake))
    assert r.returncode == 2 and "not a GGUF model file" in r.stderr and "Traceback" not in r.stderr


def test_invalid_setting_from_environment(tmp_path):
    r = subprocess.run(CMD, capture_output=True, text=True, timeout=60, env={"REFERENCE_SERVER_N_CTX": "ten"})
    assert r.returncode == 2 and "n_ctx" in r.stderr and "Traceback" not in r.stderr


def test_server_starts_prints_banner_and_answers():
    proc = subprocess.Popen([*CMD, "--port", "0", "--n-ctx", "512", "--no-embeddings", "--api-key", "sk-cli"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        out, deadline = "", time.monotonic() + 60
        while "print(reply" not in out and time.monotonic() < deadline:
            out += proc.stdout.readline()
        url = re.search(r"base_url=\"(http://127\.0\.0\.1:\d+/v1)\"", out).group(1)
        assert f'model="{MODEL}"' in out and 'api_key="sk-cli"' in out
        assert httpx.get(url.removesuffix("/v1") + "/health").status_code == 200
        client = openai.OpenAI(base_url=url, api_key="sk-cli", max_retries=0)
        assert client.chat.completions.create(model=MODEL, max_tokens=2,
                                              messages=[{"role": "user", "content": "Hi"}]).choices
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _nodelay_of_accepted(sock: socket.socket) -> int:
    """TCP_NODELAY of a connection accepted on ``sock`` by asyncio, as uvicorn serves ``sockets=``."""
    async def main() -> int:
        accepted: asyncio.Future = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.Transport) -> None:
                accepted.set_result(transport.get_extra_info("socket").getsockopt(
                    socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            value = await asyncio.wait_for(accepted, 10)
            writer.close()
        return value
    return asyncio.run(main())


def test_listening_socket_gets_tcp_nodelay():
    """Without TCP_NODELAY a small non-streamed reply waited ~40 ms for an ACK (benchmarks/)."""
    assert _nodelay_of_accepted(listen_socket("127.0.0.1", 0)) != 0
    # The pitfall the server avoids: a socket made with protocol 0 is not known to be TCP.
    plain = socket.socket()
    plain.bind(("127.0.0.1", 0))
    assert _nodelay_of_accepted(plain) == 0


def test_taken_port_is_a_clear_error():
    with listen_socket("127.0.0.1", 0) as taken:
        taken.listen()
        r = run("--port", str(taken.getsockname()[1]))
    assert r.returncode == 2 and "cannot listen on 127.0.0.1" in r.stderr and "Traceback" not in r.stderr
