"""The engine seam on its own: queueing, cancellation, determinism (real model, no HTTP)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from reference_server.backends.base import ChoiceDone, TextDelta, Timings
from reference_server.backends.local import LocalBackend as Engine
from reference_server.errors import APIError
from reference_server.sampling import SamplingParams


def test_a_dropped_handle_frees_its_place_in_the_queue(settings):
    """A client that leaves before its stream starts must not hold a queue slot forever."""
    engine = Engine(settings.model_copy(update={"max_queue": 0, "embeddings": False}))
    engine.load()
    prompt = engine.tokenize("Hello")

    async def go():
        for _ in range(5):  # with a leak, the second round would already be refused
            handle = engine.generate(prompt, SamplingParams(max_tokens=50, temperature=0))
            del handle
            gc.collect()
            while engine.queue_depth:
                await asyncio.sleep(0.01)
        events = [e async for e in engine.generate(prompt, SamplingParams(max_tokens=3, temperature=0))]
        return events

    events = asyncio.run(go())
    assert isinstance(events[-2], ChoiceDone) and events[-2].completion_tokens <= 3
    assert isinstance(events[-1], Timings) and events[-1].prompt_tokens == len(prompt)
    assert engine.stats["cancelled"] >= 5


def test_queue_bound_is_enforced_before_any_work(settings):
    engine = Engine(settings.model_copy(update={"max_queue": 1, "embeddings": False, "parallel": 1}))
    engine.load()
    prompt = engine.tokenize("Hello")

    async def go():
        a = engine.generate(prompt, SamplingParams(max_tokens=20, temperature=0))
        b = engine.generate(prompt, SamplingParams(max_tokens=20, temperature=0))
        with pytest.raises(APIError) as err:
            engine.generate(prompt, SamplingParams(max_tokens=20, temperature=0))
        texts = ["".join([e.text async for e in h if isinstance(e, TextDelta)]) for h in (a, b)]
        return err.value, texts

    err, (first, second) = asyncio.run(go())
    assert err.status == 429 and first == second


def test_n_choices_with_a_seed_differ_but_repeat(serial_engine):
    """Exact repeats are the deterministic configuration's promise (the batching runner's is best effort)."""
    engine = serial_engine
    prompt = engine.tokenize(engine.render_chat([{"role": "user", "content": "Name an animal."}]))
    params = SamplingParams(max_tokens=8, temperature=1.2, seed=42, n=3)

    async def run():
        out = ["", "", ""]
        async for e in engine.generate(prompt, params):
            if isinstance(e, TextDelta):
                out[e.index] += e.text
        return out

    first, again = asyncio.run(run()), asyncio.run(run())
    assert first == again
    assert len(set(first)) > 1  # seed + index: the choices are not copies of each other
