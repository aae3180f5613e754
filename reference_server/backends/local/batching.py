"""Continuous batching: one llama.cpp context serves many sequences, one ``llama_decode`` per step.

Decoding one token of a small model is bound by memory: every step reads all the weights
once, and the cores spend most of the step waiting for them. A batch of 8 tokens from 8
different sequences reads the same weights once, so it costs little more than one. This runner
keeps a fixed set of **slots** (one llama.cpp sequence id each) in one context, each with its own
stream of KV cells, and runs a **step loop** on one thread: every step puts the next token of
every generating sequence into one ``llama_batch``, fills the rest of the batch with chunks of
prompts still being read (chunked prefill: a long prompt never stalls the others for more than
one chunk), calls ``llama_decode`` once, and samples every sequence with its own llama.cpp
sampler chain.

A slot keeps the tokens whose KV cells it holds after its request ends. A new request starts
from the longest prefix any slot holds (the **prefix cache**: a multi-turn chat, a shared system
prompt, the tools block) and evaluates only the rest. ``n > 1`` choices evaluate the prompt
once and copy its cells (``llama_memory_seq_cp``).

Why a stream per slot and not one shared ("unified") pool of cells: in a unified pool every
sequence's attention walks every cell in use, masked or not, so once the slots hold cached
prefixes a single sequence decodes about a quarter slower (benchmarks/kv_layout.py measures
both; llama-server makes the same choice by default). The price: a prefix held by *another* slot
is copied as that slot's whole stream (a memory copy of tens of MiB), so it is only worth it for
a long prefix (``MIN_COPY``).

Batching changes the shape of every matrix product, so floats can differ in the last bits from
one batch composition to the next, and a near-tie between two tokens can flip. On this build,
with a stream per slot, it measured no difference at all (benchmarks/determinism.py; with one
pool, most answers differed); another quantization, build or GPU can bring differences back.
Settings with ``deterministic`` serve one sequence at a time with no cache.
"""

from __future__ import annotations

import asyncio
import ctypes
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ... import errors
from ...sampling import SamplingParams
from ..base import ChoiceDone, Event, Generation, Timings
from .sequence import Sequence

PENALTY_LAST_N = 64  # llama-cpp-python's default window (Llama(last_n_tokens_size=64))
# Per-slot streams: another slot's prefix is copied (a whole stream: ~8 ms for 4,096 cells on
# 2 cores) only when it saves at least this many tokens of prompt evaluation (~3 ms each).
MIN_COPY = 16


# ---- llama.cpp plumbing ---------------------------------------------------------------------

class _Batch:
    """A ``llama_batch`` whose arrays are numpy arrays, so a prompt chunk is written in one go."""

    def __init__(self, llama_cpp: Any, capacity: int) -> None:
        self.capacity = capacity
        self.token = np.zeros(capacity, np.int32)
        self.pos = np.zeros(capacity, np.int32)
        self.seq = np.zeros(capacity, np.int32)
        self.logits = np.zeros(capacity, np.int8)
        self.n_seq_id = np.ones(capacity, np.int32)
        p_int = ctypes.POINTER(ctypes.c_int32)
        base = self.seq.ctypes.data
        self._seq_ptrs = (p_int * capacity)(*(ctypes.cast(base + 4 * i, p_int) for i in range(capacity)))
        self.struct = llama_cpp.llama_batch(
            n_tokens=0, token=self.token.ctypes.data_as(p_int), embd=None,
            pos=self.pos.ctypes.data_as(p_int), n_seq_id=self.n_seq_id.ctypes.data_as(p_int),
            seq_id=ctypes.cast(self._seq_ptrs, ctypes.POINTER(p_int)),
            logits=self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)))
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add_one(self, token: int, pos: int, seq: int) -> int:
        """A generating sequence's next token, whose logits are wanted; returns its index."""
        i = self.n
        self.token[i], self.pos[i], self.seq[i], self.logits[i] = token, pos, seq, 1
        self.n = i + 1
        return i

    def add(self, tokens: list[int], pos0: int, seq: int, logits_last: bool) -> int:
        """Appends ``tokens`` at positions ``pos0...``; returns the index of the last one."""
        a, b = self.n, self.n + len(tokens)
        self.token[a:b] = tokens
        self.pos[a:b] = np.arange(pos0, pos0 + len(tokens), dtype=np.int32)
        self.seq[a:b] = seq
        self.logits[a:b] = 0
        self.logits[b - 1] = 1 if logits_last else 0
        self.n = b
        return b - 1


