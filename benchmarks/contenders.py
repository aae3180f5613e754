"""The contenders: llama.cpp in-process, and OpenAI-compatible servers started as subprocesses.

Every contender answers the same four questions the same way — a streamed generation, a
non-streamed one, a batch of embeddings, and a streamed generation from an asyncio client
(for the concurrency runs) — and returns plain numbers, so ``bench.py`` never needs to know
which kind it is talking to.

Generations are forced to their full length: the end-of-generation tokens are banned with
``logit_bias`` (-100, which both servers turn into a ban), and the in-process contender bans
them with the same logits processor the reference engine uses. Every figure is therefore
"time for exactly N tokens", and the returned token count lets the caller check it.
"""

from __future__ import annotations

import asyncio
import codecs
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The same sampler settings for everyone, sent explicitly: the servers' defaults differ
# (llama-cpp-python's server: temperature 0.8, top_p 0.95, repeat_penalty 1.1; ours: OpenAI's).
SAMPLING = {"temperature": 0.8, "top_p": 0.95}
EXTRA_SAMPLING = {"top_k": 40, "min_p": 0.05, "repeat_penalty": 1.0}


@dataclass
class Stream:
    """One streamed generation as the client saw it (seconds from sending the request)."""

    ttft: float | None          # first content token
    last: float | None          # last content token
    total: float                # the stream has ended
    tokens: int                 # completion tokens (usage if the server reports it, else content chunks)
    finish_reason: str | None   # None: the server ended the stream without saying why (it was cut)
    prompt_tokens: int | None = None

    @property
    def decode_tps(self) -> float | None:
        """Tokens/s between the first and the last token: decoding alone, prompt excluded."""
        if self.ttft is None or self.last is None or self.tokens < 2 or self.last <= self.ttft:
            return None
        return (self.tokens - 1) / (self.last - self.ttft)


@dataclass
class Completion:
    total: float
    tokens: int
    prompt_tokens: int | None = None


@dataclass
class Embeddings:
    total: float
    count: int
    pooled: bool  # one vector per input (OpenAI's shape) rather than one per token


@dataclass
class Contender:
    """Something that generates. ``key`` names it in the results; ``label`` is for people."""

    key: str
    label: str
    generates: bool = True
    embeds: bool = True
    notes: list[str] = field(default_factory=list)

    def start(self) -> None: ...
    def wait_ready(self, timeout: float) -> None: ...
    def stop(self) -> None: ...
    def stream(self, messages: list[dict[str, str]], max_tokens: int, ban: dict[str, int], seed: int) -> Stream:
        raise NotImplementedError
    def complete(self, messages: list[dict[str, str]], max_tokens: int, ban: dict[str, int], seed: int) -> Completion:
        raise NotImplementedError
    def embed(self, texts: list[str]) -> Embeddings:
        raise NotImplementedError
    async def astream(self, messages: list[dict[str, str]], max_tokens: int, ban: dict[str, int], seed: int) -> Stream:
        raise NotImplementedError


# ---- in-process ------------------------------------------------------------------------------

