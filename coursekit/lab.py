"""What a lab notebook needs besides its checks: your package, your app, your server, the mode.

    lab.start("04_streaming")   # first cell: %%export cells now write into your package
    http = lab.testclient()     # your app in-process (FastAPI's TestClient), model loaded
    server = lab.serve()        # your package as a real process: python -m myserver
    client = server.client()    # the official openai client, pointed at it

**Remote mode.** With ``COURSE_BASE_URL`` (and ``COURSE_API_KEY``) set, your server's engine
forwards to that upstream OpenAI-compatible server instead of running llama.cpp, through the
same engine interface: every lab works on a laptop that cannot run the model itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from . import export

REMOTE_ENV = "COURSE_BASE_URL"
REMOTE_KEY_ENV = "COURSE_API_KEY"
READY_TIMEOUT = 120.0  # seconds: a model load on a busy laptop


def remote_url() -> str | None:
    """The upstream of remote mode, or None (local mode: llama.cpp on this machine)."""
    return os.environ.get(REMOTE_ENV) or None


def remote_key() -> str | None:
    return os.environ.get(REMOTE_KEY_ENV) or None


REMOTE = remote_url() is not None


def _labs_folder() -> Path:
    from .checkpoint import repository_root

    return repository_root() / "labs"


def exported_labs(root: Path | None = None) -> list[str]:
    """The labs that have parts in the package, in order."""
    found: set[str] = set()
    for path in export.package_dir(root).rglob("*.py"):
        found.update(part.lab for part in export.read_parts(path))
    return sorted(found)


def missing_labs(lab: str, root: Path | None = None) -> list[str]:
    """Earlier labs whose cells export parts that are not in the package yet."""
    have = set(exported_labs(root))
    out = []
    for notebook in export.labs_before(lab, _labs_folder()):
        if export.export_cells(notebook) and notebook.stem not in have:
            out.append(notebook.stem)
    return out


def start(lab: str) -> export.Session:
    """The lab's first cell: exporting goes to your package; says where it is and which mode runs."""
    global REMOTE
    REMOTE = remote_url() is not None
    session = export.start_session(lab)
    shown = _shown(session.package)
    so_far = [name[:2] for name in exported_labs(session.root)]
    print(f"📦 your server package: {shown}/" + (f" (labs {', '.join(so_far)} so far)" if so_far else " (empty so far)"))
    for name in missing_labs(lab, session.root):
        print(f"⚠️  lab {name} is not in your package yet: run labs/{name}.ipynb first "
              f"(or take its solution: python -m coursekit export --solutions {name[:2]})")
    if REMOTE:
        print(f"🌐 remote mode: your server's engine forwards to {remote_url()}")
    return session


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd().parent))
    except ValueError:
        return str(path)


def _fresh(module: str) -> Any:
    """A module of your package (the ``%%export`` cells keep ``sys.modules`` in step with the files)."""
    import importlib

    importlib.invalidate_caches()
    return importlib.import_module(f"{export.PACKAGE}.{module}")


def engine(**settings: Any) -> Any:
    """Your package's engine, loaded: llama.cpp, or the upstream in remote mode (``Settings`` decides)."""
    from .model import quiet_stderr

    config = _fresh("settings").Settings(**settings)
    _preflight(config)
    made = _fresh("remote").RemoteEngine(config) if config.upstream_url else _fresh("engine").Engine(config)
    with quiet_stderr():  # llama.cpp writes its loading notes to C's stderr, which Jupyter shows
        made.load()
    return made


def _preflight(config: Any) -> None:
    """Local mode: the model is loaded in this kernel, so a native crash would kill it without a
    word; the check runs first in a child process (once per llama.cpp build and model file)."""
    if config.upstream_url:
        return
    from .model import embedded_model_path, preflight

    path = config.model_path or embedded_model_path()
    if path is not None and Path(path).exists():
        preflight(path)


# ---- your app, in-process -------------------------------------------------------------------------

_CLIENTS: list[Any] = []


def testclient(engine: Any = None, **settings: Any) -> Any:
    """Your app (``myserver.app.create_app``) in-process, started, with its model loaded.

    The previous one is closed first (one model in memory at a time). The app answers like a
    real server (``raise_server_exceptions=False``): a bug is a 500, not an exception here.
    ``engine`` replaces the app's engine (the checks plug fakes in through the seam).
    """
    from fastapi.testclient import TestClient

    from .model import quiet_stderr

    close_testclients()
    config = _fresh("settings").Settings(**settings)
    if engine is None:
        _preflight(config)
    app = _fresh("app").create_app(config, engine=engine)
    client = TestClient(app, raise_server_exceptions=False)
    with quiet_stderr():  # llama.cpp's loading notes go to C's stderr, which Jupyter shows
        client.__enter__()
        _CLIENTS.append(client)
        wait_ready(lambda: app.state.engine.state)
    return client


