"""How often batching and the prefix cache change the text at temperature 0.

Greedy decoding has no randomness, yet the same prompt can give a different text when the
floating-point sums that produce its logits change: another batch shape, another attention
kernel, the same cells in another order in the KV cache. A different last bit only matters when
two tokens are nearly tied, and then the texts part ways for good. This script counts how often
that happens on the embedded model, over ``--prompts`` chats (default 56: seven rounds of eight):

* **batched with 7 others**: each prompt alone (one at a time), then eight at a time, on a
  batching runner with the cache off; the same again with one KV pool for all slots
  (``--kv-unified``) instead of a stream per slot;
* **after a cache hit**: the same prompt once more on a runner whose cache holds the first
  request's cells (only the last prompt token is evaluated again), and once after a request
  that shares only the system prompt;
* **batching vs serial**: the batching runner alone (flash attention) against the serial
  runner (``--deterministic``: llama-cpp-python's defaults, the text the course records);
* **repeats**: the serial runner twice, and the cache-off batching runner alone twice (both must
  repeat exactly: same shapes, same cells).

    python benchmarks/determinism.py               # about 5 minutes on 2 idle cores
    python benchmarks/determinism.py --save        # also writes benchmarks/results/<date>-determinism.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from reference_server.backends.base import TextDelta, Timings  # noqa: E402
from reference_server.backends.local import LocalBackend  # noqa: E402
from reference_server.sampling import SamplingParams  # noqa: E402
from reference_server.settings import Settings  # noqa: E402

SYSTEMS = ["You are a helpful assistant.", "You are a patient teacher.", "You are a concise expert.",
           "You are a friendly guide.", "You are a careful scientist.", "You are a witty storyteller.",
           "You are a practical engineer."]
QUESTIONS = ["What is the capital of France?", "Name three fruits.", "Count to five.", "What is 2+2?",
             "Write a haiku about the sea.", "Explain gravity in one sentence.", "Who wrote Hamlet?",
             "Give me a synonym for happy."]


def chats(n: int) -> list[list[dict[str, str]]]:
    """``n`` chats, eight questions under each of seven system prompts."""
    return [[{"role": "system", "content": SYSTEMS[(i // len(QUESTIONS)) % len(SYSTEMS)]},
             {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(n)]


async def one(backend: LocalBackend, prompt: list[int], tokens: int) -> tuple[str, int]:
    text, cached = "", 0
    async for e in backend.generate(prompt, SamplingParams(max_tokens=tokens, temperature=0)):
        if isinstance(e, TextDelta):
            text += e.text
        elif isinstance(e, Timings):
            cached = e.cached_tokens
    return text, cached


def alone(backend: LocalBackend, prompts: list[list[int]], tokens: int) -> list[tuple[str, int]]:
    async def go() -> list[tuple[str, int]]:
        return [await one(backend, p, tokens) for p in prompts]
    return asyncio.run(go())


def batched(backend: LocalBackend, prompts: list[list[int]], tokens: int, width: int) -> list[tuple[str, int]]:
    async def go() -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for i in range(0, len(prompts), width):
            out += await asyncio.gather(*(one(backend, p, tokens) for p in prompts[i:i + width]))
        return out
    return asyncio.run(go())


def compare(a: list[tuple[str, int]], b: list[tuple[str, int]]) -> dict[str, Any]:
    differ = [(x, y) for (x, _), (y, _) in zip(a, b) if x != y]
    where = sorted(next(i for i, (c, d) in enumerate(zip(x + "\0", y + "\0")) if c != d) for x, y in differ)
    return {"n": len(a), "differ": len(differ), "first_char": where[len(where) // 2] if where else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=56)
    p.add_argument("--tokens", type=int, default=64, help="greedy tokens per answer (default 64)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--save", action="store_true")
    args = p.parse_args(argv)
    started = time.perf_counter()
    base = Settings(n_ctx=2048, n_threads=args.threads, embeddings=False, parallel=8, max_queue=64)
    cold = LocalBackend(base.model_copy(update={"prefix_cache": False}))
    warm, warm_shared = LocalBackend(base), LocalBackend(base)
    serial = LocalBackend(base.model_copy(update={"deterministic": True}))
    pool = LocalBackend(base.model_copy(update={"prefix_cache": False, "kv_unified": True}))
    backends = (cold, warm, warm_shared, serial, pool)
    for b in backends:
        b.load()
    conversations = chats(args.prompts)
    prompts = [cold.tokenize(cold.render_chat(c)) for c in conversations]
    siblings = [cold.tokenize(cold.render_chat([c[0], {"role": "user", "content": "Tell me something new."}]))
                for c in conversations]
    t = args.tokens
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    say("determinism: alone, cache off"); ref = alone(cold, prompts, t)
    say("determinism: again"); ref2 = alone(cold, prompts, t)
    say("determinism: batched with 7 others"); bat = batched(cold, prompts, t, 8)
    say("determinism: cache on, first and repeated"); first = alone(warm, prompts, t); hit = alone(warm, prompts, t)
    say("determinism: cache on, after a request sharing the system prompt")
    shared = []
    for s, prompt in zip(siblings, prompts):
        alone(warm_shared, [s], 4)
        shared += alone(warm_shared, [prompt], t)
    say("determinism: serial runner, twice"); ser = alone(serial, prompts, t); ser2 = alone(serial, prompts, t)
    say("determinism: one KV pool, alone and batched"); pool1 = alone(pool, prompts, t); pool8 = batched(pool, prompts, t, 8)
    rows = [
        ("batching runner alone, twice (cache off)", compare(ref, ref2), "same shapes, same cells"),
        ("alone vs batched with 7 others (cache off)", compare(ref, bat),
         "batch shape; each sequence attends to its own KV stream"),
        ("the same, with one KV pool for all slots (`--kv-unified`)", compare(pool1, pool8),
         "batch shape; attention walks every sequence's cells"),
        ("a stream per slot vs one pool, alone", compare(ref, pool1), "cells laid out differently"),
        ("cache off vs a first request with the cache on", compare(ref, first),
         "cells in another order (the cache keeps other requests' cells)"),
        ("first request vs the same prompt again (cache hit: only the last token is evaluated)",
         compare(first, hit), f"{sum(c for _, c in hit) / max(len(hit), 1):.0f} cached tokens on average"),
        ("cache off vs after a request sharing the system prompt", compare(ref, shared),
         f"{sum(c for _, c in shared) / max(len(shared), 1):.0f} cached tokens on average"),
        ("serial runner, twice", compare(ser, ser2), "llama-cpp-python, one sequence, fresh context"),
        ("serial runner vs batching runner alone", compare(ser, ref), "another attention kernel"),
    ]
    lines = [f"### Determinism at temperature 0 ({dt.date.today().isoformat()})\n",
             f"`python benchmarks/determinism.py` — {args.prompts} chats, {t} greedy tokens each, "
             f"{args.threads} thread(s), {(time.perf_counter() - started) / 60:.1f} min.\n",
             "| comparison | texts that differ | median first differing character | what changed |",
             "|---|---:|---:|---|"]
    for name, c, why in rows:
        share = f"{c['differ']}/{c['n']} ({c['differ'] / c['n']:.0%})"
        lines.append(f"| {name} | {share} | {c['first_char'] if c['first_char'] is not None else '–'} | {why} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.save:
        out = HERE / "results" / f"{dt.date.today().isoformat()}-determinism.md"
        out.write_text(text)
        say(f"determinism: wrote {out.relative_to(HERE.parent)}")
    for b in backends:
        asyncio.run(b.close())
    return 0


if __name__ == "__main__":
    sys.exit(main())
