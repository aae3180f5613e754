"""Checks for lab 08: a room of clients, one batch per step, the step loop, the prefix cache, the gain.

The batch, the step and the prefix cache are checked on plain data and on a scripted model (so
they run in remote mode too, where llama.cpp is not installed); the server's text and speed are
checked through the learner's own server, with the official client.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

from ..checks import Mismatch, Section, check, describe, short, type_name
from ..checks import hint as hint  # check.hint(check.entries): the concrete hint, on request
from ..model import MODEL_ID

WAITING = Section("08-batching", "One sequence leaves the CPU waiting")
LOOP = Section("08-batching", "The step loop")
SLOTS = Section("08-batching", "Slots and the KV cache")
SAMPLING = Section("08-batching", "Sampling per sequence, in C")
PREFIX = Section("08-batching", "The prefix cache")
PRICE = Section("08-batching", "The price: determinism")
PITFALLS = Section("08-batching", "Pitfalls that break real clients")
SECTIONS = (WAITING, LOOP, SLOTS, SAMPLING, PREFIX, PRICE, PITFALLS)

#: how much more the room must get with batching than without, at 4 clients (2 cores give ~1.5-2.5x)
MIN_GAIN = 1.15

#: prompts whose next words are near certain: a float that differs in its last bits cannot flip them
NEAR_CERTAIN = [
    "Count from 1 to 20, separated by commas.",
    "Write the days of the week, starting with Monday, separated by commas.",
    "List the letters of the alphabet from A to P, separated by commas.",
    "List the months of the year, separated by commas.",
]


# ---- Step 1: a room of clients -------------------------------------------------------------------

class _Recorder:
    """Looks like the official client to ``room()``; notes when each request starts and ends, and
    the completion tokens the server's usage chunk reports."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))

    def _create(self, **kwargs: Any) -> Any:
        call: dict[str, Any] = {"enter": time.perf_counter(), "exit": None, "tokens": None,
                                "stream": bool(kwargs.get("stream"))}
        with self._lock:
            self.calls.append(call)
        answer = self._client.chat.completions.create(**kwargs)
        if not call["stream"]:
            call["exit"] = time.perf_counter()
            call["tokens"] = answer.usage.completion_tokens if answer.usage else None
            return answer
        return _RecordedStream(answer, call)


class _RecordedStream:
    def __init__(self, stream: Any, call: dict[str, Any]) -> None:
        self._stream, self._call = stream, call

    def __iter__(self) -> Any:
        for chunk in self._stream:
            if getattr(chunk, "usage", None):
                self._call["tokens"] = chunk.usage.completion_tokens
            yield chunk
        self._call["exit"] = time.perf_counter()

    def __enter__(self) -> "_RecordedStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._stream.close()


def _require_server(server: Any) -> Any:
    if server is None or not getattr(server, "ready", False):
        raise Mismatch("your server is not running: the lab.serve(...) cell above says why",
                       hint="run the cell that starts the server, and read the end of its log if it fails")
    return server.client()


@check("A room of clients", section=PITFALLS,
       nudge="a room is several clients asking at the same time, each on its own thread; what the room gets "
             "is all the tokens over the wall time of the whole room, not a sum of each client's speed",
       hint="start one thread per client (a ThreadPoolExecutor of n_clients threads, mapping ask over "
            "PROMPTS[:n_clients]); time the whole room from before the first starts to after the last ends; "
            "tok_s is the sum of the answers' tokens over that time")