def wait_ready(state: Any, timeout: float = READY_TIMEOUT) -> str:
    """Waits while the model loads; returns the engine's last state ('ready' when all is well).

    An engine still 'idle' two seconds after startup was never asked to load (the lifespan's
    job): waiting longer would not help.
    """
    start = time.monotonic()
    while True:
        current = state()
        elapsed = time.monotonic() - start
        if current not in ("idle", "loading") or elapsed > timeout or (current == "idle" and elapsed > 2):
            return current
        time.sleep(0.02)


def close_testclients() -> None:
    from .model import quiet_stderr

    while _CLIENTS:
        client = _CLIENTS.pop()
        with contextlib.suppress(Exception), quiet_stderr():
            client.__exit__(None, None, None)


# ---- your package as a process ------------------------------------------------------------------

class Server:
    """``python -m myserver`` on a free port, started by the notebook, stopped with it."""

    def __init__(self, process: subprocess.Popen, log: Path, base_url: str | None, api_key: str | None) -> None:
        self.process, self.log_path, self.base_url, self.api_key = process, log, base_url, api_key
        self.ready = False
        self._finalizer = weakref.finalize(self, _terminate, process)

    @property
    def root(self) -> str | None:
        return self.base_url[: -len("/v1")] if self.base_url else None

    def client(self, **kwargs: Any) -> Any:
        """The official client, pointed at your server."""
        from openai import OpenAI

        kwargs.setdefault("api_key", self.api_key or "not-needed")
        return OpenAI(base_url=self.base_url or "http://127.0.0.1:9/v1", max_retries=0, timeout=120, **kwargs)

    def log(self, lines: int = 20) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        self._finalizer()
        print("server stopped")


def _terminate(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


_SERVERS: list[Server] = []
_URL_RE = re.compile(r"(http://\S+?/v1)\b")


def serve(*, api_keys: list[str] | None = None, args: list[str] | None = None,
          env: dict[str, str] | None = None) -> Server:
    """Starts your package as a server process and waits until its ``/health`` says ready.

    ``env`` adds environment variables for that process only (``{"MYSERVER_PARALLEL": "4"}``),
    as ``MYSERVER_PARALLEL=4 python -m myserver`` would in a terminal.

    It never raises: if your server does not start, it prints why (the end of its log) and
    returns a handle whose ``ready`` is False, so the check that follows tells you what to fix.
    """
    import httpx

    for old in _SERVERS:
        old._finalizer()
    _SERVERS.clear()
    root = export.package_root()
    log = Path(tempfile.mkstemp(prefix="myserver-", suffix=".log")[1])
    command = [sys.executable, "-m", "coursekit.child", export.PACKAGE, "--port", "0"]
    for key in api_keys or []:
        command += ["--api-key", key]
    command += args or []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p),
               COURSE_PARENT_PID=str(os.getpid()), **(env or {}))
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(root))
    server = Server(process, log, None, (api_keys or [None])[0])
    _SERVERS.append(server)
    deadline = time.monotonic() + READY_TIMEOUT
    status, idle_since = "starting", None
    while time.monotonic() < deadline and process.poll() is None:
        if server.base_url is None:
            found = _URL_RE.search(server.log(200))
            if found:
                server.base_url = found.group(1)
        else:
            try:
                reply = httpx.get(f"{server.root}/health", timeout=5)
                if reply.status_code == 200:
                    server.ready = True
                    break
                code = (reply.json().get("error") or {}).get("code") if reply.headers.get(
                    "content-type", "").startswith("application/json") else None
                status = f"/health answers {reply.status_code}" + (f" ({code})" if code else "")
                idle_since = idle_since or time.monotonic() if code == "model_not_loaded" else None
                if idle_since and time.monotonic() - idle_since > 2:
                    break
            except httpx.TransportError:
                pass
        time.sleep(0.05)
    if server.ready:
        port = server.base_url.rsplit(":", 1)[1].split("/")[0]
        print(f"🚀 your server is up: python -m {export.PACKAGE} at {server.base_url.replace(port, '<port>')}")
    else:
        why = f"it exited with code {process.returncode}" if process.poll() is not None else status
        print(f"❌ your server did not become ready: {why}. The end of its log:\n{server.log(15)}")
    return server


def stop_servers() -> None:
    while _SERVERS:
        _SERVERS.pop()._finalizer()


# ---- upstream servers, for lab 11 ----------------------------------------------------------------

class Upstream:
    """A reference server started as an upstream of your gateway: it has ``/metrics``, and it can
    be killed (``kill()``: SIGKILL, a crash, not a shutdown)."""

    def __init__(self, number: int, process: subprocess.Popen, log: Path, url: str | None = None) -> None:
        self.number, self.process, self.log_path = number, process, log
        self.url = url  # its base URL, ending in /v1 (known before it is ready when its port was chosen)
        self.ready = False
        self._finalizer = weakref.finalize(self, _kill_group, process)

    @property
    def root(self) -> str | None:
        return self.url[: -len("/v1")] if self.url else None

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self, lines: int = 20) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait(self, timeout: float = READY_TIMEOUT) -> "Upstream":
        """Waits for its ``Ready: ... at URL`` line; raises with the end of its log if it never comes."""
        deadline = time.monotonic() + timeout
        while not self.ready:
            found = re.search(r"^Ready: .* at (http://\S+/v1)", self.log(400), re.M)
            if found:
                self.url, self.ready = found.group(1), True
            elif not self.alive or time.monotonic() > deadline:
                raise RuntimeError(f"upstream {self.number} did not start. The end of its log:\n{self.log(15)}")
            else:
                time.sleep(0.05)
        return self

    def kill(self) -> None:
        self._finalizer()

    def __repr__(self) -> str:
        state = "dead" if not self.alive else "ready" if self.ready else "starting"
        return f"<upstream {self.number}: {self.url or 'port not known yet'}, {state}>"


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, 9)  # SIGKILL, to the server and anything it started
    with contextlib.suppress(Exception):
        process.wait(timeout=15)