class _Candidates:
    """A reusable ``llama_token_data_array`` over the whole vocabulary, filled from a logits row."""

    def __init__(self, llama_cpp: Any, n_vocab: int) -> None:
        self._l = llama_cpp
        self.n_vocab = n_vocab
        self.buffer = (llama_cpp.llama_token_data * n_vocab)()
        self.view = np.ctypeslib.as_array(self.buffer)
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._one = llama_cpp.llama_token_data(0, 0.0, 0.0)
        self._one_array = llama_cpp.llama_token_data_array(
            data=ctypes.pointer(self._one), size=1, selected=-1, sorted=False)

    def fill(self, logits: np.ndarray) -> Any:
        self.view["id"] = self._ids
        self.view["logit"] = logits
        self.view["p"] = 0.0
        return self._l.llama_token_data_array(
            data=ctypes.cast(self.buffer, self._l.llama_token_data_p), size=self.n_vocab, selected=-1, sorted=False)

    def allows(self, grammar: Any, token: int) -> bool:
        """Whether ``grammar`` accepts ``token`` next: one token checked, not the vocabulary."""
        self._one.id, self._one.logit, self._one.p = token, 1.0, 0.0
        self._one_array.size, self._one_array.selected, self._one_array.sorted = 1, -1, False
        self._l.llama_sampler_apply(grammar, ctypes.byref(self._one_array))
        return self._one.logit != -math.inf


# --8<-- [start:sampler_chain]
def sampler_chain(llama_cpp: Any, p: SamplingParams, seed: int, n_vocab: int) -> Any:
    """One choice's llama.cpp sampler chain, in llama-cpp-python's order (so seeds mean the same)."""
    params = llama_cpp.llama_sampler_chain_default_params()
    params.no_perf = True
    chain = llama_cpp.llama_sampler_chain_init(params)
    add = lambda s: llama_cpp.llama_sampler_chain_add(chain, s)  # noqa: E731
    if p.logit_bias:
        bias = (llama_cpp.llama_logit_bias * len(p.logit_bias))(
            *(llama_cpp.llama_logit_bias(t, b) for t, b in p.logit_bias.items()))
        add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(p.logit_bias), bias))
    if p.repeat_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
        add(llama_cpp.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, p.repeat_penalty, p.frequency_penalty,
                                                   p.presence_penalty))
    if p.temperature == 0:
        add(llama_cpp.llama_sampler_init_greedy())
    else:
        add(llama_cpp.llama_sampler_init_top_k(p.top_k))
        add(llama_cpp.llama_sampler_init_top_p(p.top_p, 1))
        add(llama_cpp.llama_sampler_init_min_p(p.min_p, 1))
        add(llama_cpp.llama_sampler_init_temp(p.temperature))
        add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
    return chain
# --8<-- [end:sampler_chain]


# ---- requests and slots ----------------------------------------------------------------------

@dataclass(eq=False)
class _Request:
    prompt: list[int]
    params: SamplingParams
    emit: Callable[[Event | BaseException | None], None]
    cancel: threading.Event
    units: int                                      # slots reserved for it
    pending: deque[int] = field(default_factory=deque)  # choice indices not started yet
    running: int = 0
    cached_tokens: int = 0
    first_logits: np.ndarray | None = None          # after the prompt; kept when choices start later
    t_start: float = 0.0
    t_first: float | None = None
    failed: bool = False


