"""The reference server driven by the official ``openai`` client, as a user would drive OpenAI.

Exact text is asserted only where it is deterministic (temperature 0, or a fixed seed) and
compared with another run of the same model, never with hand-written prose.
"""

from __future__ import annotations

import asyncio
import base64
import math
import uuid

import numpy as np
import openai
import pytest

from conftest import EOG_TOKENS, MODEL

HELLO = [{"role": "user", "content": "Say hello in five words."}]
NO_EOG = {str(t): -100 for t in EOG_TOKENS}


def test_list_and_retrieve_models(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    model = client.models.retrieve(MODEL)
    assert model.object == "model" and model.created > 0 and model.owned_by


def test_retrieve_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("gpt-4o")
    assert err.value.body["code"] == "model_not_found"


def test_chat_completion_shape_and_usage(client):
    r = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=24, temperature=0)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == MODEL
    choice = r.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_max_tokens_gives_length_and_exact_count(client):
    r = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=7, logit_bias=NO_EOG)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 7


def test_max_completion_tokens_is_honoured(client):
    r = client.chat.completions.create(model=MODEL, messages=HELLO, max_completion_tokens=5, logit_bias=NO_EOG)
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"


def test_text_part_array_content_equals_string_content(client):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Say hello "},
                                          {"type": "text", "text": "in five words."}]}]
    a = client.chat.completions.create(model=MODEL, messages=parts, max_tokens=16, temperature=0)
    b = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=16, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens


def test_all_roles_are_accepted(client):
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "developer", "content": "Answer in English."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Name a colour."}]
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
    assert r.choices[0].message.content is not None


def test_temperature_zero_ignores_a_warm_prompt_cache(client):
    """Same request, same text, whether or not another request ran in between."""
    ask = dict(model=MODEL, messages=[{"role": "user", "content": "Write one sentence about rivers."}],
               max_tokens=24, temperature=0)
    first = client.chat.completions.create(**ask).choices[0].message.content
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Write one sentence about"}],
                                   max_tokens=3, temperature=0)
    again = client.chat.completions.create(**ask).choices[0].message.content
    assert first == again


def test_usage_reports_the_prompt_tokens_the_prefix_cache_supplied(client):
    """OpenAI's ``usage.prompt_tokens_details.cached_tokens``: a chat's next turn reuses the history's cells."""
    history = [{"role": "system", "content": f"Conversation {uuid.uuid4().hex}: you answer briefly."},
               {"role": "user", "content": "Name a large river in Europe."}]
    first = client.chat.completions.create(model=MODEL, messages=history, max_tokens=12, temperature=0)
    assert first.usage.prompt_tokens_details.cached_tokens < 8  # a new system prompt: nothing to reuse
    history += [{"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": "And one in Africa?"}]
    stream = client.chat.completions.create(model=MODEL, messages=history, max_tokens=4, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    (last,) = [chunk for chunk in stream if chunk.usage is not None]
    cached = last.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens <= cached < last.usage.prompt_tokens, (cached, first.usage, last.usage)


def test_seed_makes_sampling_reproducible(client):
    ask = dict(model=MODEL, messages=[{"role": "user", "content": "Invent a name for a cat."}],
               max_tokens=16, temperature=1.0, seed=1234)
    a = client.chat.completions.create(**ask).choices[0].message.content
    client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, temperature=1.0, seed=9)
    b = client.chat.completions.create(**ask).choices[0].message.content
    assert a == b


def test_n_choices(client):
    r = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, n=3, seed=7, temperature=1.0)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.message.content is not None for c in r.choices)
    assert 3 <= r.usage.completion_tokens <= 18  # summed over the choices; the prompt counts once


def test_stop_sequence_cuts_before_the_stop(client):
    base = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=24, temperature=0)
    text = base.choices[0].message.content
    words = text.split()
    assert len(words) >= 3, text
    stop = words[2]
    r = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=24, temperature=0, stop=[stop, "zzz"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == text[: text.index(stop)]


def test_penalties_bias_and_extensions_are_accepted(client):
    r = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=8, temperature=0.7, top_p=0.9, presence_penalty=0.5,
        frequency_penalty=0.5, user="user-1", extra_body={"top_k": 20, "min_p": 0.1, "repeat_penalty": 1.1})
    assert r.choices[0].message.content is not None


def test_logit_bias_forces_a_token(client):
    """+100 on one token makes it the only likely choice: a deterministic way to test logit_bias."""
    r = client.completions.create(model=MODEL, prompt="Hello", max_tokens=3, temperature=0,
                                  logit_bias={"45": 100})  # token 45 is "="
    assert r.choices[0].text == "==="


