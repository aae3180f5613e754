"""The batching runner on the real model, without HTTP: slots, chunked prefill, the prefix cache,
n > 1, stop strings, logprobs, grammars, cancellation and the queue bound.

Exact text is compared only where it is promised: the deterministic configuration (one sequence,
no cache, the serial engine's attention kernel) against the serial engine. Batched text is not
compared with text alone: batch shapes change floats (benchmarks/determinism.py measures how often
that changes the text).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import jsonschema
import pytest

from reference_server.backends.base import ChoiceDone, TextDelta, Timings
from reference_server.backends.local import LocalBackend as Engine
from reference_server.backends.local.batching import BatchingRunner
from reference_server.errors import APIError
from reference_server.sampling import SamplingParams

EOG_BAN = {0: float("-inf"), 2: float("-inf"), 4: float("-inf")}  # forces full-length answers


@pytest.fixture(scope="module")
def model(settings) -> Iterator[object]:
    """A llama.cpp model of its own (mmap: the weights' pages are shared with the engine's)."""
    import llama_cpp

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    m = llama_cpp.llama_model_load_from_file(str(settings.model_path).encode(), params)
    assert m
    yield m
    llama_cpp.llama_model_free(m)


@pytest.fixture(scope="module")
def runner(model, settings) -> Iterator[BatchingRunner]:
    r = BatchingRunner(model, parallel=4, n_ctx_slot=1024, n_batch=64, n_threads=settings.n_threads)
    yield r
    r.close()


@dataclass
class Result:
    texts: dict[int, str] = field(default_factory=dict)
    done: dict[int, ChoiceDone] = field(default_factory=dict)
    logprobs: dict[int, list] = field(default_factory=dict)
    timings: Timings | None = None
    arrivals: list[float] = field(default_factory=list)  # perf_counter of every event


async def collect(gen) -> Result:
    out = Result()
    async for e in gen:
        out.arrivals.append(time.perf_counter())
        if isinstance(e, TextDelta):
            out.texts[e.index] = out.texts.get(e.index, "") + e.text
            out.logprobs.setdefault(e.index, []).extend(e.logprobs)
        elif isinstance(e, ChoiceDone):
            out.done[e.index] = e
        elif isinstance(e, Timings):
            out.timings = e
    return out


async def submit_and_collect(runner: BatchingRunner, prompt: list[int], params: SamplingParams) -> Result:
    return await collect(runner.submit(prompt, params))


def chat(engine: Engine, content: str, system: str = "You are a helpful assistant.") -> list[int]:
    return engine.tokenize(engine.render_chat([{"role": "system", "content": system},
                                               {"role": "user", "content": content}]))


QUESTIONS = ["What is the capital of France?", "Name three fruits.", "Write a haiku about the sea.",
             "Who wrote Hamlet?"]


# --8<-- [start:test_deterministic]
def test_deterministic_configuration_matches_the_serial_engine(model, serial_engine, settings):
    """One sequence, no cache, the serial engine's attention kernel: the same text, token for token."""
    r = BatchingRunner(model, parallel=1, n_ctx_slot=1024, n_threads=settings.n_threads,
                       prefix_cache=False, flash_attn=False)
    engine = serial_engine
    cases = [(chat(engine, q), SamplingParams(max_tokens=24, temperature=0)) for q in QUESTIONS[:3]]
    cases.append((chat(engine, "Tell me a story."), SamplingParams(max_tokens=24, temperature=0.8, seed=7)))

    async def go():
        ours = [await collect(r.submit(p, sp)) for p, sp in cases]
        theirs = [await collect(engine.generate(p, sp)) for p, sp in cases]
        return ours, theirs

    try:
        ours, theirs = asyncio.run(go())
    finally:
        r.close()
    assert [o.texts for o in ours] == [t.texts for t in theirs]
    assert all(o.texts[0] for o in ours)
# --8<-- [end:test_deterministic]


def test_concurrent_requests_are_decoded_in_one_batch(runner, engine):
    """Four requests, 16 tokens each: far fewer steps than tokens, and their events interleave."""
    params = SamplingParams(max_tokens=16, temperature=0, logit_bias=EOG_BAN)
    penalised = SamplingParams(max_tokens=16, temperature=0.7, seed=1, logit_bias=EOG_BAN, repeat_penalty=1.3,
                               frequency_penalty=0.5, presence_penalty=0.5)  # each choice its own chain
    before = dict(runner.stats)

    async def go():
        return await asyncio.gather(*(collect(runner.submit(chat(engine, q), penalised if i == 3 else params))
                                      for i, q in enumerate(QUESTIONS)))

    results = asyncio.run(go())
    steps = runner.stats["steps"] - before["steps"]
    tokens = runner.stats["tokens"] - before["tokens"]
    assert [r.done[0].completion_tokens for r in results] == [16] * 4
    assert tokens == 64 and steps < 32, (steps, tokens)  # one at a time would take 64 steps and more
    first_ends = min(r.arrivals[-1] for r in results)
    assert all(r.arrivals[0] < first_ends for r in results)  # everyone had started before anyone ended
    assert all(r.timings and r.timings.prompt_tokens > 0 and r.timings.decode_ms > 0 for r in results)