def room(room_fn: Callable[..., Any], server: Any) -> str:
    recorder = _Recorder(_require_server(server))
    start = time.perf_counter()
    result = room_fn(recorder, 2, 4)
    took = time.perf_counter() - start
    if result is None:
        raise Mismatch("room(client, 2, 4) returned None: it should return a dict with 'tokens', 'seconds' "
                       "and 'tok_s'")
    if not isinstance(result, dict) or not {"tokens", "seconds", "tok_s"} <= set(result):
        raise Mismatch(f"room(client, 2, 4) returned {short(result)}: a dict with 'tokens', 'seconds' and 'tok_s'")
    calls = recorder.calls
    if len(calls) != 2:
        raise Mismatch(f"room(client, 2, 4) sent {len(calls)} request{'s' if len(calls) != 1 else ''}, not 2: "
                       "one per client")
    if any(c["exit"] is None for c in calls):
        raise Mismatch("some clients did not read their whole stream: the last chunk (the usage) is where the "
                       "token count is")
    if max(c["enter"] for c in calls) >= min(c["exit"] for c in calls):
        raise Mismatch("your clients asked one after another: the second asked only once the first had its "
                       "whole answer, so the server never had two requests at once",
                       details=[f"client {i}: from {1000 * (c['enter'] - start):.0f} to "
                                f"{1000 * (c['exit'] - start):.0f} ms" for i, c in enumerate(calls)])
    tokens = sum(c["tokens"] or 0 for c in calls)
    if result["tokens"] != tokens:
        raise Mismatch(f"'tokens' is {short(result['tokens'])}, but the server's usage says the two answers "
                       f"had {tokens} completion tokens in all")
    wall = max(c["exit"] for c in calls) - min(c["enter"] for c in calls)
    seconds = result["seconds"]
    if not isinstance(seconds, (int, float)) or not 0.9 * wall <= seconds <= took + 0.05:
        raise Mismatch(f"'seconds' is {short(seconds)}: the room took {wall:.3f} s from the first request to "
                       "the end of the last answer (the wall time of the whole room, not a sum of the clients')")
    rate = result["tok_s"]
    if not isinstance(rate, (int, float)) or abs(rate - tokens / seconds) > 0.02 * tokens / seconds:
        raise Mismatch(f"'tok_s' is {short(rate)}, not tokens / seconds = {tokens / seconds:.1f}: what the room "
                       "gets is its tokens over its wall time (a sum of each client's speed counts the time "
                       "they waited for each other as if it were free)")
    return f"A room of clients: 2 clients at once, {tokens} tokens in {seconds:.2f} s, {rate:.0f} tokens/s"


def show(result: Any, label: str) -> None:
    """One line for a room's result, or why there is none yet."""
    if not isinstance(result, dict) or "tok_s" not in result:
        print(f"{label}: (not yet: room() returned {type_name(result)})")
        return
    firsts = result.get("first_token_ms")
    print(f"{label}: {result['clients']} clients, {result['tokens']} tokens in {result['seconds']:.2f} s = "
          f"{result['tok_s']:.1f} tokens/s" + (f"; first tokens after {firsts} ms" if firsts else ""))


def texts_alone(server: Any, max_tokens: int = 12) -> list[str] | None:
    """The answers to NEAR_CERTAIN, one request at a time, at temperature 0 (check.together compares)."""
    if server is None or not getattr(server, "ready", False):
        return None
    client = server.client()
    out = []
    for prompt in NEAR_CERTAIN:
        reply = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": prompt}],
                                               max_tokens=max_tokens, temperature=0)
        out.append(reply.choices[0].message.content or "")
    return out


# ---- Step 2: one step's batch ----------------------------------------------------------------------

def _slot(seq: int, tokens: list[int], todo: list[int] = (), next_token: int | None = None) -> Any:  # type: ignore[assignment]
    return SimpleNamespace(seq=seq, tokens=list(tokens), todo=list(todo), next_token=next_token,
                           request=SimpleNamespace())


def _by_sequence(entries: list[Any]) -> dict[int, list[tuple[int, int, bool]]]:
    out: dict[int, list[tuple[int, int, bool]]] = {}
    for token, pos, seq, logits in entries:
        out.setdefault(seq, []).append((token, pos, bool(logits)))
    return out


