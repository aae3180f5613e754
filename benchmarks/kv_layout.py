"""One pool of KV cells for all slots, or a stream per slot: what it costs once the slots are full.

The batching runner (reference_server/backends/local/batching.py) can create its llama.cpp
context with a *unified* KV cache (one pool of cells, each tagged with its sequences: prefixes
are shared by tagging) or with one stream of cells per slot (a prefix held by another slot is
copied). This script drives the runner in-process, greedy, the end-of-generation tokens
banned, and measures with each layout:

* one sequence's decode tok/s (128 tokens), its prompt + first token for a 14-token prompt;
* 8 sequences at once, 64 tokens each, aggregate tok/s (prompts included);
* a chat's fifth turn: 800 tokens held by a slot, 36 new ones read, time to the first token;

first with empty slots, then with every slot holding a 1,500-token prefix (a room an hour in:
the prefix cache keeps what each slot last served). Each (layout, round) runs in a child
process of its own, the layouts alternating, so that both see the same machine.

    python benchmarks/kv_layout.py [--rounds 2] [--threads 2] [--save]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

RESULT = HERE / "results" / f"{datetime.now(timezone.utc):%Y-%m-%d}-kv-layout.md"
FIGURES = ("decode", "ttft14", "aggregate8", "turn5")


def measure(unified: bool, threads: int) -> dict[str, dict[str, float]]:
    """In the child: both states (empty, full) of one runner with the given layout."""
    import numpy as np

    from lowlevel import Lab
    from reference_server.backends.base import TextDelta
    from reference_server.sampling import SamplingParams
    from reference_server.settings import Settings

    lab = Lab(Settings().model_path, threads, 4096, 8, kv_unified=unified)
    runner = lab.runner
    ban = {t: float("-inf") for t in lab.eog}
    rng = np.random.default_rng(0)

    def prompt(n: int) -> list[int]:  # random tokens after BOS: no two prompts share more than BOS
        return [1] + [int(x) for x in rng.integers(100, 40000, n - 1)]

    def timed(p: list[int], n: int) -> tuple[float, float]:
        t0, first = time.perf_counter(), []

        def emit(e: object) -> None:
            if isinstance(e, TextDelta) and not first:
                first.append(time.perf_counter())

        runner.run(p, SamplingParams(max_tokens=n, temperature=0.0, logit_bias=ban), threading.Event(), emit)
        rate = (n - 1) / (time.perf_counter() - first[0]) if n > 1 else 0.0
        return (first[0] - t0) * 1000, rate

    def aggregate8() -> float:
        t0 = time.perf_counter()
        workers = [threading.Thread(target=timed, args=(prompt(40), 64)) for _ in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return 8 * 64 / (time.perf_counter() - t0)

    def state() -> dict[str, float]:
        decode = statistics.median(timed(prompt(40), 128)[1] for _ in range(6))
        ttft14 = statistics.median(timed(prompt(14), 1)[0] for _ in range(5))
        agg = statistics.median(aggregate8() for _ in range(3))
        history = prompt(800)
        timed(history, 1)
        turn5 = statistics.median(timed(history + prompt(37)[1:], 1)[0] for _ in range(3))
        return {"decode": decode, "ttft14": ttft14, "aggregate8": agg, "turn5": turn5}

    try:
        empty = state()
        for _ in range(8):  # every slot now holds a 1,500-token prefix
            timed(prompt(1500), 1)
        full = state()
    finally:
        lab.close()
    return {"empty": empty, "full": full}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save", action="store_true", help=f"write {RESULT.relative_to(HERE.parent)}")
    ap.add_argument("--child", choices=["unified", "streams"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child == "unified", args.threads)), flush=True)
        return 0

    runs: dict[str, list[dict[str, dict[str, float]]]] = {"unified": [], "streams": []}
    t0 = time.perf_counter()
    for r in range(args.rounds):
        for layout in (("unified", "streams") if r % 2 == 0 else ("streams", "unified")):
            out = subprocess.run([sys.executable, __file__, "--child", layout, "--threads", str(args.threads)],
                                 capture_output=True, text=True, check=True)
            runs[layout].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {layout}: {runs[layout][-1]}", file=sys.stderr, flush=True)

    def med(layout: str, st: str, fig: str) -> float:
        return statistics.median(run[st][fig] for run in runs[layout])

    lines = [f"### KV cache layout: one pool or a stream per slot ({datetime.now(timezone.utc):%Y-%m-%d})", "",
             f"`python benchmarks/kv_layout.py --rounds {args.rounds} --threads {args.threads}` — "
             f"{(time.perf_counter() - t0) / 60:.1f} min; {os.cpu_count()} cores. The batching runner in-process, "
             "8 slots of 4,096 tokens, flash attention, greedy, end-of-generation banned; medians over rounds "
             "(each round: decode x6, first token x5, 8 at once x3, turn 5 x3). *Full*: every slot holds a "
             "1,500-token prefix.", "",
             "| layout | slots | decode tok/s (1 sequence) | 14-token prompt, first token ms | 8 at once, tok/s | "
             "turn 5 (800 held + 36 new), first token ms | turn 5 / 14-token prompt |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for layout in ("unified", "streams"):
        for st in ("empty", "full"):
            v = {f: med(layout, st, f) for f in FIGURES}
            lines.append(f"| {'one pool (kv_unified)' if layout == 'unified' else 'a stream per slot'} | {st} | "
                         f"{v['decode']:.1f} | {v['ttft14']:.0f} | {v['aggregate8']:.1f} | {v['turn5']:.0f} | "
                         f"{v['turn5'] / v['ttft14']:.2f}x |")
    lines += ["", "Every round:", "", "```text"]
    for layout in ("unified", "streams"):
        for i, run in enumerate(runs[layout], 1):
            lines.append(f"{layout} round {i}: " + "; ".join(
                f"{st} " + ", ".join(f"{f} {run[st][f]:.1f}" for f in FIGURES) for st in ("empty", "full")))
    lines += ["```", ""]
    text = "\n".join(lines)
    print(text)
    if args.save:
        RESULT.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
