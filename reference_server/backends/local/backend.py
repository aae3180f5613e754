"""The local backend: a GGUF model in this process, through llama.cpp (llama-cpp-python).

It is the only part of the server that touches llama.cpp (with its runners and helpers in
this folder). It implements the request-level ``Backend`` seam (backends/base.py): it renders
the chat template, checks what only the model can judge (context window, token ids, tools),
and hands token ids and ``SamplingParams`` to a ``Runner`` that generates.

Every llama.cpp call (load, generate, embed) runs on one worker thread. OpenMP keeps a thread
pool per calling thread; two pools on two cores stop spin-waiting, and decoding lost about a
third of its speed after the first embeddings request (benchmarks/).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ... import errors
from ...protocol import CreateChatCompletionRequest, CreateCompletionRequest, CreateEmbeddingRequest
from ...sampling import SamplingParams
from ...settings import Settings
from ..base import ChoiceDone, Embedded, Event, Generation, ModelCard, ModelInfo, Run, TextDelta
from . import native, prompts, tools
from .batching import BatchingRunner
from .serial import SerialRunner, Worker

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")

# A prompt long enough that llama.cpp multiplies whole matrices (the path that crashed on AMX)
SELF_CHECK_PROMPT = ("The server checks itself before it says it is ready. Here is one short sentence "
                     "about the weather, written in plain English:")


class LocalBackend:
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
        self._worker = Worker("llama", settings.max_queue)
        self.runner: SerialRunner | BatchingRunner | None = None
        self.batching = not settings.deterministic  # see batching.py; deterministic: serial.py
        self.memory = ""  # what the slots cost, said at start-up

    # ---- lifecycle ---------------------------------------------------------------------------

    # --8<-- [start:load]
    def load(self) -> None:
        """Blocking; the app calls it on a thread at startup so /health can answer 503 meanwhile."""
        if self.state == "ready":
            return
        try:
            import llama_cpp
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            s = self.settings
            common = dict(model_path=str(s.model_path), n_ctx=s.n_ctx,
                          n_threads=s.n_threads, n_threads_batch=s.n_threads, verbose=s.verbose)
            self.extra_buffers = native.extra_buffers_on(s.extra_buffers)
            with native.model_params(self.extra_buffers) as buffers:  # see native.py: AMX
                # Batching decodes in a context of its own: this one only tokenizes, so it stays small.
                self._llm = llama_cpp.Llama(n_batch=s.n_batch, **{**common, "n_ctx": 64 if self.batching else s.n_ctx})
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
            if self.batching:
                self.runner = BatchingRunner(self._llm.model, parallel=s.parallel, n_ctx_slot=s.n_ctx,
                                             n_batch=s.n_batch, n_threads=s.n_threads, prefix_cache=s.prefix_cache,
                                             kv_unified=s.kv_unified, max_queue=s.max_queue, stats=self.stats)
                self.memory = self.runner.memory_report()
            else:
                self.runner = SerialRunner(self._llm, self._eog, self._worker, self.n_ctx, self.stats)
                self.memory = "serial (--deterministic): one sequence at a time, no cache"
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
        start = time.perf_counter()
        prompt = self.tokenize(SELF_CHECK_PROMPT)
        events: list[Event] = []
        assert self.runner is not None
        self.runner.run(prompt, SamplingParams(max_tokens=4, temperature=0.0, logprobs=1), threading.Event(),
                        events.append)
        logprobs = [e.logprob for d in events if isinstance(d, TextDelta) for e in d.logprobs]
        done = [e for e in events if isinstance(e, ChoiceDone)]
        if not done or not logprobs or not np.isfinite(logprobs).all():
            raise RuntimeError("the self-check generation produced no tokens or non-finite logits: "
                               "the model file or the llama.cpp build is broken")
        report = {"prompt_tokens": len(prompt), "generated_tokens": done[0].completion_tokens,
                  "embedding_dimensions": None}
        if self._embedder is not None:
            vector = np.asarray(self._on_llama_thread(lambda: self._embedder.embed([SELF_CHECK_PROMPT],
                                                                                   normalize=True))()[0])
            if not np.isfinite(vector).all() or abs(float(np.linalg.norm(vector)) - 1) > 1e-3:
                raise RuntimeError("the self-check embedding is not a finite unit vector: "
                                   "the model file or the llama.cpp build is broken")
            report["embedding_dimensions"] = len(vector)
        report["seconds"] = round(time.perf_counter() - start, 3)
        return report
    # --8<-- [end:self_check]

    async def start(self) -> None:
        """Loads the model on the worker thread (see the module docstring); the app calls this at startup."""
        self._worker.reserve()
        await self._worker.submit(self.load)

    async def close(self) -> None:
        self._worker.close()
        if isinstance(self.runner, BatchingRunner):
            self.runner.close()

    def _on_llama_thread(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """``fn``, made to run on the batching runner's thread when there is one (OpenMP: see above).

        The worker thread then only waits for it, which keeps the worker's queue accounting.
        """
        runner = self.runner
        if isinstance(runner, BatchingRunner):
            return lambda: runner.call(fn).result()
        return fn

    def require_ready(self) -> None:
        if self.state != "ready":
            raise errors.model_loading() if self.state == "loading" else errors.APIError(
                503, f"The model failed to load: {self.error}", type="server_error", code="model_load_failed")

    def models(self) -> list[ModelCard]:
        return [ModelCard(self.model_id, self.created)]

    @property
    def n_ctx(self) -> int:
        return self.settings.n_ctx

    @property
    def queue_depth(self) -> int:
        if isinstance(self.runner, BatchingRunner):
            return self._worker.pending + self.runner.queue_depth
        return self._worker.pending

    @property
    def fingerprint(self) -> str:
        """Changes when the backend configuration changes, as OpenAI's does (seed reproducibility)."""
        import llama_cpp

        s = self.settings
        key = f"{llama_cpp.__version__}|{s.model_path.name}|{self.created}|{s.n_ctx}"
        if self.batching:  # batch shapes and cached prefixes change floats: another configuration
            key += f"|batching|{s.parallel}|{s.prefix_cache}" + ("|kv_unified" if s.kv_unified else "")
        return "fp_" + hashlib.sha256(key.encode()).hexdigest()[:10]

    # ---- prompts -----------------------------------------------------------------------------

    # --8<-- [start:render_chat]
    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """Applies the model's own chat template (from the GGUF), as llama.cpp's server does."""
        return self._template.render(messages=messages, add_generation_prompt=True,
                                     bos_token="", eos_token="")
    # --8<-- [end:render_chat]

    def tokenize(self, text: str, *, special: bool = True, add_special: bool = True) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=special)

    def detokenize(self, tokens: list[int]) -> str:
        return self._llm.detokenize(tokens).decode("utf-8", errors="replace")

    def valid_token(self, token: int) -> bool:
        return 0 <= token < self._llm.n_vocab()

    # --8<-- [start:introspection]
    # Read-only views of the model for protocols that show it (backends/base.py, "introspection").
    def token_bytes(self, token: int) -> bytes:
        return self._llm.detokenize([token], special=True)

    def count_chat_tokens(self, body: CreateChatCompletionRequest) -> int:
        self.require_ready()
        return len(prompts.chat_prompt(self, body, tools.plan(self, body).instructions))

    def info(self) -> ModelInfo:
        import ctypes

        import llama_cpp

        self.require_ready()
        path, model = Path(self.settings.model_path), self._llm.model
        desc = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(model, desc, len(desc))
        return ModelInfo(
            id=self.model_id, path=str(path), size=path.stat().st_size if path.exists() else 0,
            description=desc.value.decode("utf-8", errors="replace"), n_ctx=self.n_ctx,
            n_ctx_train=llama_cpp.llama_model_n_ctx_train(model), n_params=llama_cpp.llama_model_n_params(model),
            n_embd=self._llm.n_embd(), n_vocab=self._llm.n_vocab(),
            chat_template=self._llm.metadata.get("tokenizer.chat_template") or CHATML_TEMPLATE,
            bos_token=self.token_bytes(self._llm.token_bos()).decode("utf-8", errors="replace"),
            eos_token=self.token_bytes(self._llm.token_eos()).decode("utf-8", errors="replace"),
            metadata=dict(self._llm.metadata), engine=f"llama-cpp-python {llama_cpp.__version__}")
    # --8<-- [end:introspection]

    # --8<-- [start:grammar]
    @staticmethod
    def grammar_from_json_schema(schema: dict[str, Any]) -> str:
        """GBNF text that only admits JSON valid against ``schema`` (raises ValueError if unsupported)."""
        from llama_cpp.llama_grammar import json_schema_to_gbnf
        return json_schema_to_gbnf(json.dumps(schema))
    # --8<-- [end:grammar]

    # ---- generation --------------------------------------------------------------------------

    @property
    def grammar_prefilter(self) -> bool:
        """See grammar_filter.py; False makes llama-cpp-python check the whole vocabulary (tests compare)."""
        return self.runner.grammar_prefilter if self.runner else True

    @grammar_prefilter.setter
    def grammar_prefilter(self, on: bool) -> None:
        assert self.runner is not None
        self.runner.grammar_prefilter = on

    def generate(self, prompt: list[int], params: SamplingParams) -> Generation:
        """Queues a generation on the runner (429 if the queue is full); iterate it for events."""
        if self.runner is None:
            self.require_ready()  # raises: nothing can run before the model has loaded
        return self.runner.submit(prompt, params)

    # --8<-- [start:chat]
    def chat(self, body: CreateChatCompletionRequest) -> Run:
        self.require_ready()
        prompts.refuse_unservable(body)
        plan = tools.plan(self, body)  # tool calling and JSON modes: instructions, grammar, reading calls
        prompt = prompts.chat_prompt(self, body, plan.instructions)
        params = prompts.sampling_params(
            self, body, len(prompt), limit=plan.token_limit(body, self.n_ctx - len(prompt)),
            limit_param="max_completion_tokens" if body.max_completion_tokens else "max_tokens",
            n=body.n or 1, logprobs=body.top_logprobs or 0 if body.logprobs else None)
        events = plan.generate(self, prompt, params, lambda instructions: prompts.chat_prompt(self, body, instructions))
        if plan.calls:
            events = tools.read_calls(events, plan, params.n)
        return Run(events, len(prompt), params.n, calls_only=plan.calls_only)
    # --8<-- [end:chat]

    def complete(self, body: CreateCompletionRequest) -> list[Run]:
        self.require_ready()
        if body.suffix:
            raise errors.invalid_request("'suffix' (fill-in-the-middle) is not supported by this server.",
                                         param="suffix")
        n = body.n or 1
        if body.best_of is not None and body.best_of not in (0, 1, n):
            raise errors.invalid_request("'best_of' other than 'n' is not supported by this server.",
                                         param="best_of")
        token_prompts = prompts.completion_prompts(self, body.prompt)
        if body.stream and len(token_prompts) > 1:
            raise errors.invalid_request("Streaming supports a single prompt per request.", param="prompt")
        params = [prompts.sampling_params(self, body, len(p), limit=body.max_tokens, limit_param="max_tokens",
                                          n=n, logprobs=body.logprobs) for p in token_prompts]
        # The first prompt is queued now (a full queue is a 429 before anything starts); the
        # others when their turn comes, so a list of prompts holds one place in the queue.
        return [Run(self.generate(prompt, p) if i == 0 else _Deferred(lambda prompt=prompt, p=p: self.generate(prompt, p)),
                    len(prompt), n, echo=self.detokenize(prompt) if body.echo else "")
                for i, (prompt, p) in enumerate(zip(token_prompts, params))]

    # ---- embeddings --------------------------------------------------------------------------

    # --8<-- [start:embed]
    async def embed(self, body: CreateEmbeddingRequest) -> Embedded:
        """One mean-pooled, L2-normalised vector per input, as OpenAI returns them."""
        self.require_ready()
        texts, tokens = prompts.embedding_texts(self, body.input)
        if body.dimensions is not None and body.dimensions != self.embedding_dimensions:
            raise errors.invalid_request(
                f"This model produces {self.embedding_dimensions}-dimensional embeddings; "
                f"'dimensions' must be {self.embedding_dimensions} or omitted.", param="dimensions")
        self._require_embedder()
        self._worker.reserve()
        vectors = await self._worker.submit(
            self._on_llama_thread(lambda: self._embedder.embed(texts, normalize=True, truncate=False)))
        return Embedded(vectors, tokens)
    # --8<-- [end:embed]

    @property
    def embedding_dimensions(self) -> int:
        self._require_embedder()
        return self._embedder.n_embd()

    def _require_embedder(self) -> None:
        if self._embedder is None:
            raise errors.APIError(400, "This server was started without embeddings (--no-embeddings).",
                                  param="model", code="embeddings_disabled")


class _Deferred:
    """Events of a generation that is queued when first read (later prompts of one request)."""

    def __init__(self, start: Callable[[], Generation]) -> None:
        self._start, self._gen = start, None

    def __aiter__(self) -> "_Deferred":
        return self

    async def __anext__(self) -> Event:
        if self._gen is None:
            self._gen = self._start()
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        if self._gen is not None:
            await self._gen.aclose()


def _raise_template_error(message: str) -> None:
    raise ValueError(message)