def test_a_long_prompt_is_read_in_chunks_while_others_keep_decoding(runner, engine):
    """A 600-token prompt takes ten steps of 64; the running answer gets a token at every one of them."""
    short = chat(engine, "Count from one to one hundred.")
    long = chat(engine, "Summarise this. " + "The quick brown fox jumps over the lazy dog. " * 55)
    assert len(long) > 500

    async def go():
        running = runner.submit(short, SamplingParams(max_tokens=40, temperature=0, logit_bias=EOG_BAN))
        first = await running.__anext__()  # it is decoding now
        late = runner.submit(long, SamplingParams(max_tokens=2, temperature=0))
        rest, other = await asyncio.gather(collect(running), collect(late))
        return first, rest, other

    first, rest, other = asyncio.run(go())
    assert isinstance(first, TextDelta)
    during_prefill = sum(t < other.arrivals[0] for t in rest.arrivals)
    assert during_prefill >= (len(long) - 64) // 64, during_prefill
    assert other.timings.prompt_tokens == len(long)


def test_the_prefix_cache_evaluates_only_the_new_turn(runner, engine):
    params = SamplingParams(max_tokens=12, temperature=0)
    turn1 = [{"role": "system", "content": "You are a terse assistant. " * 20},
             {"role": "user", "content": "Name a colour."}]

    async def go():
        first = await collect(runner.submit(engine.tokenize(engine.render_chat(turn1)), params))
        turn2 = turn1 + [{"role": "assistant", "content": first.texts[0]},
                         {"role": "user", "content": "And another one?"}]
        prompt2 = engine.tokenize(engine.render_chat(turn2))
        before = runner.stats["prompt_evaluated"]
        second = await collect(runner.submit(prompt2, params))
        return first, second, prompt2, runner.stats["prompt_evaluated"] - before

    first, second, prompt2, evaluated = asyncio.run(go())
    cached = second.timings.cached_tokens
    assert cached >= first.timings.prompt_tokens, (cached, first.timings)
    assert evaluated == len(prompt2) - cached < 40
    assert second.texts[0]


WORDS = "kiwi, falcon, marble, tundra, velvet, orchid, copper, lagoon, saffron, quartz"


@pytest.mark.parametrize("unified", [False, True], ids=["stream per slot", "one pool"])
def test_a_prefix_held_by_a_busy_slot_is_copied_with_its_cells(runner, engine, model, settings, unified):
    """A prefix another (busy) slot holds is copied: the whole stream and cut (a stream per slot,
    the default), or tagged (``kv_unified``, one pool).

    The prompt is a list the model can only continue if the copied cells hold the list: the
    next word is certain with them, and a guess without them.
    """
    if unified:
        runner = BatchingRunner(model, parallel=4, n_ctx_slot=1024, n_batch=64, n_threads=settings.n_threads,
                                kv_unified=True)
    prefix = f"Code words: {WORDS}. Say them again: {WORDS}. And once more:"
    busy = engine.tokenize(prefix + " no, stop.")
    prompt = engine.tokenize(prefix + " kiwi, falcon, marble, tundra,")
    shared = next(i for i, (a, b) in enumerate(zip(busy, prompt)) if a != b)

    async def go():
        gen = runner.submit(busy, SamplingParams(max_tokens=48, temperature=0, logit_bias=EOG_BAN))
        async for e in gen:  # the busy request is decoding: its slot is taken, its cells hold the prefix
            if isinstance(e, TextDelta):
                break
        copied = await collect(runner.submit(prompt, SamplingParams(max_tokens=1, temperature=0, logprobs=1)))
        await gen.aclose()
        return copied

    try:
        copied = asyncio.run(go())
    finally:
        if unified:
            runner.close()
    assert shared > 40 and copied.timings.cached_tokens == shared, (shared, copied.timings)
    (first,) = copied.logprobs[0]
    assert first.token == " velvet" and first.logprob > -0.5, first


def test_without_the_cache_every_prompt_is_evaluated_whole(model, engine, settings):
    r = BatchingRunner(model, parallel=2, n_ctx_slot=512, n_threads=settings.n_threads, prefix_cache=False)
    prompt = chat(engine, "Name a colour.")

    async def go():
        return [await collect(r.submit(prompt, SamplingParams(max_tokens=4, temperature=0))) for _ in range(2)]

    try:
        results = asyncio.run(go())
    finally:
        r.close()
    assert [x.timings.cached_tokens for x in results] == [0, 0]
    assert r.stats["prompt_evaluated"] == 2 * len(prompt)