def _entries(fn: Callable[[list[Any]], Any], slots: list[Any]) -> list[tuple[Any, ...]]:
    got = fn(slots)
    if got is None:
        raise Mismatch("batch_entries returned None: it should return a list of (token, position, sequence id, "
                       "logits?) tuples")
    got = list(got)
    for entry in got:
        if not isinstance(entry, (tuple, list)) or len(entry) != 4:
            raise Mismatch(f"an entry is {short(entry)}: each is a tuple (token, position, sequence id, logits?)")
    return [tuple(e) for e in got]


@check("One step's batch", section=LOOP,
       nudge="a batch entry is one token to evaluate: which token, at which position of which sequence, and "
             "whether llama.cpp should compute the logits after it (only where a token will be sampled)",
       hint="for a generating slot, one entry: its next_token at the position after its cells (the length of "
            "slot.tokens), with logits; for a slot with a prompt to read, one entry per token of slot.todo, at "
            "positions counting on from there, logits only on the last; the sequence id is slot.seq")
def entries(batch_entries: Callable[[list[Any]], Any]) -> str:
    generating = _slot(2, tokens=[11, 12, 13, 14, 15, 16, 17], next_token=42)
    fresh = _slot(0, tokens=[], todo=[1, 2, 3])
    cached = _slot(1, tokens=[1, 2, 3, 4], todo=[9, 8])
    want = {2: [(42, 7, True)], 0: [(1, 0, False), (2, 1, False), (3, 2, True)], 1: [(9, 4, False), (8, 5, True)]}
    got = _by_sequence(_entries(batch_entries, [generating, fresh, cached]))
    if not got:
        raise Mismatch("batch_entries returned no entries for three busy slots")
    slots = [generating, fresh, cached]
    if got == {i: want[slot.seq] for i, slot in enumerate(slots)} or set(got) != set(want):
        raise Mismatch(f"the entries name sequences {sorted(got)}, but the slots are sequences 2, 0 and 1 (in that "
                       "order): the sequence id is slot.seq, not the slot's place in the list")
    for seq, name in ((2, "the generating slot"), (0, "the new prompt"), (1, "the prompt with a cached prefix")):
        mine, right = got[seq], want[seq]
        if [t for t, _, _ in mine] != [t for t, _, _ in right]:
            raise Mismatch(f"{name} (sequence {seq}) puts tokens {[t for t, _, _ in mine]} in the batch, not "
                           f"{[t for t, _, _ in right]}",
                           details=["a generating slot evaluates the token it sampled last (next_token); a "
                                    "slot reading a prompt evaluates slot.todo, what its cells do not hold yet"])
        if [p for _, p, _ in mine] != [p for _, p, _ in right]:
            held = {2: generating, 0: fresh, 1: cached}[seq].tokens
            raise Mismatch(f"{name} (sequence {seq}) is at positions {[p for _, p, _ in mine]}, not "
                           f"{[p for _, p, _ in right]}: its cells hold {len(held)} tokens (positions 0 to "
                           f"{len(held) - 1}), and its next token goes right after them", section=SLOTS)
        flags = [f for _, _, f in mine]
        if flags != [f for _, _, f in right]:
            if seq != 2 and all(flags):
                what = (f"{name} asks for logits after every prompt token: llama.cpp then computes a "
                        "49,152-wide row of logits for each, and only the last one is ever sampled from")
            elif not flags[-1]:
                what = (f"{name} (sequence {seq}) asks for no logits after its last token: there will be nothing "
                        "to sample its next token from")
            else:
                what = f"{name} (sequence {seq}) asks for logits at {flags}, not {[f for _, _, f in right]}"
            raise Mismatch(what)
    return "One step's batch: the right tokens, positions, sequences, and logits only where a token is sampled"


# ---- Step 3: the step ----------------------------------------------------------------------------

EOS = 0


def _next_token(cells: list[int]) -> int:
    """The scripted model: the next token is a function of the whole sequence so far (its cells)."""
    if cells and cells[0] == 99 and len(cells) >= 6:
        return EOS
    return 1 + (sum(cells) * 31 + len(cells)) % 47