def test_logprobs(client):
    r = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5, temperature=0,
                                       logprobs=True, top_logprobs=3, logit_bias=NO_EOG)
    content = r.choices[0].logprobs.content
    assert len(content) == 5
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].logprob >= t.logprob - 1e-6  # greedy picked the best token


def test_async_client(serial_running):
    """Three at once from the async client; on the --deterministic server, so their text is equal
    (batched together, temperature 0 can still differ: chapter 8, determinism)."""
    aclient = openai.AsyncOpenAI(base_url=serial_running.base_url, api_key="not-needed", max_retries=0, timeout=120)

    async def go():
        return await asyncio.gather(*[
            aclient.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, temperature=0)
            for _ in range(3)])
    replies = asyncio.run(go())
    assert len({r.id for r in replies}) == 3
    assert len({r.choices[0].message.content for r in replies}) == 1


def test_streaming_matches_non_streaming(serial_client):
    """Text compared across two requests: the deterministic server (a cache hit changes floats)."""
    ask = dict(model=MODEL, messages=HELLO, max_tokens=24, temperature=0, seed=1)
    whole = serial_client.chat.completions.create(**ask)
    chunks = list(serial_client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == whole.choices[0].finish_reason
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert len({c.id for c in chunks}) == 1


def test_streaming_without_usage_has_no_usage_chunk(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, stream=True))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


def test_async_streaming(aclient):
    async def go():
        stream = await aclient.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, stream=True,
                                                       temperature=0)
        return [c async for c in stream]
    chunks = asyncio.run(go())
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason


def test_legacy_completion(client):
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].text and r.usage.completion_tokens <= 6
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_legacy_completion_default_max_tokens_is_16(client):
    r = client.completions.create(model=MODEL, prompt="Once upon a time", logit_bias=NO_EOG)
    assert r.usage.completion_tokens == 16 and r.choices[0].finish_reason == "length"


def test_legacy_completion_prompt_forms(client):
    text = client.completions.create(model=MODEL, prompt="One, two,", max_tokens=4, temperature=0)
    tokens = client.completions.create(model=MODEL, prompt=[2705, 28, 827, 28], max_tokens=4, temperature=0)
    several = client.completions.create(model=MODEL, prompt=["One, two,", "Red, green,"], max_tokens=4,
                                        temperature=0, n=2)
    assert tokens.usage.prompt_tokens == 4 and tokens.choices[0].text
    assert [c.index for c in several.choices] == [0, 1, 2, 3]
    assert several.choices[0].text == text.choices[0].text


def test_legacy_completion_echo_and_stream(client):
    echoed = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=4, temperature=0, echo=True)
    assert echoed.choices[0].text.startswith("Hello there")
    plain = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=4, temperature=0)
    chunks = list(client.completions.create(model=MODEL, prompt="Hello there", max_tokens=4, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason


def test_embeddings_float_and_base64(client):
    sentences = ["The cat sat on the mat.", "A kitten rested on the rug.", "Stock markets fell sharply."]
    r = client.embeddings.create(model=MODEL, input=sentences)
    assert [d.index for d in r.data] == [0, 1, 2]
    vectors = np.array([d.embedding for d in r.data])
    assert vectors.shape == (3, 576)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert r.usage.prompt_tokens == r.usage.total_tokens > 0
    b64 = client.embeddings.create(model=MODEL, input=sentences[0], encoding_format="base64")
    # the SDK decodes base64 itself when it asked for it; decode the raw string to check the encoding
    raw = b64.data[0].embedding
    decoded = np.frombuffer(base64.b64decode(raw), dtype="<f4") if isinstance(raw, str) else np.array(raw)
    assert np.allclose(decoded, vectors[0], atol=1e-6)


def test_embeddings_from_token_ids_and_one_vector_per_input(client):
    one = client.embeddings.create(model=MODEL, input="hello world")
    ids = client.embeddings.create(model=MODEL, input=[[28120, 905]])
    assert len(one.data) == 1 and len(one.data[0].embedding) == 576  # mean pooled, not one per token
    assert ids.usage.prompt_tokens == 2 and len(ids.data[0].embedding) == 576


def test_embedding_similarity_is_meaningful(client):
    r = client.embeddings.create(model=MODEL, input=["I love dogs", "I adore puppies", "Quarterly tax filing deadline"])
    v = [np.array(d.embedding) for d in r.data]
    cos = lambda a, b: float(a @ b)  # noqa: E731  (vectors are unit length)
    assert cos(v[0], v[1]) > cos(v[0], v[2])
    assert math.isfinite(cos(v[0], v[1]))
