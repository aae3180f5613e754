"""The engine: the only module that touches llama.cpp (with grammar_filter.py, its helper).

Everything above this seam speaks in prompts (text or token ids), ``SamplingParams`` and
plain events, so tests, labs and future backends (batching, an upstream provider) can plug in
here without llama.cpp types leaking into the HTTP layer.

A llama.cpp context is not thread-safe, so every generation runs on one dedicated worker
thread, one after another, in arrival order. At most ``max_queue`` requests may wait; the next
one is refused with 429 before any work starts. A client that goes away sets its job's cancel
flag, which the worker checks after every token, so its generation stops at once and the
queue moves on.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import json
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import errors, native
from .grammar_filter import GrammarFilter, penalties_off
from .sampling import SamplingParams, StopMatcher
from .settings import Settings

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")

# A prompt long enough that llama.cpp multiplies whole matrices (the path that crashed on AMX)
SELF_CHECK_PROMPT = ("The server checks itself before it says it is ready. Here is one short sentence "
                     "about the weather, written in plain English:")


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list["TokenLogprob"] = field(default_factory=list)


@dataclass
class TextDelta:
    """New text for choice ``index``; ``logprobs`` covers the tokens sampled since the last delta."""

    index: int
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class ChoiceDone:
    index: int
    finish_reason: str  # "stop" | "length"
    completion_tokens: int


Event = TextDelta | ChoiceDone


# --8<-- [start:generation_handle]
class Generation:
    """A queued generation: an async iterator of events; ``aclose()`` cancels it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._queue: asyncio.Queue[Event | BaseException | None] = asyncio.Queue()
        self.cancel = threading.Event()
        queue = self._queue

        def emit(item: Event | BaseException | None) -> None:
            # Called from the worker thread. Holds the queue, not the handle, so dropping the
            # handle lets it be collected (and cancel) while the job still runs.
            if not loop.is_closed():
                loop.call_soon_threadsafe(queue.put_nowait, item)

        self.emit = emit

    def __aiter__(self) -> "Generation":
        return self

    async def __anext__(self) -> Event:
        try:
            item = await self._queue.get()
        except BaseException:  # cancelled while waiting: the client is gone
            self.cancel.set()
            raise
        if item is None:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item

    async def aclose(self) -> None:
        self.cancel.set()

    def __del__(self) -> None:
        self.cancel.set()
# --8<-- [end:generation_handle]