def _expected(prompt: list[int], max_tokens: int) -> list[int]:
    cells, out = list(prompt), []
    while True:
        token = _next_token(cells)
        out.append(token)
        if token == EOS or len(out) >= max_tokens:
            return out
        cells.append(token)


class ScriptedEngine:
    """What ``step(engine)`` sees of the batching engine, over a scripted model that keeps its own
    KV cells per sequence and refuses what llama.cpp would refuse."""

    end_of_turn = frozenset({EOS})

    def __init__(self) -> None:
        self.cells: dict[int, list[int]] = {}
        self.slots: list[Any] = []
        self.rows: dict[int, tuple[int, int]] = {}  # batch index -> (sequence, next token)
        self.decodes = 0
        self.released: list[int] = []

    def add(self, seq: int, cached: list[int], prompt: list[int] | None = None, max_tokens: int = 8) -> Any:
        self.cells[seq] = list(cached)
        slot = SimpleNamespace(seq=seq, tokens=list(cached), todo=[], next_token=None, request=None)
        self.slots.append(slot)
        if prompt is not None:
            self.start(slot, prompt, max_tokens)
        return slot

    def start(self, slot: Any, prompt: list[int], max_tokens: int) -> Any:
        keep = 0
        while keep < min(len(slot.tokens), len(prompt) - 1) and slot.tokens[keep] == prompt[keep]:
            keep += 1
        del self.cells[slot.seq][keep:]
        slot.tokens, slot.todo, slot.next_token = prompt[:keep], prompt[keep:], None
        slot.request = SimpleNamespace(tokens=list(prompt), max_tokens=max_tokens, count=0, out=queue.Queue(),
                                       done=threading.Event(), sampler=None, expected=_expected(prompt, max_tokens))
        return slot.request

    def decode(self, entries: Any) -> None:
        self.decodes += 1
        if self.decodes > 1:
            raise Mismatch("step() called engine.decode more than once in one step: one llama_decode per step, "
                           "with every busy sequence in it, is the whole point of batching", section=WAITING,
                           hint="build one list of entries for all the busy slots (batch_entries), and decode it once")
        entries = list(entries)
        if not entries:
            raise Mismatch("step() decoded an empty batch while slots were busy: check.entries first")
        self.rows = {}
        for i, entry in enumerate(entries):
            token, pos, seq, logits = entry
            if seq not in self.cells:
                raise Mismatch(f"entry {i} names sequence {seq}, which is no slot's")
            if pos != len(self.cells[seq]):
                raise Mismatch(f"entry {i} puts a token at position {pos} of sequence {seq}, whose cells hold "
                               f"{len(self.cells[seq])} tokens: llama.cpp refuses a batch whose positions do not "
                               "follow on (are slot.tokens kept up to date after each step?)", section=SLOTS)
            self.cells[seq].append(token)
            if logits:
                self.rows[i] = (seq, _next_token(self.cells[seq]))

    def sample(self, slot: Any, index: Any) -> int:
        if index not in self.rows:
            raise Mismatch(f"step() sampled sequence {slot.seq} from row {short(index)} of the batch, which has no "
                           "logits: the row to sample is the index, in the batch, of the slot's entry with logits",
                           section=SAMPLING)
        seq, token = self.rows[index]
        if seq != slot.seq:
            raise Mismatch(f"step() sampled sequence {slot.seq} from row {index}, which holds the logits of "
                           f"sequence {seq}: the answers would cross", section=SAMPLING)
        return token

    def release(self, slot: Any) -> None:
        self.released.append(slot.seq)
        slot.request.out.put(None)
        slot.request, slot.next_token, slot.todo = None, None, []


def _drain(out: "queue.Queue[Any]") -> list[Any]:
    items = []
    while not out.empty():
        items.append(out.get_nowait())
    return items


