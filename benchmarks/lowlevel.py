"""The limit of this llama.cpp build, and the batching runner measured without HTTP.

Runs as a child process of ``bench.py`` (``--serve``: one JSON command per line on stdin, one
JSON answer per line on stdout), so that every llama.cpp call of this process happens on one
thread (the runner's; see the OpenMP note in batching.py) and its CPU time is counted as the
benchmark's own. Two measurements:

* ``limit``: N sequences, each with its own prompt, read in one batch and then decoded greedily
  in one batch per step through the C API with llama.cpp's own sampler (a logit-bias + greedy
  chain: the end-of-generation tokens banned, as everywhere in the benchmark). No queue, no
  events, no detokenizing: nothing but ``llama_decode`` and ``llama_sampler_sample``. The
  context is configured as the runner's (a KV stream per sequence, flash attention).
* ``runner``: the batching runner (reference_server/backends/local/batching.py) driven with
  asyncio in this process, k clients at a time, each request streamed event by event.

    python benchmarks/lowlevel.py [--save]     # aggregate tok/s at 1, 2, 4, 8 sequences, C API and runner
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from reference_server.backends.local.batching import BatchingRunner  # noqa: E402
from reference_server.backends.base import ChoiceDone, TextDelta  # noqa: E402
from reference_server.sampling import SamplingParams  # noqa: E402

SYSTEM = "You are a helpful storyteller."
USER = "Tell me a long story about a lighthouse keeper and a storm."


def conversation(tag: str) -> list[dict[str, str]]:
    """The same chat as bench.py's: a unique first line, so no cache helps anyone."""
    return [{"role": "system", "content": f"[{zlib.crc32(tag.encode()):08x}] {SYSTEM}"},
            {"role": "user", "content": USER}]


