"""What a grammar buys and what it costs: validity rates, and latency against free generation.

Prints three tables, in-process through the engine, with exactly the prompts and grammars the
server builds (``tools.plan`` and ``chat.template_messages``), on the prompts of
tests/test_tools.py:

1. Validity. Forced tool calls (named and ``required``) and json_schema replies, generated with
   the grammar (as the server does) and without it (same prompt and instructions, free text,
   then read the way a client would). "strict": the reply is exactly the expected shape;
   "lenient": a valid call or JSON object can be dug out of the text somewhere.
2. Auto mode's decisions (step 1, the call-or-empty-list grammar): does the model call when a
   tool fits, the right one, and abstain when none does?
3. Latency. The same prompt three ways: with the grammar as the server applies it (the
   likeliest tokens checked first, grammar_filter.py), with the grammar checked against the
   whole vocabulary at every step (llama-cpp-python's ``grammar=``, the prefilter off; its
   output must be identical), and without a grammar, for the same number of tokens (the
   free run is held to the grammar run's count by banning end-of-turn): medians over
   ``--repeats`` of time to first token (prefill + first sampled token), milliseconds per
   token after the first, and the whole generation; plus the time ``tools.plan`` takes to
   check the schemas and turn them into a grammar (on the event loop, for the first request
   with those schemas; later ones find it cached).

Usage: .venv/bin/python benchmarks/grammar_overhead.py [--repeats 5] [--skip-validity]
A shared machine distorts latency, badly: llama.cpp's threads spin while they wait for each
other, so a neighbour on a 2-core machine can make a token take seconds. A pair measured while
other processes took more than ``--max-other-load`` of the CPU (from /proc, as in
benchmarks/bench.py) is retried; the "other load" column gives the median that remained.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

import jsonschema  # noqa: E402

from machine import LoadMeter  # noqa: E402
from reference_server.backends.local import tools  # noqa: E402
from reference_server.backends.base import ChoiceDone, TextDelta
from reference_server.backends.local import LocalBackend as Engine  # noqa: E402
from reference_server.protocol import CreateChatCompletionRequest  # noqa: E402
from reference_server.backends.local.prompts import template_messages  # noqa: E402
from reference_server.sampling import SamplingParams  # noqa: E402
from reference_server.settings import Settings  # noqa: E402
from test_tools import FUNCTIONS, NAMED, REQUIRED, SCHEMAS, STRUCTURED, TOOLS  # noqa: E402

MAX_TOKENS = 96  # as in the tests
NO_TOOL = ["Tell me a joke.", "Hi! How are you?", "What is the capital of France?", "Write a haiku about the sea.",
           "Explain what a CPU is in one sentence.", "Thanks, that's all.", "Who wrote Hamlet?", "What is 2+2?"]
EOG_BAN = {0: float("-inf"), 2: float("-inf")}  # <|endoftext|>, <|im_end|>


def request(prompt: str, **kwargs: Any) -> CreateChatCompletionRequest:
    return CreateChatCompletionRequest(model="m", messages=[{"role": "user", "content": prompt}], **kwargs)


def build(engine: Engine, body: CreateChatCompletionRequest) -> tuple[list[int], str | None]:
    plan = tools.plan(engine, body)
    return engine.tokenize(engine.render_chat(template_messages(body, plan.instructions))), plan.grammar


async def run(engine: Engine, prompt: list[int], grammar: str | None, max_tokens: int,
              ban_eog: bool = False) -> dict[str, Any]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, grammar=grammar,
                            logit_bias=EOG_BAN if ban_eog else {})
    start, first, text, out = time.perf_counter(), None, "", {}
    async for event in engine.generate(prompt, params):
        if first is None:
            first = time.perf_counter() - start
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, ChoiceDone):
            out = {"tokens": event.completion_tokens, "finish": event.finish_reason}
    total = time.perf_counter() - start
    return {**out, "text": text, "ttft": first or total, "total": total}


# ---- reading replies back, as a client would ----------------------------------------------------

def calls_valid(text: str, names: set[str], *, strict: bool) -> bool:
    """A call block with at least one call, each to an allowed tool, with valid arguments."""
    if strict:
        match = re.fullmatch(r"\s*<tool_call>(.*)</tool_call>\s*", text, re.S)
        candidates = [match.group(1)] if match else []
    else:
        candidates = re.findall(r"(\[\s*\{.*?\}\s*\])", text, re.S) + re.findall(r"(\{.*\})", text, re.S)
    for candidate in candidates:
        try:
            calls = json.loads(candidate)
        except ValueError:
            continue
        calls = calls if isinstance(calls, list) else [calls]
        if calls and all(isinstance(c, dict) and c.get("name") in names
                         and jsonschema.Draft202012Validator(FUNCTIONS[c["name"]][1]).is_valid(c.get("arguments"))
                         for c in calls):
            return True
    return False


def json_valid(text: str, schema: dict[str, Any], *, strict: bool) -> bool:
    candidates = [text] if strict else [text, *re.findall(r"(\{.*\})", text, re.S)]
    for candidate in candidates:
        try:
            if jsonschema.Draft202012Validator(schema).is_valid(json.loads(candidate)):
                return True
        except ValueError:
            continue
    return False


# ---- 1. validity -------------------------------------------------------------------------------

async def validity(engine: Engine) -> None:
    forced = {name: {"type": "function", "function": {"name": name}} for name in FUNCTIONS}
    cases = [(f"named {name}", request(p, tools=TOOLS, tool_choice=forced[name]),
              lambda t, s, n=name: calls_valid(t, {n}, strict=s)) for name, p in NAMED]
    cases += [("required", request(p, tools=TOOLS, tool_choice="required"),
               lambda t, s: calls_valid(t, set(FUNCTIONS), strict=s)) for p in REQUIRED]
    cases += [(f"json_schema {name}", request(p, response_format={"type": "json_schema", "json_schema": {
        "name": name, "schema": SCHEMAS[name]}}), lambda t, s, n=name: json_valid(t, SCHEMAS[n], strict=s))
        for name, p in STRUCTURED]
    rows: dict[str, list[int]] = {}
    for label, body, check in cases:
        group = label.split()[0]
        prompt, grammar = build(engine, body)
        constrained = await run(engine, prompt, grammar, MAX_TOKENS)
        free = await run(engine, prompt, None, MAX_TOKENS)
        row = rows.setdefault(group, [0, 0, 0, 0, 0])
        row[0] += 1
        row[1] += check(constrained["text"], True)
        row[2] += constrained["finish"] == "length"
        row[3] += check(free["text"], True)
        row[4] += check(free["text"], False)
    print("\n#### Validity (temperature 0, max_tokens 96)\n")
    print("| replies | n | with grammar: valid | cut by max_tokens | free: valid (strict) | free: (lenient) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")

    def rate(k: int, n: int) -> str:
        return f"{k}/{n} ({100 * k / n:.0f}%)"

    for group, (n, ok, cut, free_strict, free_lenient) in rows.items():
        print(f"| {group} | {n} | {rate(ok, n)} | {cut} | {rate(free_strict, n)} | {rate(free_lenient, n)} |")


# ---- 2. auto mode's decisions ---------------------------------------------------------------------

async def decisions(engine: Engine) -> None:
    right = wrong = abstained = called_anyway = 0
    for name, text in NAMED:
        prompt, grammar = build(engine, request(text, tools=TOOLS))
        out = (await run(engine, prompt, grammar, MAX_TOKENS))["text"]
        if out.startswith("<tool_call>[]"):
            continue
        right += f'"name": "{name}"' in out
        wrong += f'"name": "{name}"' not in out
    for text in NO_TOOL:
        prompt, grammar = build(engine, request(text, tools=TOOLS))
        out = (await run(engine, prompt, grammar, MAX_TOKENS))["text"]
        abstained += out.startswith("<tool_call>[]")
        called_anyway += not out.startswith("<tool_call>[]")
    n = len(NAMED)
    print(f"\n#### Auto mode: the model decides ({len(TOOLS)} tools offered)\n")
    print("| prompts | n | called the right tool | called a wrong tool | no call |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| a tool fits | {n} | {right} | {wrong} | {n - right - wrong} |")
    print(f"| no tool fits | {len(NO_TOOL)} | - | {called_anyway} (any call is wrong) | {abstained} |")


# ---- 3. latency -------------------------------------------------------------------------------

async def latency(engine: Engine, repeats: int, max_other_load: float, attempts: int = 4) -> None:
    modes = {
        "named call (1 tool shown)": request("Book a table for 4 at Luigi's at 19:30.", tools=TOOLS,
                                             tool_choice={"type": "function", "function": {"name": "book_table"}}),
        f"required ({len(TOOLS)} tools)": request("Book a table for 4 at Luigi's at 19:30.", tools=TOOLS,
                                                  tool_choice="required"),
        "json_object": request("Give me a JSON object with your name.", response_format={"type": "json_object"}),
        "json_schema (recipe)": request("Give me a pancake recipe.", response_format={
            "type": "json_schema", "json_schema": {"name": "recipe", "schema": SCHEMAS["recipe"]}}),
    }
    meter = LoadMeter([__import__("os").getpid()])
    print(f"\n#### Latency: with the grammar vs free, same prompt, same token count (median of {repeats})\n")
    print("Three runs of each prompt: the server's grammar (likeliest tokens checked first, "
          "`reference_server/grammar_filter.py`), the same grammar checked against the whole vocabulary "
          "at every step (llama-cpp-python's `grammar=`), and no grammar.\n")
    print("| mode | prompt tokens | tokens | plan (schema to grammar) | TTFT grammar / free | ms per token: "
          "server / whole vocabulary / free | total: server / whole vocabulary / free | added: server / "
          "whole vocabulary | other load |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, body in modes.items():
        plans = []
        for _ in range(20):
            tools._checked_rules.cache_clear()  # the first request with these schemas; later ones hit the cache
            start = time.perf_counter()
            tools.plan(engine, body)
            plans.append(time.perf_counter() - start)
        prompt, grammar = build(engine, body)
        g_runs, v_runs, f_runs, loads = [], [], [], []
        for _ in range(repeats):  # a pair at a time, so a disturbance hits both sides alike
            tried = []
            for _ in range(attempts):  # a neighbour's burst of CPU measures the neighbour: retry
                with meter.measure() as window:
                    g = await run(engine, prompt, grammar, MAX_TOKENS)
                    engine.grammar_prefilter = False
                    try:
                        v = await run(engine, prompt, grammar, MAX_TOKENS)
                    finally:
                        engine.grammar_prefilter = True
                    f = await run(engine, prompt, None, g["tokens"], ban_eog=True)
                tried.append((window.other or 0.0, g, v, f))
                if window.other is None or window.other <= max_other_load:
                    break
            other, g, v, f = min(tried, key=lambda t: t[0])
            g_runs.append(g)
            v_runs.append(v)
            f_runs.append(f)
            loads.append(other)
        assert all(f["tokens"] == g["tokens"] for f, g in zip(f_runs, g_runs))
        assert all(v["text"] == g["text"] for v, g in zip(v_runs, g_runs)), "the prefilter changed the output"

        def med(runs: list[dict[str, Any]], key: str) -> float:
            return statistics.median(r[key] for r in runs)

        def per_token(runs: list[dict[str, Any]]) -> float:
            return statistics.median((r["total"] - r["ttft"]) / max(r["tokens"] - 1, 1) for r in runs) * 1000

        g_total, v_total, f_total = med(g_runs, "total"), med(v_runs, "total"), med(f_runs, "total")
        load = f"{100 * statistics.median(loads):.0f}%"
        print(f"| {label} | {len(prompt)} | {g_runs[0]['tokens']} | {1000 * statistics.median(plans):.1f} ms "
              f"| {med(g_runs, 'ttft'):.3f} / {med(f_runs, 'ttft'):.3f} s | {per_token(g_runs):.1f} / "
              f"{per_token(v_runs):.1f} / {per_token(f_runs):.1f} | {g_total:.2f} / {v_total:.2f} / {f_total:.2f} s "
              f"| {100 * (g_total / f_total - 1):+.0f}% / {100 * (v_total / f_total - 1):+.0f}% | {load} |")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-validity", action="store_true", help="latency only")
    parser.add_argument("--max-other-load", type=float, default=0.15,
                        help="retry a latency pair when other processes took more of the CPU than this")
    args = parser.parse_args()
    engine = Engine(Settings(n_ctx=2048, embeddings=False))
    engine.load()
    print(f"### Grammar overhead: {engine.model_id}, {engine.settings.n_threads} threads")
    if not args.skip_validity:
        await validity(engine)
        await decisions(engine)
    await latency(engine, args.repeats, args.max_other_load)


if __name__ == "__main__":
    asyncio.run(main())