@check("The step", section=LOOP,
       nudge="a step is: one batch for every busy slot, one decode, then for each slot: its cells now hold what "
             "was evaluated, one token is sampled from its own row, handed to its request, and the slot either "
             "goes on or is released",
       hint="build the entries of all the busy slots with batch_entries and give them to engine.decode, once; "
            "then for each busy slot: find the index of its entry with logits, move slot.todo (or next_token) "
            "into slot.tokens, sample with engine.sample (the slot and that index), count the token in "
            "request.count and put it on request.out; release the slot on an end-of-turn token or at "
            "max_tokens, else keep the token as slot.next_token")
def step(step_fn: Callable[[Any], Any]) -> str:
    engine = ScriptedEngine()
    a = engine.add(2, cached=[5, 6, 7], prompt=[5, 6, 7, 8, 9], max_tokens=4)   # a prefix in the cache
    b = engine.add(0, cached=[], prompt=[99, 3, 2], max_tokens=10)              # ends with end-of-turn
    later = engine.add(3, cached=[1, 1, 1])                                      # free, holding a prefix
    c = engine.add(1, cached=[], prompt=[3, 4], max_tokens=1)                   # one token and done
    requests = {"a": a.request, "b": b.request, "c": c.request}
    steps = 0
    pool = ThreadPoolExecutor(1)  # not `with`: a step that never returns must not hang the check too
    try:
        while any(slot.request is not None for slot in engine.slots) or steps < 2:
            if steps == 2:  # a request joins while the others generate
                requests["d"] = engine.start(later, [1, 1, 4, 2], max_tokens=3)
            engine.decodes = 0
            busy = [s.seq for s in engine.slots if s.request is not None]
            future = pool.submit(step_fn, engine)
            try:
                future.result(timeout=10)
            except concurrent.futures.TimeoutError:
                raise Mismatch("step(engine) did not return within 10 s: does it wait on something?") from None
            steps += 1
            if engine.decodes == 0 and busy:
                raise Mismatch(f"step() did not call engine.decode with sequences {busy} busy",
                               hint="build the batch with batch_entries and give it to engine.decode")
            if steps > 30:
                unfinished = [name for name, r in requests.items() if r.out.empty() or None not in list(r.out.queue)]
                raise Mismatch(f"after 30 steps, requests are still running ({unfinished}): release a slot when "
                               "its request ends (an end-of-turn token, or request.max_tokens tokens sampled)")
    finally:
        pool.shutdown(wait=False)
    for name, request in requests.items():
        got, want = _drain(request.out), request.expected + [None]
        if got != want:
            details = [f"request {name}: {short(got)}", f"expected:  {short(want)}"]
            if None not in got:
                what = f"request {name} was never released: its generate() would wait forever"
            elif got.count(None) > 1:
                what = f"request {name} was released more than once"
            elif len(got) > len(want):
                what = (f"request {name} got {len(got) - 1} tokens, more than it asked for: stop at its "
                        "max_tokens, and at an end-of-turn token")
            else:
                what = f"request {name} got the wrong tokens"
            raise Mismatch(what, details=details)
        if request.count != len(request.expected):
            raise Mismatch(f"request {name}: request.count is {request.count} after {len(request.expected)} tokens: "
                           "count every token sampled (it is how max_tokens is enforced)")
    for slot in engine.slots:
        if slot.tokens != engine.cells[slot.seq]:
            raise Mismatch(f"at the end, sequence {slot.seq}'s slot.tokens is {short(slot.tokens)}, but its cells "
                           f"hold {short(engine.cells[slot.seq])}: slot.tokens must say exactly what was evaluated "
                           "(the prefix cache trusts it)", section=PREFIX)
    return (f"The step: 4 requests, one joining midway, in {steps} steps of one decode each; every token from "
            "its own sequence's row, every slot released once")


# ---- Step 4: the prefix cache ----------------------------------------------------------------------

