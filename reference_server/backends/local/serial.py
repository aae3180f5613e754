"""The serial runner: one worker thread, one sequence at a time, a bounded queue.

A llama.cpp context is not thread-safe, so every generation runs on one dedicated worker
thread, one after another, in arrival order. At most ``max_queue`` requests may wait; the next
one is refused with 429 before any work starts. A client that goes away sets its job's cancel
flag, which the worker checks after every token, so its generation stops at once and the
queue moves on.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ... import errors
from ...sampling import SamplingParams
from ..base import Event, Generation, Timings
from .grammar_filter import GrammarFilter, penalties_off
from .sequence import Sequence


# --8<-- [start:worker]
class Worker:
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

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
# --8<-- [end:worker]


class SerialRunner:
    """Generates on ``llm`` (a ``llama_cpp.Llama``), one sequence after another, on ``worker``."""

    def __init__(self, llm: Any, eog: frozenset[int], worker: Worker, n_ctx: int,
                 stats: dict[str, int]) -> None:
        self._llm, self._eog, self._worker, self._n_ctx = llm, eog, worker, n_ctx
        self.stats = stats
        # Grammars check the likeliest tokens first when that cannot change the result
        # (grammar_filter.py); False: llama-cpp-python checks the whole vocabulary every step.
        self.grammar_prefilter = True

    @property
    def queue_depth(self) -> int:
        return self._worker.pending

    def close(self) -> None:
        self._worker.close()

    # --8<-- [start:submit]
    def submit(self, prompt: list[int], params: SamplingParams) -> Generation:
        """Queues a generation of ``params.n`` choices now; iterate the handle for its events.

        Queuing happens here, before any response has started, so a full queue is answered
        with 429 rather than an error in the middle of a stream; and a handle that is dropped
        without being read (the client left before the stream began) still cancels its job.
        """
        self._worker.reserve()
        handle = Generation(asyncio.get_running_loop())
        cancel, emit = handle.cancel, handle.emit

        def job() -> None:
            try:
                if cancel.is_set():
                    self.stats["cancelled"] += 1
                else:
                    self.run(prompt, params, cancel, emit)
            except BaseException as exc:  # handed to the request that caused it
                emit(exc)
            finally:
                emit(None)

        self._worker.submit(job)
        return handle
    # --8<-- [end:submit]

    def run(self, prompt: list[int], p: SamplingParams, cancel: threading.Event,
            emit: Callable[[Event], None]) -> None:
        """The whole generation, on the calling thread (the worker's, or the self-check's)."""
        from llama_cpp.llama_grammar import LlamaGrammar

        llm = self._llm
        processors = _bias_processor(p.logit_bias)
        started, prompt_ms = time.perf_counter(), 0.0  # prompt_ms: to each choice's first token
        # --8<-- [start:token_loop]
        for index in range(p.n):
            # A fresh context for every choice: the result must not depend on what an earlier
            # request left in the KV cache (prefix reuse changes batch shapes, hence floats).
            llm.reset()
            seed = p.seed + index if p.seed is not None else random.randrange(2**31)
            llm.set_seed(seed & 0xFFFFFFFF)
            grammar = gfilter = None
            if p.grammar and self.grammar_prefilter and penalties_off(p):  # same tokens, less work
                gfilter = GrammarFilter(self._vocab(), llm.n_vocab(), p.grammar, p)
            elif p.grammar:
                grammar = LlamaGrammar.from_string(p.grammar, verbose=False)
            seq = Sequence(index, p, min(p.max_tokens, self._n_ctx - len(prompt)), self._eog,
                           lambda t: llm.detokenize([t]))
            tokens = llm.generate(
                prompt, top_k=p.top_k, top_p=p.top_p, min_p=p.min_p, temp=p.temperature,
                repeat_penalty=p.repeat_penalty, frequency_penalty=p.frequency_penalty,
                presence_penalty=p.presence_penalty, reset=True, grammar=grammar,
                logits_processor=[*(processors or []), gfilter] if gfilter else processors)
            choice_start, first = time.perf_counter(), True
            for token in tokens if not seq.done else ():
                if first:
                    prompt_ms += (time.perf_counter() - choice_start) * 1000
                    first = False
                if cancel.is_set():
                    self.stats["cancelled"] += 1
                    return
                self.stats["tokens"] += 1
                if gfilter and token not in self._eog:
                    gfilter.accept(token)
                for event in seq.push(token, self._logits() if p.logprobs is not None else None):
                    emit(event)
                if seq.done:
                    break
            tokens.close()
            if gfilter:
                self.stats["grammar_steps_top"] += gfilter.steps["top"]
                self.stats["grammar_steps_full"] += gfilter.steps["full"]
                gfilter.close()
            for event in seq.finish():
                emit(event)
        # --8<-- [end:token_loop]
        total_ms = (time.perf_counter() - started) * 1000
        emit(Timings(len(prompt), 0, prompt_ms, total_ms - prompt_ms))
        self.stats["completed"] += 1

    def _vocab(self) -> Any:
        import llama_cpp

        return llama_cpp.llama_model_get_vocab(self._llm.model)

    def _logits(self) -> np.ndarray:
        import llama_cpp

        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._llm.ctx, -1),
                                     shape=(self._llm.n_vocab(),))


def _bias_processor(bias: dict[int, float]) -> list[Callable[[Any, np.ndarray], np.ndarray]] | None:
    if not bias:
        return None
    ids = np.fromiter(bias.keys(), dtype=np.intc)
    values = np.fromiter(bias.values(), dtype=np.single)

    def add_bias(_input_ids: Any, scores: np.ndarray) -> np.ndarray:
        scores[ids] += values
        return scores
    return [add_bias]