class InProcess(Contender):
    """``llama_cpp.Llama`` in this process: the limit any server on the same model can reach.

    It does what the reference engine does per request — render the chat template, tokenize,
    reset the context (no prefix reuse), generate with the same sampler and EOG ban,
    detokenize each token — and nothing else: no HTTP, no JSON, no event loop. All llama.cpp
    calls run on one worker thread, in arrival order, which is what a one-context server does
    at best. (One thread, not one per caller: with OpenMP, every thread that calls into
    llama.cpp gets its own team of worker threads, and more teams than cores make them stop
    spinning between operations — a different, slower regime on an idle machine.)
    """

    def __init__(self, model: Path, n_ctx: int, threads: int, *, embeddings: bool = True) -> None:
        super().__init__("inproc", f"llama.cpp in-process ({_threads(threads)})", embeds=embeddings)
        self.model, self.n_ctx, self.threads = model, n_ctx, threads
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inproc-llama")

    def start(self) -> None:
        self._worker.submit(self._load).result()

    def _load(self) -> None:
        import llama_cpp
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        common = dict(model_path=str(self.model), n_ctx=self.n_ctx, n_threads=self.threads,
                      n_threads_batch=self.threads, verbose=False)
        self.llm = llama_cpp.Llama(n_batch=512, **common)
        self.embedder = llama_cpp.Llama(embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                                        n_batch=self.n_ctx, n_ubatch=self.n_ctx, **common) if self.embeds else None
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.eog = frozenset(t for t in range(self.llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t))
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self.template = env.from_string(self.llm.metadata["tokenizer.chat_template"])

    def wait_ready(self, timeout: float) -> None:
        pass

    def stop(self) -> None:
        def close() -> None:
            for name in ("llm", "embedder"):
                obj = getattr(self, name, None)
                if obj is not None:
                    obj.close()
        self._worker.submit(close).result()
        self._worker.shutdown()

    def _generate(self, messages: list[dict[str, str]], max_tokens: int, ban: dict[str, int], seed: int,
                  t0: float) -> Stream:
        llm = self.llm
        text = self.template.render(messages=messages, add_generation_prompt=True, bos_token="", eos_token="")
        prompt = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        processors = None
        if ban:
            ids = np.fromiter((int(k) for k in ban), dtype=np.intc)
            values = np.full(len(ids), -np.inf, dtype=np.single)

            def bias(_input_ids: Any, scores: np.ndarray) -> np.ndarray:
                scores[ids] += values
                return scores
            processors = [bias]
        llm.reset()
        llm.set_seed(seed & 0xFFFFFFFF)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        first = last = None
        count, finish = 0, "length"
        tokens = llm.generate(prompt, top_k=EXTRA_SAMPLING["top_k"], top_p=SAMPLING["top_p"],
                              min_p=EXTRA_SAMPLING["min_p"], temp=SAMPLING["temperature"],
                              repeat_penalty=EXTRA_SAMPLING["repeat_penalty"], reset=True,
                              logits_processor=processors)
        for token in tokens:
            if token in self.eog:
                finish = "stop"
                break
            decoder.decode(llm.detokenize([token]))
            count += 1
            last = time.perf_counter() - t0
            first = last if first is None else first
            if count >= max_tokens:
                break
        tokens.close()
        return Stream(first, last, time.perf_counter() - t0, count, finish, len(prompt))

    def stream(self, messages, max_tokens, ban, seed):  # type: ignore[override]
        t0 = time.perf_counter()
        return self._worker.submit(self._generate, messages, max_tokens, ban, seed, t0).result()

    def complete(self, messages, max_tokens, ban, seed):  # type: ignore[override]
        s = self.stream(messages, max_tokens, ban, seed)
        return Completion(s.total, s.tokens, s.prompt_tokens)

    def embed(self, texts: list[str]) -> Embeddings:
        t0 = time.perf_counter()
        vectors = self._worker.submit(self.embedder.embed, texts, normalize=True, truncate=False).result()
        return Embeddings(time.perf_counter() - t0, len(vectors), not isinstance(vectors[0][0], list))

    async def astream(self, messages, max_tokens, ban, seed):  # type: ignore[override]
        t0 = time.perf_counter()  # waiting for the worker counts, as queueing does in a server
        return await asyncio.wrap_future(
            self._worker.submit(self._generate, messages, max_tokens, ban, seed, t0))


# ---- servers over HTTP -----------------------------------------------------------------------