PREFIX_CASES = [
    # (cached, new, reusable, why)
    ([], [1, 2, 3], 0, "an empty slot holds nothing to reuse"),
    ([1, 2, 9, 4], [1, 2, 3, 4], 2, "the prompts part ways at the third token: the fourth matches, but too late"),
    ([7, 1, 2], [1, 2, 3], 0, "the first tokens differ: nothing matches from position 0"),
    ([1, 2, 3], [1, 2, 3, 4, 5], 3, "the cache holds the start of the new prompt (a chat's earlier turn)"),
    ([1, 2, 3, 4], [1, 2, 3, 4], 3, "the same prompt again: its last token must still be evaluated"),
    ([1, 2, 3, 4, 5], [1, 2, 3], 2, "the new prompt is a prefix of the cache, and its last token must be read again"),
    ([1, 2, 3], [], 0, "an empty prompt keeps nothing (never a negative count)"),
]


@check("The prefix cache", section=PREFIX,
       nudge="a slot can keep the cells of the longest common prefix of what it holds and the new prompt, "
             "but llama.cpp must evaluate at least one token of the prompt: the logits the answer starts "
             "from are not kept",
       hint="count the positions, from 0, where both lists hold the same token, stopping at the first "
            "difference; return that count, but at most the length of new minus one (and never below 0); "
            "pick_slot returns the free slot whose tokens give the largest count")
def prefix(common_prefix: Callable[[list[int], list[int]], Any], pick_slot: Callable[[list[Any], list[int]], Any]) -> str:
    for cached, new, want, why in PREFIX_CASES:
        got = common_prefix(list(cached), list(new))
        if got == want:
            continue
        details = [why]
        if cached == new and got == len(new):
            details.append("with nothing left to evaluate, there are no logits to sample the first token from: "
                           "keep len(new) - 1 at most")
        raise Mismatch(f"common_prefix({cached}, {new}) returned {short(got)}, not {want}", details=details)
    long_cached = list(range(1000)) + [5] * 200
    long_new = list(range(1000)) + [6] * 50
    if common_prefix(long_cached, long_new) != 1000:
        raise Mismatch("on two 1,000-token prompts that match on their first 1,000 tokens, common_prefix did not "
                       "return 1000")
    free = [SimpleNamespace(seq=0, tokens=[1, 2, 3, 9]), SimpleNamespace(seq=1, tokens=[1, 2, 3, 4, 5, 6]),
            SimpleNamespace(seq=2, tokens=[])]
    chosen = pick_slot(list(free), [1, 2, 3, 4, 5, 7])
    if chosen is None or getattr(chosen, "seq", None) != 1:
        raise Mismatch(f"pick_slot chose {('the slot of sequence ' + str(chosen.seq)) if hasattr(chosen, 'seq') else short(chosen)}"
                       ", but the slot of sequence 1 holds the first 5 tokens of the prompt: the longest prefix "
                       "is the most work saved", hint="return the slot itself, the one with the largest common_prefix")
    return "The prefix cache: the longest common prefix, never the whole prompt, and the slot that holds it"


# ---- Step 6: the same answers, faster ------------------------------------------------------------------

@check("The same answers, together", section=PRICE,
       nudge="decoded together, each sequence must see only its own cells and sample from its own row of "
             "logits: the answers are then those each prompt gets alone, but for the rare near-tie",
       hint="if the answers cross or turn to noise, check the positions (after the length of slot.tokens), the "
            "sequence ids (slot.seq) and the row each slot samples from, in batch_entries and step")