def test_n_choices_read_the_prompt_once_and_differ(runner, engine):
    prompt = chat(engine, "Name an animal.", system="You are a zoo keeper with many stories.")
    before = runner.stats["prompt_evaluated"]

    async def go():
        three = await collect(runner.submit(prompt, SamplingParams(max_tokens=8, temperature=1.2, seed=42, n=3)))
        six = await collect(runner.submit(prompt, SamplingParams(max_tokens=8, temperature=1.2, seed=1, n=6)))
        return three, six

    three, six = asyncio.run(go())
    assert runner.stats["prompt_evaluated"] - before <= len(prompt) + 1  # the second request hit the cache
    assert sorted(three.done) == [0, 1, 2] and sorted(six.done) == list(range(6))  # 6 choices on 4 slots
    assert len(set(three.texts.values())) > 1  # seed + index: not copies of each other
    assert six.timings.cached_tokens == len(prompt) - 1  # the first request left the prompt in a slot


def test_stop_strings_and_logprobs(runner, engine):
    prompt = chat(engine, "What is the capital of France?")
    params = SamplingParams(max_tokens=20, temperature=0, stop=("Paris",), logprobs=3)
    result = asyncio.run(submit_and_collect(runner, prompt, params))
    assert "Paris" not in result.texts[0] and result.done[0].finish_reason == "stop"
    entries = result.logprobs[0]
    assert len(entries) == result.done[0].completion_tokens
    for e in entries:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3
        assert e.top_logprobs[0].token == e.token  # greedy: the sampled token is the likeliest
        assert sum(2.718281828 ** t.logprob for t in e.top_logprobs) <= 1.0 + 1e-6
    assert "".join(e.token for e in entries).startswith(result.texts[0].rstrip())


def test_grammar_choices_are_always_valid_json(runner, engine):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    grammar = Engine.grammar_from_json_schema(schema)
    prompt = chat(engine, "Describe a person as JSON.")

    async def go():
        constrained = runner.submit(prompt, SamplingParams(max_tokens=60, temperature=1.0, seed=3, n=2,
                                                           grammar=grammar))
        free = runner.submit(chat(engine, "Tell me a joke."), SamplingParams(max_tokens=30, temperature=1.0))
        return await asyncio.gather(collect(constrained), collect(free))

    constrained, free = asyncio.run(go())
    for i in (0, 1):
        assert constrained.done[i].finish_reason == "stop", constrained.texts[i]
        jsonschema.validate(json.loads(constrained.texts[i]), schema)
    assert free.texts[0]


def test_cancelling_frees_the_slot_at_once(runner, engine):
    prompt = chat(engine, "Tell me a long story.")

    async def go():
        gen = runner.submit(prompt, SamplingParams(max_tokens=500, temperature=0, logit_bias=EOG_BAN))
        for _ in range(3):
            await gen.__anext__()
        before = runner.stats["tokens"]
        await gen.aclose()
        nxt = await collect(runner.submit(prompt, SamplingParams(max_tokens=4, temperature=0)))
        return before, nxt

    cancelled = runner.stats["cancelled"]
    before, nxt = asyncio.run(go())
    assert runner.stats["cancelled"] == cancelled + 1
    assert runner.stats["tokens"] - before <= 4 + 3  # the next request's, and at most a step or two more
    assert nxt.done[0].completion_tokens > 0


def test_a_full_queue_answers_429_before_any_work(model, engine, settings):
    r = BatchingRunner(model, parallel=1, n_ctx_slot=512, n_threads=settings.n_threads, max_queue=1)
    prompt = chat(engine, "Hello")
    params = SamplingParams(max_tokens=6, temperature=0)

    async def go():
        a, b = r.submit(prompt, params), r.submit(prompt, params)
        assert r.queue_depth == 2
        with pytest.raises(APIError) as err:
            r.submit(prompt, params)
        return err.value, await asyncio.gather(collect(a), collect(b))

    try:
        err, (a, b) = asyncio.run(go())
    finally:
        r.close()
    assert err.status == 429
    assert a.done[0].completion_tokens > 0 and b.done[0].completion_tokens > 0
    assert r.queue_depth == 0


def test_checking_the_sampled_token_first_gives_the_tokens_of_the_full_grammar(model, engine, settings):
    """At temperature 0, sampling first and checking that one token picks what masking the whole
    vocabulary first picks, and the whole vocabulary is masked only on the few rejected steps."""
    r = BatchingRunner(model, parallel=1, n_ctx_slot=1024, n_threads=settings.n_threads, prefix_cache=False)
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"]}
    prompt = chat(engine, "Describe Paris as a JSON object with its population.")
    params = SamplingParams(max_tokens=48, temperature=0, grammar=Engine.grammar_from_json_schema(schema))

    try:
        r.grammar_prefilter = False
        full = asyncio.run(submit_and_collect(r, prompt, params))
        r.grammar_prefilter = True
        before = dict(r.stats)
        fast = asyncio.run(submit_and_collect(r, prompt, params))
    finally:
        r.close()
    assert fast.texts == full.texts
    jsonschema.validate(json.loads(fast.texts[0]), schema)
    resampled = r.stats["grammar_resampled"] - before["grammar_resampled"]
    assert 0 <= resampled < fast.done[0].completion_tokens / 2, resampled