def _threads(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server(Contender):
    """An OpenAI-compatible server in a subprocess, driven with the official ``openai`` client."""

    def __init__(self, key: str, label: str, argv: list[str], *, ready_path: str, log_dir: Path,
                 port: int, generates: bool = True, embeds: bool = True, usage_in_stream: bool = True,
                 env: dict[str, str] | None = None) -> None:
        super().__init__(key, label, generates=generates, embeds=embeds)
        self.argv, self.ready_path, self.port = argv, ready_path, port
        self.log_path = log_dir / f"{key}.log"
        self.usage_in_stream = usage_in_stream
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.model_id = ""
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def start(self) -> None:
        self._log = self.log_path.open("wb")
        env = {**os.environ, **(self.env or {})}
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent)

    def wait_ready(self, timeout: float) -> None:
        import httpx
        from openai import AsyncOpenAI, OpenAI

        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}{self.ready_path}"
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with code {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label} not ready after {timeout:.0f} s; see {self.log_path}")
            time.sleep(0.2)
        # No retries: a failure must show up as a failure, not as a slow success.
        self.client = OpenAI(base_url=self.base_url, api_key="not-needed", max_retries=0, timeout=600)
        self.aclient = AsyncOpenAI(base_url=self.base_url, api_key="not-needed", max_retries=0, timeout=600)
        self.model_id = self.client.models.list().data[0].id

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        _reap(self.proc, self._log)

    def _request(self, messages: list[dict[str, str]], max_tokens: int, ban: dict[str, int], seed: int,
                 stream: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(model=self.model_id, messages=messages, max_tokens=max_tokens,
                                      seed=seed, stream=stream, extra_body=EXTRA_SAMPLING, **SAMPLING)
        if ban:
            kwargs["logit_bias"] = ban
        if stream and self.usage_in_stream:
            kwargs["stream_options"] = {"include_usage": True}
        return kwargs

    def stream(self, messages, max_tokens, ban, seed):  # type: ignore[override]
        t0 = time.perf_counter()
        reader = _StreamReader(t0)
        for chunk in self.client.chat.completions.create(**self._request(messages, max_tokens, ban, seed, True)):
            reader.feed(chunk)
        return reader.result()

    async def astream(self, messages, max_tokens, ban, seed):  # type: ignore[override]
        t0 = time.perf_counter()
        reader = _StreamReader(t0)
        async for chunk in await self.aclient.chat.completions.create(
                **self._request(messages, max_tokens, ban, seed, True)):
            reader.feed(chunk)
        return reader.result()

    def complete(self, messages, max_tokens, ban, seed):  # type: ignore[override]
        t0 = time.perf_counter()
        reply = self.client.chat.completions.create(**self._request(messages, max_tokens, ban, seed, False))
        return Completion(time.perf_counter() - t0, reply.usage.completion_tokens, reply.usage.prompt_tokens)

    def reply_text(self, messages: list[dict[str, str]], max_tokens: int, seed: int) -> str:
        """A chat turn's answer, as a client keeps it for the next turn (not timed)."""
        reply = self.client.chat.completions.create(**self._request(messages, max_tokens, {}, seed, False))
        return reply.choices[0].message.content or ""

    def completion_ttft(self, prompt: str, seed: int) -> tuple[float | None, int | None]:
        """Time to the first text of a streamed legacy completion of ``prompt``, and its prompt tokens."""
        t0 = time.perf_counter()
        first, usage = None, None
        kwargs: dict[str, Any] = dict(model=self.model_id, prompt=prompt, max_tokens=4, seed=seed, stream=True,
                                      temperature=0.0)
        if self.usage_in_stream:
            kwargs["stream_options"] = {"include_usage": True}
        for chunk in self.client.completions.create(**kwargs):
            if chunk.choices and chunk.choices[0].text and first is None:
                first = time.perf_counter() - t0
            if getattr(chunk, "usage", None) is not None:
                usage = chunk.usage.prompt_tokens
        return first, usage

    def embed(self, texts: list[str]) -> Embeddings:
        t0 = time.perf_counter()
        reply = self.client.embeddings.create(model=self.model_id, input=texts)
        total = time.perf_counter() - t0
        first = reply.data[0].embedding
        return Embeddings(total, len(reply.data), bool(first) and not isinstance(first[0], list))


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM if the benchmark dies without cleaning up (even on SIGKILL)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class _StreamReader:
    """Times content chunks as they arrive; counts tokens from usage when the server sends it."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.first: float | None = None
        self.last: float | None = None
        self.chunks = 0
        self.usage: Any = None
        self.finish: str | None = None

    def feed(self, chunk: Any) -> None:
        if chunk.usage is not None:
            self.usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta is not None and choice.delta.content:
                now = time.perf_counter() - self.t0
                self.first = now if self.first is None else self.first
                self.last = now
                self.chunks += 1
            if choice.finish_reason:
                self.finish = choice.finish_reason

    def result(self) -> Stream:
        tokens = self.usage.completion_tokens if self.usage is not None else self.chunks
        prompt = self.usage.prompt_tokens if self.usage is not None else None
        return Stream(self.first, self.last, time.perf_counter() - self.t0, tokens, self.finish, prompt)


def reference_server(*, model: Path, n_ctx: int, threads: int, log_dir: Path, key: str = "reference",
                     parallel: int | None = None, deterministic: bool = False) -> Server:
    """Our server; ``parallel`` slots (batching), or ``deterministic``: one sequence at a time, no cache."""
    port = free_port()
    argv = [sys.executable, "-m", "reference_server", "--model", str(model), "--port", str(port),
            "--threads", str(threads), "--n-ctx", str(n_ctx)]
    how = ""
    if parallel is not None:
        argv += ["--parallel", str(parallel)]
        how = f"batching, {parallel} slots, "
    if deterministic:
        argv += ["--deterministic"]
        how = "serial, --deterministic, "
    return Server(key, f"reference server ({how}{_threads(threads)})", argv, ready_path="/health",
                  log_dir=log_dir, port=port)


def llama_server(binary: Path, *, model: Path, n_ctx: int, threads: int, parallel: int, log_dir: Path) -> Server:
    """llama.cpp's own server (benchmarks/llama_server.py builds it): its defaults, our slots and threads."""
    port = free_port()
    argv = [str(binary), "--model", str(model), "--ctx-size", str(n_ctx * parallel), "--parallel", str(parallel),
            "--threads", str(threads), "--threads-batch", str(threads), "--host", "127.0.0.1",
            "--port", str(port), "--no-webui"]
    return Server("llama-server", f"llama.cpp llama-server ({parallel} slots, {_threads(threads)})", argv,
                  ready_path="/health", log_dir=log_dir, port=port, embeds=False)


def peer_server(key: str, *, model: Path, n_ctx: int, log_dir: Path, threads: int | None = None,
                interrupt: bool = True, embedding: bool = False) -> Server:
    """llama-cpp-python's own server; ``threads=None`` keeps its default (half the cores)."""
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--n_ctx", str(n_ctx),
            "--host", "127.0.0.1", "--port", str(port)]
    if threads is not None:
        argv += ["--n_threads", str(threads)]
    if not interrupt:
        argv += ["--interrupt_requests", "false"]
    if embedding:
        argv += ["--embedding", "true"]
    shown = threads if threads is not None else max((os.cpu_count() or 1) // 2, 1)
    label = f"llama-cpp-python server ({_threads(shown)}"
    label += ", default" if threads is None else ""
    label += ", no interrupts" if not interrupt else ""
    label += ", --embedding" if embedding else ""
    label += ")"
    # Its request model has no stream_options: the stream's tokens are counted as content chunks.
    return Server(key, label, argv, ready_path="/v1/models", log_dir=log_dir, port=port,
                  generates=not embedding, embeds=embedding, usage_in_stream=False)


def peer_available() -> str | None:
    """None if llama-cpp-python's server can run here, else why not."""
    try:
        import llama_cpp.server.app  # noqa: F401  (needs the [server] extras)
    except ImportError as exc:
        return f"llama-cpp-python's server cannot start ({exc}); install the bench extra: pip install -e '.[bench]'"
    return None


# ---- the limit and the batching runner without HTTP ----------------------------------------------

class LowLevel:
    """``benchmarks/lowlevel.py --serve`` in a child process: the C-API limit and the runner in-process."""

    key = "lowlevel"

    def __init__(self, model: Path, n_ctx: int, threads: int, parallel: int, log_dir: Path) -> None:
        self.argv = [sys.executable, str(Path(__file__).with_name("lowlevel.py")), "--serve", "--model", str(model),
                     "--n-ctx", str(n_ctx), "--threads", str(threads), "--parallel", str(parallel)]
        self.log_path = log_dir / "lowlevel.log"
        self.proc: subprocess.Popen[str] | None = None
        self.memory = ""

    def start(self) -> None:
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, preexec_fn=_die_with_parent)

    def wait_ready(self) -> None:
        hello = self._read()
        self.memory = hello.get("memory", "")

    def _read(self) -> dict[str, Any]:
        import json

        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmarks/lowlevel.py exited; see {self.log_path}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"lowlevel: {answer['error']}")
        return answer

    def ask(self, **command: Any) -> dict[str, Any]:
        import json

        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def limit(self, sequences: int, tokens: int, tag: str) -> dict[str, Any]:
        return self.ask(op="limit", sequences=sequences, tokens=tokens, tag=tag)

    def runner(self, clients: int, requests: int, tokens: int, tag: str, ban: dict[str, int], seed: int) -> dict[str, Any]:
        return self.ask(op="runner", clients=clients, requests=requests, tokens=tokens, tag=tag, ban=ban, seed=seed)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.ask(op="quit")
        except Exception:
            pass
        _reap(self.proc, self._log)


def _reap(proc: subprocess.Popen, log: Any) -> None:
    """Waits for a process asked to end (15 s), kills it if it does not, and closes its log."""
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()