class Lab:
    """One model, one batching runner, and the C-API probe, all on the runner's thread."""

    def __init__(self, model_path: Path, threads: int, n_ctx: int, parallel: int, kv_unified: bool = False) -> None:
        import llama_cpp
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.l = llama_cpp

        @llama_cpp.llama_log_callback
        def quiet(level: int, text: bytes, data: ctypes.c_void_p) -> None:
            pass
        self._quiet = quiet
        llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        self.threads, self.n_ctx = threads, n_ctx
        self.model = llama_cpp.llama_model_load_from_file(str(model_path).encode(),
                                                          llama_cpp.llama_model_default_params())
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.eog = [t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self.vocab, t)]
        self.tok = llama_cpp.Llama(model_path=str(model_path), vocab_only=True, verbose=False)
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self.template = env.from_string(self.tok.metadata["tokenizer.chat_template"])
        self.runner = BatchingRunner(self.model, parallel=parallel, n_ctx_slot=n_ctx, n_threads=threads,
                                     kv_unified=kv_unified)

    def prompt(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.template.render(messages=messages, add_generation_prompt=True, bos_token="", eos_token="")
        return self.tok.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    # --8<-- [start:limit]
    def limit(self, prompts: list[list[int]], tokens: int) -> dict[str, Any]:
        """Greedy decode of ``len(prompts)`` sequences through the C API (on the runner's thread)."""
        return self.runner.call(lambda: self._limit(prompts, tokens)).result()

    def _limit(self, prompts: list[list[int]], tokens: int) -> dict[str, Any]:
        l, n = self.l, len(prompts)
        cp = l.llama_context_default_params()
        cp.n_ctx, cp.n_seq_max, cp.kv_unified = self.n_ctx * n, n, self.runner.kv_unified
        cp.n_batch = cp.n_ubatch = max(512, sum(map(len, prompts)))
        cp.n_threads = cp.n_threads_batch = self.threads
        cp.flash_attn_type, cp.no_perf = l.LLAMA_FLASH_ATTN_TYPE_ENABLED, True
        ctx = l.llama_init_from_model(self.model, cp)
        batch = l.llama_batch_init(cp.n_batch, 0, 1)
        bias = (l.llama_logit_bias * len(self.eog))(*(l.llama_logit_bias(t, -np.inf) for t in self.eog))
        chains = []
        for _ in range(n):
            chain = l.llama_sampler_chain_init(l.llama_sampler_chain_default_params())
            l.llama_sampler_chain_add(chain, l.llama_sampler_init_logit_bias(self.n_vocab, len(self.eog), bias))
            l.llama_sampler_chain_add(chain, l.llama_sampler_init_greedy())
            chains.append(chain)
        try:
            t0 = time.perf_counter()
            k, last = 0, []
            for s, p in enumerate(prompts):  # every prompt in one batch
                for i, t in enumerate(p):
                    batch.token[k], batch.pos[k], batch.n_seq_id[k] = t, i, 1
                    batch.seq_id[k][0], batch.logits[k] = s, i == len(p) - 1
                    k += 1
                last.append(k - 1)
            batch.n_tokens = k
            assert l.llama_decode(ctx, batch) == 0
            next_tokens = [l.llama_sampler_sample(chains[s], ctx, last[s]) for s in range(n)]
            first = time.perf_counter()
            pos = [len(p) for p in prompts]
            for _ in range(tokens - 1):  # then one token of every sequence per step
                for s in range(n):
                    batch.token[s], batch.pos[s], batch.n_seq_id[s] = next_tokens[s], pos[s], 1
                    batch.seq_id[s][0], batch.logits[s] = s, 1
                    pos[s] += 1
                batch.n_tokens = n
                assert l.llama_decode(ctx, batch) == 0
                next_tokens = [l.llama_sampler_sample(chains[s], ctx, s) for s in range(n)]
            end = time.perf_counter()
        finally:
            for chain in chains:
                l.llama_sampler_free(chain)
            l.llama_batch_free(batch)
            l.llama_free(ctx)
        return {"sequences": n, "tokens": tokens, "prompt_tokens": sum(map(len, prompts)),
                "first_s": first - t0, "decode_tps": n * (tokens - 1) / (end - first),
                "aggregate_tps": n * tokens / (end - t0)}
    # --8<-- [end:limit]

    async def _stream(self, prompt: list[int], params: SamplingParams) -> dict[str, Any]:
        t0 = time.perf_counter()
        first = last = None
        count = 0
        finish = None
        async for e in self.runner.submit(prompt, params):
            if isinstance(e, TextDelta) and e.text:
                last = time.perf_counter() - t0
                first = last if first is None else first
            elif isinstance(e, ChoiceDone):
                count, finish = e.completion_tokens, e.finish_reason
        return {"ttft": first, "last": last, "total": time.perf_counter() - t0, "tokens": count,
                "finish_reason": finish, "prompt_tokens": len(prompt)}

    def runner_level(self, clients: int, requests: int, tokens: int, tag: str, ban: dict[str, int],
                     seed: int, temperature: float = 0.8) -> dict[str, Any]:
        """``clients`` concurrent clients, ``requests`` streamed requests each, in a row.

        The sampling is bench.py's (temperature 0.8, top-p 0.95, ...), as for every HTTP contender;
        ``temperature=0`` makes it greedy, as the C-API probe is.
        """
        bias = {int(k): -np.inf if v == -100 else float(v) for k, v in ban.items()}

        async def client(i: int) -> list[dict[str, Any]]:
            out = []
            for r in range(requests):
                t = f"{tag}-{i}-{r}"
                params = SamplingParams(max_tokens=tokens, temperature=temperature, top_p=0.95, top_k=40, min_p=0.05,
                                        seed=(seed + zlib.crc32(t.encode())) & 0x7FFFFFFF, logit_bias=bias)
                out.append(await self._stream(self.prompt(conversation(t)), params))
            return out

        async def go() -> tuple[list[dict[str, Any]], float]:
            t0 = time.perf_counter()
            per = await asyncio.gather(*(client(i) for i in range(clients)))
            return [s for c in per for s in c], time.perf_counter() - t0

        streams, wall = asyncio.run(go())
        return {"streams": streams, "wall": wall}

    def close(self) -> None:
        self.runner.close()
        self.tok.close()
        self.l.llama_model_free(self.model)


def serve(lab: Lab) -> None:
    """One JSON command per stdin line, one JSON answer per stdout line (see bench.py)."""
    print(json.dumps({"ready": True, "memory": lab.runner.memory_report()}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["op"] == "limit":
                prompts = [lab.prompt(conversation(f"{cmd['tag']}-{s}")) for s in range(cmd["sequences"])]
                answer = lab.limit(prompts, cmd["tokens"])
            elif cmd["op"] == "runner":
                answer = lab.runner_level(cmd["clients"], cmd["requests"], cmd["tokens"], cmd["tag"],
                                          cmd.get("ban", {}), cmd.get("seed", 0))
            elif cmd["op"] == "quit":
                break
            else:
                answer = {"error": f"unknown op {cmd['op']!r}"}
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)
    lab.close()


def table(lab: Lab, tokens: int, widths: list[int], repeats: int, max_other_load: float = 0.15) -> str:
    """Aggregate tok/s by batch width, the C API and the runner both greedy: best of ``repeats``.

    A measurement during which other processes took more than ``max_other_load`` of the CPU is
    taken again (up to five times, a few seconds apart): on 2 cores a neighbour halves a 2-thread decode.
    """
    import datetime as dt

    from machine import LoadMeter

    meter = LoadMeter([os.getpid()])
    ban = {str(t): -100 for t in lab.eog}
    loads: list[float] = []

    def quiet(fn: Any) -> Any:
        for attempt in range(6):
            with meter.measure() as window:
                result = fn()
            if window.other is None or window.other <= max_other_load or attempt == 5:
                loads.append(window.other or 0.0)
                return result
            time.sleep(5)
    lines = [f"| sequences | C API, aggregate tok/s | × one sequence | runner, aggregate tok/s | runner / C API |",
             "|---:|---:|---:|---:|---:|"]
    base = None
    for n in widths:
        capi, runner = [], []
        for r in range(repeats):
            limit = quiet(lambda: lab.limit([lab.prompt(conversation(f"limit-{n}-{r}-{s}")) for s in range(n)],
                                            tokens))
            capi.append(limit["aggregate_tps"])
            level = quiet(lambda: lab.runner_level(n, 1, tokens, f"runner-{n}-{r}", ban, r, temperature=0))
            runner.append(sum(s["tokens"] for s in level["streams"]) / level["wall"])
        c, g = max(capi), max(runner)
        base = base or c
        lines.append(f"| {n} | {c:.1f} | {c / base:.2f}× | {g:.1f} | {g / c:.0%} |")
        print(lines[-1], file=sys.stderr, flush=True)
    head = (f"### Batch width against throughput ({dt.date.today().isoformat()})\n\n"
            f"`python benchmarks/lowlevel.py --save`: every sequence reads its own prompt (about 44 tokens) "
            f"and decodes {tokens} greedy tokens; aggregate = all tokens over the whole time, prompts included; "
            f"best of {repeats}; {lab.threads} thread(s); {lab.runner.memory_report()}; other processes "
            f"took {sorted(loads)[len(loads) // 2]:.0%} of the CPU during the median measurement.\n")
    return head + "\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="GGUF file (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-ctx", type=int, default=4096, help="context per sequence (default 4096)")
    p.add_argument("--parallel", type=int, default=8, help="the runner's slots (default 8)")
    p.add_argument("--tokens", type=int, default=64, help="tokens per sequence (default 64)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--save", action="store_true", help="also write benchmarks/results/<date>-lowlevel.md")
    p.add_argument("--serve", action="store_true", help="answer JSON commands on stdin (for bench.py)")
    args = p.parse_args(argv)
    from reference_server.settings import embedded_model_path

    lab = Lab(args.model or embedded_model_path(), args.threads, args.n_ctx, args.parallel)
    if args.serve:
        serve(lab)
        return 0
    text = table(lab, args.tokens, [n for n in (1, 2, 4, 8, 16) if n <= args.parallel], args.repeats)
    print(text)
    if args.save:
        import datetime as dt

        out = HERE / "results" / f"{dt.date.today().isoformat()}-lowlevel.md"
        out.write_text(text)
        print(f"lowlevel: wrote {out.relative_to(HERE.parent)}", file=sys.stderr)
    lab.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