def together(server: Any, alone: list[str] | None, max_tokens: int = 12) -> str:
    client = _require_server(server)
    if not alone:
        raise Mismatch("there are no answers from the serial server to compare with: run the cell that asked "
                       "them (texts_alone), in step 1")

    def ask(prompt: str) -> str:
        reply = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": prompt}],
                                               max_tokens=max_tokens, temperature=0)
        return reply.choices[0].message.content or ""

    try:
        with ThreadPoolExecutor(len(NEAR_CERTAIN)) as pool:
            both = list(pool.map(ask, NEAR_CERTAIN))
    except Exception as exc:  # noqa: BLE001 - the server's answer is the feedback
        raise Mismatch(f"the batching server failed on {len(NEAR_CERTAIN)} requests at once: {describe(exc)}",
                       hint="the server's log (server.log()) shows the error; run check.step first") from None
    differ = [(p, a, b) for p, a, b in zip(NEAR_CERTAIN, alone, both) if a != b]
    # A near-tie can flip late in an answer (the chapter measures how often); crossed or broken
    # sequences differ from the first words. One late difference is allowed, no early one.
    early = [(p, a, b) for p, a, b in differ if _common_chars(a, b) < len(a) // 2]
    if early or len(differ) > 1:
        raise Mismatch(f"{len(differ)} of {len(NEAR_CERTAIN)} answers decoded together differ from the same "
                       "prompts' answers decoded alone, at temperature 0",
                       details=[f"{p[:40]!r}: alone {a!r}, together {b!r}" for p, a, b in differ])
    note = f" ({len(differ)} differs late: a near-tie, see the chapter)" if differ else ""
    return (f"The same answers, together: {len(NEAR_CERTAIN)} prompts decoded in one batch give the answers "
            f"they get alone{note}")


def _common_chars(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@check("Batched is faster", section=WAITING,
       nudge="with batching, four clients share each step instead of waiting in line: the room should get "
             "clearly more tokens per second than the serial server gave it",
       hint="start the second server with MYSERVER_PARALLEL=4 (the env argument of lab.serve); make_engine must return your "
            "BatchingEngine when settings.parallel > 1, and the worker must run settings.parallel threads so "
            "that four calls of generate wait at once")
def faster(serial: Any, batched: Any, again: Callable[[], Any] | None = None) -> str:
    """``again`` measures the batched room once more: a machine shared with other work slows one room
    now and then, so a room below the bar is measured again, up to twice, and the best one is kept
    (in ``batched``, which is updated in place)."""
    for name, result in (("serial", serial), ("batched", batched)):
        if not isinstance(result, dict) or not isinstance(result.get("tok_s"), (int, float)):
            raise Mismatch(f"there is no {name} measurement: room() returned {type_name(result)} "
                           "(check.room first)")
    if batched.get("clients") != serial.get("clients"):
        raise Mismatch(f"the two rooms had {serial.get('clients')} and {batched.get('clients')} clients: compare "
                       "the same room")
    rooms = 1
    while batched["tok_s"] < MIN_GAIN * serial["tok_s"] and again is not None and rooms < 3:
        other = again()
        rooms += 1
        if isinstance(other, dict) and other.get("tok_s", 0) > batched["tok_s"]:
            batched.update(other)
    gain = batched["tok_s"] / serial["tok_s"]
    if gain < MIN_GAIN:
        details = [f"serial: {serial['tok_s']:.1f} tokens/s, batched: {batched['tok_s']:.1f} tokens/s"
                   + (f" (the best of {rooms} rooms)" if rooms > 1 else "")]
        firsts = batched.get("first_token_ms") or []
        if len(firsts) > 1 and max(firsts) > 0.6 * 1000 * batched["seconds"]:
            details.append(f"the batched server's first tokens came after {firsts} ms: the last client waited "
                           "for the others, so the requests still went one by one")
        raise Mismatch(f"with {batched['clients']} clients the batching server gave {gain:.2f}x the serial one's "
                       f"tokens per second: expected at least {MIN_GAIN}x", details=details)
    best = f" (the best of {rooms} rooms: the machine was busy)" if rooms > 1 else ""
    return (f"Batched is faster: {batched['clients']} clients get {batched['tok_s']:.0f} tokens/s together, "
            f"{gain:.1f}x the {serial['tok_s']:.0f} tokens/s of the serial server{best}")