# --8<-- [start:worker]
class _Worker:
    """One thread, a bounded count of waiting jobs."""

    def __init__(self, name: str, max_queue: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._max_queue = max_queue
        self._jobs = 0
        self._lock = threading.Lock()

    def reserve(self) -> None:
        with self._lock:
            if self._jobs > self._max_queue:  # one running + max_queue waiting
                raise errors.queue_full(self._max_queue)
            self._jobs += 1

    def submit(self, fn: Callable[[], Any]) -> "asyncio.Future[Any]":
        """Runs ``fn`` on the worker thread; the job must have been reserved."""
        def run() -> Any:
            try:
                return fn()
            finally:
                with self._lock:
                    self._jobs -= 1
        return asyncio.wrap_future(self._pool.submit(run))

    @property
    def pending(self) -> int:
        return self._jobs
# --8<-- [end:worker]


class Engine:
    """Loads a GGUF model and serves generations and embeddings from it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model_id = settings.served_model_id
        self.created = int(Path(settings.model_path).stat().st_mtime) if Path(settings.model_path).exists() else 0
        self.state = "loading"  # -> "ready" | "failed"
        self.error: str | None = None
        self._llm: Any = None
        self._embedder: Any = None
        self._template: Any = None
        self._eog: frozenset[int] = frozenset()
        self.extra_buffers: bool | None = None        # see native.py
        self.weight_buffers: dict[str, float] = {}   # buffer type -> MiB, as llama.cpp reported them
        self.self_check: dict[str, Any] | None = None
        self.stats = {"completed": 0, "cancelled": 0, "tokens": 0,  # read by tests and benchmarks
                      "grammar_steps_top": 0, "grammar_steps_full": 0}
        # Grammars check the likeliest tokens first when that cannot change the result
        # (grammar_filter.py); False: llama-cpp-python checks the whole vocabulary every step.
        self.grammar_prefilter = True
        # Every llama.cpp call (load, generate, embed) runs on this one thread. OpenMP keeps a
        # thread pool per calling thread; two pools on two cores stop spin-waiting, and decoding
        # lost about a third of its speed after the first embeddings request (benchmarks/).
        self._gen = _Worker("llama", settings.max_queue)

    # ---- lifecycle ---------------------------------------------------------------------------

    # --8<-- [start:load]
    def load(self) -> None:
        """Blocking; the app calls it on a thread at startup so /health can answer 503 meanwhile."""
        if self.state == "ready":
            return
        try:
            import llama_cpp
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            common = dict(model_path=str(self.settings.model_path), n_ctx=self.settings.n_ctx,
                          n_threads=self.settings.n_threads, n_threads_batch=self.settings.n_threads,
                          verbose=self.settings.verbose)
            self.extra_buffers = native.extra_buffers_on(self.settings.extra_buffers)
            with native.model_params(self.extra_buffers) as buffers:  # see native.py: AMX
                self._llm = llama_cpp.Llama(n_batch=self.settings.n_batch, **common)
                if self.settings.embeddings:
                    self._embedder = llama_cpp.Llama(
                        embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                        n_batch=self.settings.n_ctx, n_ubatch=self.settings.n_ctx, **common)
            self.weight_buffers = dict(buffers)
            vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
            self._eog = frozenset(t for t in range(self._llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t))
            source = self._llm.metadata.get("tokenizer.chat_template") or CHATML_TEMPLATE
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise_template_error
            self._template = env.from_string(source)
            self.self_check = self._self_check()
            self.state = "ready"
        except Exception as exc:  # reported by /health and every endpoint, never a traceback
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            raise
    # --8<-- [end:load]

    # --8<-- [start:self_check]
    def _self_check(self) -> dict[str, Any]:
        """One real generation over a multi-token prompt, and one embedding, before "Ready".

        A build that cannot run on this CPU fails here, at start-up, not at a client's first
        request; and the first request no longer pays for warming up.
        """
        import llama_cpp

        start = time.perf_counter()
        prompt = self.tokenize(SELF_CHECK_PROMPT)
        events: list[Event] = []
        self._run(prompt, SamplingParams(max_tokens=4, temperature=0.0), threading.Event(), events.append)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._llm.ctx, -1),
                                       shape=(self._llm.n_vocab(),))
        done = [e for e in events if isinstance(e, ChoiceDone)]
        if not done or not np.isfinite(logits).all():
            raise RuntimeError("the self-check generation produced no tokens or non-finite logits: "
                               "the model file or the llama.cpp build is broken")
        report = {"prompt_tokens": len(prompt), "generated_tokens": done[0].completion_tokens,
                  "embedding_dimensions": None}
        if self._embedder is not None:
            vector = np.asarray(self._embedder.embed([SELF_CHECK_PROMPT], normalize=True)[0])
            if not np.isfinite(vector).all() or abs(float(np.linalg.norm(vector)) - 1) > 1e-3:
                raise RuntimeError("the self-check embedding is not a finite unit vector: "
                                   "the model file or the llama.cpp build is broken")
            report["embedding_dimensions"] = len(vector)
        report["seconds"] = round(time.perf_counter() - start, 3)
        return report
    # --8<-- [end:self_check]

    async def start(self) -> None:
        """Loads the model on the worker thread (see ``__init__``); the app calls this at startup."""
        self._gen.reserve()
        await self._gen.submit(self.load)

    def require_ready(self) -> None:
        if self.state != "ready":
            raise errors.model_loading() if self.state == "loading" else errors.APIError(
                503, f"The model failed to load: {self.error}", type="server_error", code="model_load_failed")

    @property
    def n_ctx(self) -> int:
        return self.settings.n_ctx

    @property
    def queue_depth(self) -> int:
        return self._gen.pending

    # ---- prompts -----------------------------------------------------------------------------

    # --8<-- [start:render_chat]
    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """Applies the model's own chat template (from the GGUF), as llama.cpp's server does."""
        return self._template.render(messages=messages, add_generation_prompt=True,
                                     bos_token="", eos_token="")
    # --8<-- [end:render_chat]

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=special)

    def detokenize(self, tokens: list[int]) -> str:
        return self._llm.detokenize(tokens).decode("utf-8", errors="replace")

    def valid_token(self, token: int) -> bool:
        return 0 <= token < self._llm.n_vocab()

    # --8<-- [start:grammar]
    @staticmethod
    def grammar_from_json_schema(schema: dict[str, Any]) -> str:
        """GBNF text that only admits JSON valid against ``schema`` (raises ValueError if unsupported)."""
        from llama_cpp.llama_grammar import json_schema_to_gbnf
        return json_schema_to_gbnf(json.dumps(schema))
    # --8<-- [end:grammar]

    # ---- generation --------------------------------------------------------------------------

    # --8<-- [start:generate]
    def generate(self, prompt: list[int], params: SamplingParams) -> "Generation":
        """Queues a generation of ``params.n`` choices now; iterate the handle for its events.

        Queuing happens here, before any response has started, so a full queue is answered
        with 429 rather than an error in the middle of a stream; and a handle that is dropped
        without being read (the client left before the stream began) still cancels its job.
        """
        self.require_ready()
        self._gen.reserve()
        loop = asyncio.get_running_loop()
        handle = Generation(loop)
        cancel, emit = handle.cancel, handle.emit

        def job() -> None:
            try:
                if cancel.is_set():
                    self.stats["cancelled"] += 1
                else:
                    self._run(prompt, params, cancel, emit)
            except BaseException as exc:  # handed to the request that caused it
                emit(exc)
            finally:
                emit(None)

        self._gen.submit(job)
        return handle
    # --8<-- [end:generate]

    def _run(self, prompt: list[int], p: SamplingParams, cancel: threading.Event,
             emit: Callable[[Event], None]) -> None:
        import llama_cpp
        from llama_cpp.llama_grammar import LlamaGrammar

        llm = self._llm
        processors = None
        if p.logit_bias:
            ids = np.fromiter(p.logit_bias.keys(), dtype=np.intc)
            values = np.fromiter(p.logit_bias.values(), dtype=np.single)

            def add_bias(_input_ids: Any, scores: np.ndarray) -> np.ndarray:
                scores[ids] += values
                return scores
            processors = [add_bias]

        # --8<-- [start:token_loop]
        for index in range(p.n):
            # A fresh context for every choice: the result must not depend on what an earlier
            # request left in the KV cache (prefix reuse changes batch shapes, hence floats).
            llm.reset()
            seed = p.seed + index if p.seed is not None else random.randrange(2**31)
            llm.set_seed(seed & 0xFFFFFFFF)
            grammar = gfilter = None
            if p.grammar and self.grammar_prefilter and penalties_off(p):  # same tokens, less work
                gfilter = GrammarFilter(llm._model.vocab, llm.n_vocab(), p.grammar, p)
            elif p.grammar:
                grammar = LlamaGrammar.from_string(p.grammar, verbose=False)
            budget = min(p.max_tokens, self.n_ctx - len(prompt))
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            stops = StopMatcher(p.stop)
            count, finish, pending_lp = 0, "length", []
            tokens = llm.generate(
                prompt, top_k=p.top_k, top_p=p.top_p, min_p=p.min_p, temp=p.temperature,
                repeat_penalty=p.repeat_penalty, frequency_penalty=p.frequency_penalty,
                presence_penalty=p.presence_penalty, reset=True, grammar=grammar,
                logits_processor=[*(processors or []), gfilter] if gfilter else processors)
            for token in tokens if budget > 0 else ():
                if cancel.is_set():
                    self.stats["cancelled"] += 1
                    return
                self.stats["tokens"] += 1
                if token in self._eog:
                    finish = "stop"
                    break
                if gfilter:
                    gfilter.accept(token)
                count += 1
                piece = llm.detokenize([token])
                if p.logprobs is not None:
                    pending_lp.append(self._logprob(llama_cpp, token, piece, p.logprobs))
                text = stops.feed(decoder.decode(piece))
                if text or (pending_lp and stops.stopped):
                    emit(TextDelta(index, text, pending_lp))
                    pending_lp = []
                if stops.stopped:
                    finish = "stop"
                    break
                if count >= budget:
                    break
            tokens.close()
            if gfilter:
                self.stats["grammar_steps_top"] += gfilter.steps["top"]
                self.stats["grammar_steps_full"] += gfilter.steps["full"]
                gfilter.close()
            tail = stops.feed(decoder.decode(b"", final=True)) + stops.flush()
            if tail or pending_lp:
                emit(TextDelta(index, tail, pending_lp))
            emit(ChoiceDone(index, finish, count))
        self.stats["completed"] += 1
        # --8<-- [end:token_loop]

    def _logprob(self, llama_cpp: Any, token: int, piece: bytes, top: int) -> TokenLogprob:
        """Log-probabilities from the logits the token was sampled from (before sampling filters)."""
        llm = self._llm
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        shifted = logits - logits.max()
        logp = shifted - np.log(np.exp(shifted).sum())

        def entry(tok: int, raw: bytes) -> TokenLogprob:
            return TokenLogprob(raw.decode("utf-8", errors="replace"), float(logp[tok]), list(raw))

        best = np.argpartition(-logp, top)[:top] if top else []
        alternatives = [entry(int(t), llm.detokenize([int(t)])) for t in sorted(best, key=lambda t: -logp[t])]
        return TokenLogprob(**{**entry(token, piece).__dict__, "top_logprobs": alternatives})

    # ---- embeddings --------------------------------------------------------------------------

    def reserve_embeddings(self) -> None:
        self.require_ready()
        self._require_embedder()
        self._gen.reserve()

    # --8<-- [start:embed]
    async def embed(self, texts: list[str]) -> list[list[float]]:
        """One mean-pooled, L2-normalised vector per input, as OpenAI returns them."""
        return await self._gen.submit(lambda: self._embedder.embed(texts, normalize=True, truncate=False))
    # --8<-- [end:embed]

    @property
    def embedding_dimensions(self) -> int:
        self._require_embedder()
        return self._embedder.n_embd()

    def _require_embedder(self) -> None:
        if self._embedder is None:
            raise errors.APIError(400, "This server was started without embeddings (--no-embeddings).",
                                  param="model", code="embeddings_disabled")


# --8<-- [start:encode_base64]
def encode_base64(vector: list[float]) -> str:
    """OpenAI's ``encoding_format: base64``: little-endian float32 bytes, base64-encoded."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
# --8<-- [end:encode_base64]


def _raise_template_error(message: str) -> None:
    raise ValueError(message)


def now() -> int:
    return int(time.time())