_UPSTREAMS: list[Upstream] = []


def upstreams(n: int = 2, *, wait: bool = True) -> list[Upstream]:
    """Starts ``n`` reference servers on free ports, together, for your gateway to forward to.

    Local mode: each runs the model on one thread (a replica). Remote mode (no llama.cpp here):
    each is a reference server in gateway mode (``--upstream``) in front of the shared server, so
    each can still be counted and killed on its own. They stop with the notebook's kernel.

    Their ports are chosen here, so their URLs are known at once: a gateway can start while they
    load, as in a deployment where everything starts together.
    """
    stop_upstreams()
    shared = remote_url()
    started = []
    for number in range(1, n + 1):
        log = Path(tempfile.mkstemp(prefix=f"upstream{number}-", suffix=".log")[1])
        port = _free_port()
        command = [sys.executable, "-m", "coursekit.child", "reference_server", "--port", str(port)]
        if shared:
            command += ["--upstream", shared + (f"#{remote_key()}" if remote_key() else "")]
        else:
            command += ["--threads", "1", "--n-ctx", "512", "--no-embeddings"]
        # One process, not the server's crash supervisor and its child: the kernel is the parent.
        env = dict(os.environ, COURSE_PARENT_PID=str(os.getpid()), REFERENCE_SERVER_SUPERVISED=str(os.getpid()))
        with log.open("w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
        started.append(Upstream(number, process, log, f"http://127.0.0.1:{port}/v1"))
    _UPSTREAMS.extend(started)
    # Meanwhile this kernel only waits, and the lab's last cell needs what takes it seconds:
    # the machine's description for the checkpoint (it asks llama.cpp), and the openai client.
    threading.Thread(target=_prepare_checkpoint, daemon=True, name="prepare-checkpoint").start()
    if wait:
        for upstream in started:
            upstream.wait()
    return started


def _free_port() -> int:
    """A port nobody listens on now (the server binds it within a second, before loading its model)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare_checkpoint() -> None:
    with contextlib.suppress(Exception):
        import openai  # noqa: F401

        from .checkpoint import machine_info

        machine_info()  # cached: the checkpoint cell finds it ready


def stop_upstreams() -> None:
    while _UPSTREAMS:
        _UPSTREAMS.pop().kill()


# ---- the reference server, for lab 1 ----------------------------------------------------------------

class ModelNotReady(RuntimeError):
    """The server's /health says the model will not become ready: waiting longer would hang."""


def wait_until_ready(http: Any, timeout: float = 300.0) -> None:
    """Polls ``/health`` until 200; a 503 that is not ``model_loading`` (a model that failed to load
    answers 503 too) stops at once with the server's reason, instead of waiting forever."""
    deadline = time.monotonic() + timeout
    while True:
        reply = http.get("/health")
        if reply.status_code == 200:
            return
        try:
            error = reply.json().get("error") or {}
        except (ValueError, AttributeError):
            error = {}
        if reply.status_code != 503 or error.get("code") != "model_loading":
            raise ModelNotReady(f"/health answered {reply.status_code} ({error.get('code')}): "
                                f"{error.get('message') or reply.text[:200]}")
        if time.monotonic() > deadline:
            raise ModelNotReady(f"the model was still loading after {timeout:.0f} s")
        time.sleep(0.05)


@contextlib.contextmanager
def reference_client(settings: Any) -> Any:
    """The official client on the reference server, in-process with its model loaded (TestClient
    as the client's transport); in remote mode, on the upstream server instead."""
    from openai import OpenAI

    if remote_url():
        yield OpenAI(base_url=remote_url(), api_key=remote_key() or "not-needed", max_retries=0, timeout=120)
        return
    from fastapi.testclient import TestClient

    from reference_server import create_app

    with TestClient(create_app(settings)) as running:  # `with`: startup runs, the model loads
        wait_until_ready(running)
        yield OpenAI(base_url="http://testserver/v1", api_key="not-needed", http_client=running)


def openai_client(http: Any, api_key: str = "not-needed") -> Any:
    """The official client on an in-process app: ``TestClient`` is an ``httpx.Client``, so it can be
    the client's transport (lab 1 does the same)."""
    from openai import OpenAI

    return OpenAI(base_url="http://testserver/v1", api_key=api_key, http_client=http, max_retries=0)