@dataclass(eq=False)
class _Slot:
    seq: int
    tokens: list[int] = field(default_factory=list)  # what this sequence's KV cells hold, from position 0
    last_used: float = 0.0
    request: _Request | None = None
    choice: Sequence | None = None
    chain: Any = None
    grammar: Any = None
    todo: list[int] = field(default_factory=list)     # prompt tokens still to evaluate
    next_token: int | None = None                     # sampled, evaluated at the next step
    followers: list["_Slot"] = field(default_factory=list)  # choices waiting for this slot's prompt
    waiting: bool = False                             # a follower: its leader is reading the prompt
    in_batch: int = -1                                # batch index whose logits this slot samples
    chunk: int = 0                                    # prompt tokens it put in the current batch


# ---- the runner ------------------------------------------------------------------------------

class BatchingRunner:
    """Serves ``submit(prompt, params)`` from slots in one llama.cpp context; see the module doc.

    Thread model: every llama.cpp call happens on the runner's own thread (OpenMP keeps one
    thread team per calling thread; two teams on two cores stop spinning and decoding slows by a
    third), including any work handed over with ``call``. ``submit`` runs on the caller's thread
    and only touches the queue.
    """

    def __init__(self, model: Any, *, parallel: int = 4, n_ctx_slot: int = 4096, n_batch: int = 512,
                 n_threads: int = 1, prefix_cache: bool = True, max_queue: int = 16,
                 flash_attn: bool = True, kv_unified: bool = False,
                 stats: dict[str, int] | None = None) -> None:
        import llama_cpp

        self._l = llama_cpp
        self.model = model
        self.parallel, self.n_ctx_slot, self.n_batch = parallel, n_ctx_slot, max(n_batch, parallel)
        self.prefix_cache, self.max_queue = prefix_cache, max_queue
        self.n_threads, self.flash_attn, self.kv_unified = n_threads, flash_attn, kv_unified
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.eog = frozenset(t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self.vocab, t))
        self._pieces: dict[int, bytes] = {}
        self.stats = stats if stats is not None else {}  # read by tests and benchmarks
        for key in ("completed", "cancelled", "tokens", "prompt_evaluated", "prompt_cached", "steps",
                    "grammar_resampled"):
            self.stats.setdefault(key, 0)
        # False: a grammar masks the whole vocabulary before every token (tests compare the two);
        # True: the sampled token is checked first, and the mask applied only if it is rejected.
        self.grammar_prefilter = True
        self._lock = threading.Condition()
        self._waiting: deque[_Request] = deque()   # queued: no slots reserved yet
        self._ready: deque[_Request] = deque()     # slots reserved, not started yet
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()
        # Events wait here until the step's sampling is done (_flush): handing each one over at once
        # wakes the event loop, which then takes the GIL from the sampling of the next sequences.
        self._outbox: list[tuple[Callable[[Any], None], Any]] = []
        self._free_units = parallel
        self._running = 0
        self._closing = False
        self.ctx: Any = None
        started = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._main, args=(started, failure), name="llama-batch",
                                        daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise failure[0]

    # ---- the caller's side --------------------------------------------------------------------

    # --8<-- [start:submit]
    def submit(self, prompt: list[int], params: SamplingParams) -> Generation:
        """Queues a generation of ``params.n`` choices; raises 429 at once if the queue is full."""
        handle = Generation(asyncio.get_running_loop())
        self._enqueue(prompt, params, handle.emit, handle.cancel)
        return handle

    def _enqueue(self, prompt: list[int], params: SamplingParams, emit: Callable[[Any], None],
                 cancel: threading.Event) -> None:
        if not prompt:
            raise errors.invalid_request("The prompt is empty.")
        if len(prompt) >= self.n_ctx_slot:
            raise errors.context_length_exceeded(len(prompt), params.max_tokens, self.n_ctx_slot, "messages")
        request = _Request(prompt, params, lambda item: self._outbox.append((emit, item)), cancel,
                           units=min(params.n, self.parallel), pending=deque(range(params.n)))
        with self._lock:
            if not self._waiting and self._free_units >= request.units:
                self._free_units -= request.units  # it starts at the next step
                self._ready.append(request)
            elif len(self._waiting) < self.max_queue:
                self._waiting.append(request)
            else:
                raise errors.queue_full(self.max_queue)
            self._lock.notify()
    # --8<-- [end:submit]

    def run(self, prompt: list[int], params: SamplingParams, cancel: threading.Event,
            emit: Callable[[Event], None]) -> None:
        """The whole generation, waited for on the calling thread (the start-up self-check)."""
        done = threading.Event()
        failure: list[BaseException] = []

        def collect(item: Event | BaseException | None) -> None:
            if item is None:
                done.set()
            elif isinstance(item, BaseException):
                failure.append(item)
            else:
                emit(item)

        self._enqueue(prompt, params, collect, cancel)
        done.wait()
        if failure:
            raise failure[0]

    @property
    def queue_depth(self) -> int:
        """Requests running or waiting."""
        with self._lock:
            return self._running + len(self._ready) + len(self._waiting)

    def call(self, fn: Callable[[], Any]) -> "Future[Any]":
        """Runs ``fn`` on the runner's thread between two steps (model loading, embeddings)."""
        future: Future[Any] = Future()
        with self._lock:
            self._calls.append((fn, future))
            self._lock.notify()
        return future

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify()
        self._thread.join()

    def memory_report(self) -> str:
        per_token = self.kv_bytes_per_token()
        mib = per_token * self.n_ctx_slot / 2**20
        return (f"{self.parallel} slot{'s' if self.parallel != 1 else ''} x {self.n_ctx_slot} tokens, "
                f"KV cache {mib:.0f} MiB per slot ({mib * self.parallel:.0f} MiB in all), prefix cache "
                f"{'on' if self.prefix_cache else 'off'}")

    def kv_bytes_per_token(self) -> int:
        """K and V (f16) for every layer: what one token of context costs in the cache."""
        l = self._l
        n_head = l.llama_model_n_head(self.model)
        head_dim = l.llama_model_n_embd(self.model) // n_head
        return l.llama_model_n_layer(self.model) * 2 * l.llama_model_n_head_kv(self.model) * head_dim * 2

    # ---- vocabulary helpers (runner thread) ---------------------------------------------------

    def piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = self._l.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._l.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            piece = self._pieces[token] = buf.raw[:n]
        return piece

    # ---- the runner's thread ------------------------------------------------------------------

    def _main(self, started: threading.Event, failure: list[BaseException]) -> None:
        try:
            self._open()
        except BaseException as exc:  # reported to the constructor
            failure.append(exc)
            started.set()
            return
        started.set()
        try:
            self._loop()
        finally:
            self._free()

    def _open(self) -> None:
        l = self._l
        cp = l.llama_context_default_params()
        cp.n_ctx = self.n_ctx_slot * self.parallel
        cp.n_seq_max = self.parallel
        cp.n_batch = cp.n_ubatch = self.n_batch
        cp.n_threads = cp.n_threads_batch = self.n_threads
        cp.kv_unified = self.kv_unified  # False: a stream of n_ctx_slot cells per slot (see the module doc)
        cp.flash_attn_type = l.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.flash_attn else l.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.no_perf = True
        self.ctx = l.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create the batching context")
        self.mem = l.llama_get_memory(self.ctx)
        self.slots = [_Slot(seq=i) for i in range(self.parallel)]
        self.batch = _Batch(l, self.n_batch)
        self.cand = _Candidates(l, self.n_vocab)

    def _free(self) -> None:
        for slot in self.slots:
            self._drop_samplers(slot)
        if self.ctx:
            self._l.llama_free(self.ctx)
            self.ctx = None

    # --8<-- [start:loop]
    def _loop(self) -> None:
        while True:
            with self._lock:
                while not (self._ready or self._calls or self._closing or self._busy()):
                    self._lock.wait()
                if self._closing:
                    break
                calls, self._calls = self._calls, deque()
                ready, self._ready = self._ready, deque()
                self._running += len(ready)
            for fn, future in calls:
                try:
                    future.set_result(fn())
                except BaseException as exc:
                    future.set_exception(exc)
            for request in ready:
                self._start(request)
            if self._busy():
                try:
                    self._step()
                except Exception as exc:  # the context is in doubt: fail every running request
                    for slot in self.slots:
                        if slot.request is not None:
                            self._fail(slot.request, exc)
            self._flush()
        for slot in self.slots:
            if slot.request is not None:
                self._fail(slot.request, RuntimeError("the server is shutting down"))
        self._flush()
    # --8<-- [end:loop]

    def _flush(self) -> None:
        """Hands the step's events over, in order, now that no more sampling needs the GIL."""
        outbox, self._outbox = self._outbox, []
        for emit, item in outbox:
            emit(item)

    def _busy(self) -> bool:
        return any(s.request is not None for s in self.slots)

    # ---- starting a request: slots and the prefix cache -----------------------------------------

    def _start(self, request: _Request) -> None:
        request.t_start = time.perf_counter()
        if request.cancel.is_set():
            self.stats["cancelled"] += 1
            self._finish(request, cancelled=True)
            return
        if min(request.params.max_tokens, self.n_ctx_slot - len(request.prompt)) <= 0:
            for index in request.pending:  # nothing to generate: every choice ends at once
                request.emit(ChoiceDone(index, "length", 0))
            request.emit(Timings(len(request.prompt)))
            self._finish(request)
            return
        free = [s for s in self.slots if s.request is None]
        leader = self._pick_slot(free, request.prompt)
        others = sorted((s for s in free if s is not leader), key=lambda s: s.last_used)
        slots = [leader] + others[:request.units - 1]
        for slot in slots:
            slot.request = request
        try:
            self._reuse_prefix(leader, request)
            self._begin_choice(leader, request)
            for slot in slots[1:]:
                self._l.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
                slot.tokens = []
                slot.waiting = True
                leader.followers.append(slot)
                self._begin_choice(slot, request)
        except Exception as exc:  # e.g. a grammar llama.cpp cannot parse
            self._fail(request, exc)

    def _pick_slot(self, free: list[_Slot], prompt: list[int]) -> _Slot:
        """The free slot holding the longest prefix of ``prompt``; else the least recently used."""
        if self.prefix_cache:
            best = max(free, key=lambda s: (_common_prefix(s.tokens, prompt), -s.last_used))
            if _common_prefix(best.tokens, prompt) > 0:
                return best
        return min(free, key=lambda s: s.last_used)

    # --8<-- [start:prefix_cache]
    def _reuse_prefix(self, slot: _Slot, request: _Request) -> None:
        """Keeps (or copies from another slot) the longest cached prefix; queues the rest of the prompt."""
        l, prompt = self._l, request.prompt
        keep = _common_prefix(slot.tokens, prompt) if self.prefix_cache else 0
        source = slot
        if self.prefix_cache:  # a busy slot may hold a longer one: a shared system prompt, say
            for other in self.slots:
                n = _common_prefix(other.tokens, prompt)
                if n >= keep + (1 if self.kv_unified else MIN_COPY):
                    keep, source = n, other
        keep = min(keep, len(prompt) - 1)  # the last prompt token is evaluated again: its logits start the answer
        if source is not slot:  # the whole of the other slot's cells, then cut to the prefix
            l.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
            l.llama_memory_seq_cp(self.mem, source.seq, slot.seq, -1, -1)
        l.llama_memory_seq_rm(self.mem, slot.seq, keep, -1)
        slot.tokens = prompt[:keep]
        slot.todo = prompt[keep:]
        request.cached_tokens = keep
        self.stats["prompt_cached"] += keep
    # --8<-- [end:prefix_cache]

    def _begin_choice(self, slot: _Slot, request: _Request) -> None:
        p = request.params
        index = request.pending.popleft()
        seed = p.seed + index if p.seed is not None else int.from_bytes(np.random.bytes(4), "little")
        budget = min(p.max_tokens, self.n_ctx_slot - len(request.prompt))
        slot.choice = Sequence(index, p, budget, self.eog, self.piece)
        slot.chain = sampler_chain(self._l, p, seed, self.n_vocab)
        if p.grammar:
            slot.grammar = self._l.llama_sampler_init_grammar(self.vocab, p.grammar.encode("utf-8"), b"root")
            if not slot.grammar:
                raise ValueError("llama.cpp could not parse the grammar")
        request.running += 1

    # ---- one step -----------------------------------------------------------------------------

    # --8<-- [start:step]
    def _step(self) -> None:
        l, batch = self._l, self.batch
        batch.clear()
        for slot in self.slots:
            slot.in_batch, slot.chunk = -1, 0
            if slot.request is not None and slot.request.cancel.is_set():  # the client has gone
                self._cancel(slot.request)
        for slot in self.slots:  # first the next token of every generating sequence...
            if slot.next_token is not None:
                slot.in_batch = batch.add_one(slot.next_token, len(slot.tokens), slot.seq)
        room = batch.capacity - batch.n
        for slot in self._prefilling():  # ...then as much prompt as fits (chunked prefill)
            if room <= 0:
                break
            chunk = slot.todo[:room]
            last = len(chunk) == len(slot.todo)
            index = batch.add(chunk, len(slot.tokens), slot.seq, last)
            slot.chunk, room = len(chunk), room - len(chunk)
            if last:
                slot.in_batch = index
        if batch.n == 0:
            return
        batch.struct.n_tokens = batch.n
        status = l.llama_decode(self.ctx, batch.struct)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")
        self.stats["steps"] += 1
        for slot in self.slots:
            if slot.chunk:
                slot.tokens += slot.todo[:slot.chunk]
                del slot.todo[:slot.chunk]
                self.stats["prompt_evaluated"] += slot.chunk
            elif slot.in_batch >= 0 and slot.next_token is not None:
                slot.tokens.append(slot.next_token)
        for slot in self.slots:
            if slot.in_batch >= 0 and slot.request is not None:
                self._after_decode(slot)
    # --8<-- [end:step]

    def _prefilling(self) -> list[_Slot]:
        """Slots still reading their prompt, the oldest request first."""
        return sorted((s for s in self.slots if s.todo and s.request is not None),
                      key=lambda s: s.request.t_start)

    def _after_decode(self, slot: _Slot) -> None:
        request = slot.request
        if slot.next_token is None:  # it has just read its prompt
            now = time.perf_counter()
            request.t_first = request.t_first or now
            if request.pending and request.units < request.params.n:  # for choices that start later here
                request.first_logits = self._logits(slot.in_batch).copy()
            for follower in slot.followers:  # n > 1: copies of the prompt's cells (all the slot holds now)
                self._l.llama_memory_seq_cp(self.mem, slot.seq, follower.seq, -1, -1)
                follower.tokens = list(request.prompt)
                follower.waiting = False
                self._sample(follower, slot.in_batch)
            slot.followers = []
        self._sample(slot, slot.in_batch)

    def _logits(self, index: int) -> np.ndarray:
        return np.ctypeslib.as_array(self._l.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,))

    # --8<-- [start:sample]
    def _sample(self, slot: _Slot, index: int | None, logits: np.ndarray | None = None) -> None:
        """Samples the slot's next token with its chain; a grammar is checked on that one token first.

        ``index``: the row of this step's logits; None with ``logits`` given (a later choice's first token).
        """
        l, chain, grammar = self._l, slot.chain, slot.grammar
        if grammar is None and index is not None:
            token = l.llama_sampler_sample(chain, self.ctx, index)  # C fills, samples and accepts
        else:
            logits = self._logits(index) if logits is None else logits
            candidates = self.cand.fill(logits)
            if grammar is not None and not self.grammar_prefilter:
                l.llama_sampler_apply(grammar, ctypes.byref(candidates))
            l.llama_sampler_apply(chain, ctypes.byref(candidates))
            token = candidates.data[candidates.selected].id
            if grammar is not None and self.grammar_prefilter and not self.cand.allows(grammar, token):
                # Rejected: mask the whole vocabulary with the grammar and sample again
                # (llama.cpp's common/sampling.cpp does the same).
                self.stats["grammar_resampled"] += 1
                candidates = self.cand.fill(logits)
                l.llama_sampler_apply(grammar, ctypes.byref(candidates))
                l.llama_sampler_apply(chain, ctypes.byref(candidates))
                token = candidates.data[candidates.selected].id
            l.llama_sampler_accept(chain, token)
            if grammar is not None and token not in self.eog:
                l.llama_sampler_accept(grammar, token)
        self.stats["tokens"] += 1
        if slot.choice.params.logprobs is not None and logits is None:
            logits = self._logits(index)
        for event in slot.choice.push(token, logits):
            slot.request.emit(event)
        done = slot.choice.done
        slot.next_token = None if done else token
        if done or slot.request.cancel.is_set():
            self._end_choice(slot)
    # --8<-- [end:sample]

    # ---- ending choices and requests ----------------------------------------------------------

    def _end_choice(self, slot: _Slot) -> None:
        request = slot.request
        if request.cancel.is_set():
            self._cancel(request)
            return
        for event in slot.choice.finish():
            request.emit(event)
        request.running -= 1
        self._drop_samplers(slot)
        slot.choice, slot.next_token = None, None
        if request.pending:  # n > slots: the next choice reuses this slot's copy of the prompt
            self._l.llama_memory_seq_rm(self.mem, slot.seq, len(request.prompt), -1)
            slot.tokens = list(request.prompt)
            self._begin_choice(slot, request)
            if slot.choice is not None and request.first_logits is not None:
                self._sample(slot, None, request.first_logits)
            return
        self._release(slot)
        if request.running == 0 and not request.pending:
            now = time.perf_counter()
            first = request.t_first or now
            request.emit(Timings(len(request.prompt), request.cached_tokens, (first - request.t_start) * 1000,
                                 (now - first) * 1000))
            self.stats["completed"] += 1
            self._finish(request)

    def _cancel(self, request: _Request) -> None:
        self.stats["cancelled"] += 1
        for slot in self.slots:
            if slot.request is request:
                self._release(slot)
        self._finish(request, cancelled=True)

    def _fail(self, request: _Request, exc: BaseException) -> None:
        if request.failed:
            return
        request.failed = True
        for slot in self.slots:
            if slot.request is request:
                self._l.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
                slot.tokens = []
                self._release(slot)
        request.emit(exc)
        self._finish(request)

    def _release(self, slot: _Slot) -> None:
        """The slot is free again; its cells stay as a cached prefix unless the cache is off."""
        self._drop_samplers(slot)
        if not self.prefix_cache or slot.todo or slot.waiting:  # half-read prompts are not worth keeping
            self._l.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
            slot.tokens = []
        slot.request, slot.choice, slot.next_token = None, None, None
        slot.todo, slot.followers, slot.waiting = [], [], False
        slot.last_used = time.perf_counter()

    def _finish(self, request: _Request, cancelled: bool = False) -> None:
        request.emit(None)
        with self._lock:
            self._running -= 1
            self._free_units += request.units
            while self._waiting and self._free_units >= self._waiting[0].units:
                nxt = self._waiting.popleft()
                self._free_units -= nxt.units
                self._ready.append(nxt)

    def _drop_samplers(self, slot: _Slot) -> None:
        for name in ("chain", "grammar"):
            sampler = getattr(slot, name)
            if sampler:
                self._l.llama_sampler_free(sampler)
            setattr(slot, name, None)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo
