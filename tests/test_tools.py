"""Tool calling and structured outputs (reference_server/tools.py, grammars.py) with the real model.

The promise under test is the grammar's: a forced call, a json_schema reply, always parses and
validates, whatever the model would have preferred to write. What the model decides in
``auto`` mode is not asserted, only that every reply has one of the two valid shapes.
Temperature 0 everywhere, so a failure reproduces.
"""

from __future__ import annotations

import json
import random
import re

import jsonschema
import openai
import pytest

from conftest import MODEL
from reference_server.backends.base import TextDelta, ToolCallDelta
from reference_server.backends.local import grammars, tools
from reference_server.backends.local import LocalBackend as Engine
from reference_server.backends.local.grammars import UnsupportedSchema, integer_range, number_range, schema_rules

FUNCTIONS = {
    "get_weather": ("Get the current weather in a city", {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40},
                       "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}),
    "book_table": ("Book a table at a restaurant", {
        "type": "object",
        "properties": {"restaurant": {"type": "string", "maxLength": 40},
                       "people": {"type": "integer", "minimum": 1, "maximum": 12},
                       "time": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"}},
        "required": ["restaurant", "people"]}),
    "create_event": ("Create a calendar event", {
        "type": "object",
        "properties": {"title": {"type": "string", "maxLength": 40},
                       "attendees": {"type": "array", "items": {"type": "string", "maxLength": 20},
                                     "minItems": 1, "maxItems": 4},
                       "location": {"type": "object",
                                    "properties": {"city": {"type": "string", "maxLength": 30},
                                                   "room": {"type": "integer", "minimum": 1, "maximum": 500}},
                                    "required": ["city"]}},
        "required": ["title", "attendees"]}),
    "set_thermostat": ("Set the home thermostat", {
        "type": "object",
        "properties": {"temperature": {"type": "number", "minimum": 10, "maximum": 30},
                       "mode": {"type": "string", "enum": ["heat", "cool", "auto"]}},
        "required": ["temperature", "mode"]}),
    "convert_currency": ("Convert an amount of money between currencies", {
        "type": "object",
        "properties": {"amount": {"type": "number", "minimum": 0},
                       "from": {"type": "string", "pattern": "^[A-Z]{3}$"},
                       "to": {"type": "string", "pattern": "^[A-Z]{3}$"}},
        "required": ["amount", "from", "to"]}),
    "search_flights": ("Search for flights", {
        "type": "object",
        "properties": {"origin": {"type": "string", "pattern": "^[A-Z]{3}$"},
                       "destination": {"type": "string", "pattern": "^[A-Z]{3}$"},
                       "passengers": {"type": "object",
                                      "properties": {"adults": {"type": "integer", "minimum": 1, "maximum": 9},
                                                     "children": {"type": "integer", "minimum": 0, "maximum": 9}},
                                      "required": ["adults"]},
                       "cabin": {"type": ["string", "null"], "enum": ["economy", "business", None]}},
        "required": ["origin", "destination", "passengers"]}),
}
TOOLS = [{"type": "function", "function": {"name": name, "description": description, "parameters": params}}
         for name, (description, params) in FUNCTIONS.items()]

NAMED = [
    ("get_weather", "What's the weather in Paris?"),
    ("get_weather", "Is it raining in Tokyo right now? Answer in fahrenheit."),
    ("get_weather", "Do I need a coat in Oslo today?"),
    ("book_table", "Book a table for 4 at Luigi's at 19:30."),
    ("book_table", "Reserve a table for two at Sushi Zen."),
    ("book_table", "We are a group of 11, find us a table at The Grill tonight at 20:00."),
    ("create_event", "Schedule a meeting called Budget review with Alice and Bob in Berlin."),
    ("create_event", "Create an event 'Team lunch' with Carol, room 12 in Madrid."),
    ("create_event", "Put a dentist appointment in my calendar with Dr Smith."),
    ("set_thermostat", "Set the heating to 21 degrees."),
    ("set_thermostat", "Cool the house down to 18."),
    ("set_thermostat", "It's too hot in here, put the AC on automatic at 24."),
    ("convert_currency", "How much is 100 USD in EUR?"),
    ("convert_currency", "Convert 250 euros to Japanese yen."),
    ("convert_currency", "What are 3.5 British pounds in Swiss francs?"),
    ("search_flights", "Find flights from LHR to JFK for 2 adults."),
    ("search_flights", "I want to fly from Paris CDG to Rome FCO with my wife and 3 kids, business class."),
]
REQUIRED = [
    "What's the weather in Lisbon?",
    "Book a table for 3 at Chez Marie.",
    "Warm the living room up to 22 degrees.",
    "Convert 40 dollars to pounds.",
    "Invite Dana and Eli to a planning session in Paris.",
    "Tell me a joke.",  # no tool fits: a call is still required, and still valid
]

SCHEMAS = {
    "person": {"type": "object",
               "properties": {"name": {"type": "string", "maxLength": 30},
                              "age": {"type": "integer", "minimum": 0, "maximum": 120},
                              "email": {"type": "string", "maxLength": 40}},
               "required": ["name", "age"], "additionalProperties": False},
    "recipe": {"type": "object",
               "properties": {"title": {"type": "string", "maxLength": 40},
                              "ingredients": {"type": "array", "items": {"type": "string", "maxLength": 20},
                                              "minItems": 1, "maxItems": 5},
                              "minutes": {"type": "integer", "minimum": 1, "maximum": 600},
                              "vegetarian": {"type": "boolean"}},
               "required": ["title", "ingredients", "minutes", "vegetarian"]},
    "review": {"type": "object",
               "properties": {"rating": {"type": "integer", "minimum": 1, "maximum": 5},
                              "sentiment": {"enum": ["positive", "neutral", "negative"]},
                              "summary": {"type": "string", "maxLength": 60}},
               "required": ["rating", "sentiment", "summary"]},
    "city": {"type": "object",
             "properties": {"city": {"type": "string", "maxLength": 30},
                            "country": {"type": "string", "maxLength": 30},
                            "population": {"type": "integer", "minimum": 0},
                            "coordinates": {"$ref": "#/$defs/point"}},
             "required": ["city", "country", "population"],
             "$defs": {"point": {"type": "object",
                                 "properties": {"lat": {"type": "number", "minimum": -90, "maximum": 90},
                                                "lon": {"type": "number", "minimum": -180, "maximum": 180}},
                                 "required": ["lat", "lon"]}}},
    "todo": {"type": "object",
             "properties": {"task": {"type": "string", "maxLength": 40},
                            "priority": {"type": "string", "enum": ["low", "medium", "high"]},
                            "done": {"type": "boolean"},
                            "due": {"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}]}},
             "required": ["task", "priority", "done", "due"]},
}
STRUCTURED = [
    ("person", "Invent a person."), ("person", "Describe Ada Lovelace."),
    ("person", "Make up a teenager with an email address."), ("person", "Who is the oldest person you know?"),
    ("recipe", "Give me a pancake recipe."), ("recipe", "A quick vegetarian pasta, please."),
    ("review", "Review: the hotel room was clean and quiet."),
    ("recipe", "How do I make a steak?"), ("recipe", "A salad recipe."),
    ("review", "Review: the food was cold and the waiter rude."), ("review", "Review: best pizza in town!"),
    ("review", "Review: it was okay, nothing special."), ("review", "Review this phone: battery lasts two days."),
    ("city", "Tell me about Paris."), ("city", "Facts about Tokyo."),
    ("city", "Describe a small village in Norway."), ("city", "Where is Nairobi?"),
    ("todo", "Remind me to buy milk."), ("todo", "Urgent: file the taxes by 2025-04-15."),
    ("todo", "I already walked the dog."), ("todo", "Someday, learn the piano."),
]

WEATHER = [TOOLS[0]]


def schema_of(name: str) -> dict:
    return FUNCTIONS[name][1]


def ask(client: openai.OpenAI, prompt: str, **kwargs):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                          temperature=0, **kwargs)


def assert_valid_calls(choice, names: set[str] | None = None) -> list:
    """The reply is tool calls only, each with valid arguments for its function."""
    message = choice.message
    assert choice.finish_reason == "tool_calls", (choice.finish_reason, message)
    assert message.content is None and message.tool_calls
    for call in message.tool_calls:
        assert call.type == "function" and re.fullmatch(r"call_[0-9a-f]{24}", call.id)
        assert call.function.name in (names or FUNCTIONS)
        jsonschema.validate(json.loads(call.function.arguments), schema_of(call.function.name))
    assert len({call.id for call in message.tool_calls}) == len(message.tool_calls)
    return message.tool_calls


# ---- forced calls: every one parses and validates ----------------------------------------------

@pytest.mark.parametrize("name,prompt", NAMED, ids=[f"{n}-{i}" for i, (n, _) in enumerate(NAMED)])
def test_named_tool_choice_always_validates(client, name, prompt):
    r = ask(client, prompt, tools=TOOLS, tool_choice={"type": "function", "function": {"name": name}},
            max_tokens=96)
    calls = assert_valid_calls(r.choices[0], {name})
    assert len(calls) == 1


@pytest.mark.parametrize("prompt", REQUIRED)
def test_required_tool_choice_always_validates(client, prompt):
    r = ask(client, prompt, tools=TOOLS, tool_choice="required", max_tokens=96)
    assert_valid_calls(r.choices[0])


@pytest.mark.parametrize("prompt", ["What time is it in Tokyo?", "What's the weather in Paris?"])
def test_allowed_tools_required_calls_only_the_allowed(client, prompt):
    """tool_choice allowed_tools: the full list is declared, only a subset may be called."""
    allowed = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
        {"type": "function", "function": {"name": "book_table"}}]}}
    r = ask(client, prompt, tools=TOOLS, tool_choice=allowed, max_tokens=96)
    assert {call.function.name for call in assert_valid_calls(r.choices[0])} == {"book_table"}


def test_allowed_tools_auto_calls_nothing_else(client):
    allowed = {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [
        {"type": "function", "function": {"name": "get_weather"}}]}}
    choice = ask(client, "Book a table for two at Luigi's.", tools=TOOLS, tool_choice=allowed,
                 parallel_tool_calls=False, max_tokens=96).choices[0]
    if choice.message.tool_calls:
        assert_valid_calls(choice, {"get_weather"})
    else:
        assert choice.message.content and choice.finish_reason in ("stop", "length")


def test_parallel_tool_calls_false_means_exactly_one_call(client):
    r = ask(client, "Weather in Rome and in Milan?", tools=WEATHER, tool_choice="required",
            parallel_tool_calls=False, max_tokens=96)
    assert len(assert_valid_calls(r.choices[0], {"get_weather"})) == 1


def test_parallel_tool_calls_true_is_accepted(client):
    r = ask(client, "What's the weather in Rome?", tools=WEATHER, tool_choice="required",
            parallel_tool_calls=True, max_tokens=96)
    assert 1 <= len(assert_valid_calls(r.choices[0], {"get_weather"})) <= tools.MAX_PARALLEL_CALLS


def test_budget_cut_mid_call_says_length(client):
    r = ask(client, "What's the weather in Paris?", tools=WEATHER, tool_choice="required", max_tokens=12)
    choice = r.choices[0]
    assert choice.finish_reason == "length" and r.usage.completion_tokens == 12
    for call in choice.message.tool_calls or []:  # started calls are shown, their arguments cut
        assert call.function.name == "get_weather"


# ---- auto and none -------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt", ["What's the weather in Paris?", "Who wrote Hamlet?"])
def test_auto_replies_with_valid_calls_or_text(serial_client, prompt):
    """The model's own greedy path must end its call within 64 tokens: a --deterministic server, whose
    text is the one recorded (on the batching server this model repeats the call until the budget ends)."""
    choice = ask(serial_client, prompt, tools=TOOLS[:2], max_tokens=64).choices[0]
    if choice.message.tool_calls:
        assert_valid_calls(choice)
    else:
        assert isinstance(choice.message.content, str) and choice.message.content
        assert choice.finish_reason in ("stop", "length")


def test_none_never_calls(client):
    choice = ask(client, "What's the weather in Paris?", tools=TOOLS, tool_choice="none", max_tokens=32).choices[0]
    assert choice.message.tool_calls is None and isinstance(choice.message.content, str)


def test_auto_with_response_format_answers_in_json(client):
    schema = SCHEMAS["person"]
    choice = ask(client, "Invent a person.", tools=WEATHER, max_tokens=96,
                 response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
                 ).choices[0]
    if choice.message.tool_calls:
        assert_valid_calls(choice, {"get_weather"})
    else:
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_two_turn_tool_loop(client):
    messages = [{"role": "user", "content": "What's the weather in Paris?"}]
    first = ask(client, messages[0]["content"], tools=WEATHER, max_tokens=64)
    (call,) = assert_valid_calls(first.choices[0], {"get_weather"})
    assert json.loads(call.function.arguments)["city"]
    result = {"city": "Paris", "temperature_c": 18, "sky": "sunny"}  # the client runs the tool
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)}]
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=WEATHER, max_tokens=64,
                                            temperature=0)
    choice = second.choices[0]
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    assert choice.message.content.strip()


# ---- structured outputs --------------------------------------------------------------------------

@pytest.mark.parametrize("name,prompt", STRUCTURED, ids=[f"{n}-{i}" for i, (n, _) in enumerate(STRUCTURED)])
def test_json_schema_always_validates(client, name, prompt):
    fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": True}}
    choice = ask(client, prompt, response_format=fmt, max_tokens=96).choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    jsonschema.validate(json.loads(choice.message.content), SCHEMAS[name])


@pytest.mark.parametrize("prompt", ["Give me a JSON object with your name.",
                                    "Return a JSON object with keys city and country for Paris.",
                                    "Describe a cat as a JSON object with a name and an age."])
def test_json_object_parses(client, prompt):
    choice = ask(client, prompt, response_format={"type": "json_object"}, max_tokens=96).choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    assert isinstance(json.loads(choice.message.content), dict)


def test_text_format_is_plain_chat(serial_client):
    client = serial_client  # two requests compared token for token
    plain = ask(client, "Say hi.", max_tokens=16)
    text = ask(client, "Say hi.", max_tokens=16, response_format={"type": "text"})
    assert text.choices[0].message.content == plain.choices[0].message.content


# ---- the grammar prefilter: cheaper, and the same tokens ----------------------------------------

def _generate_both_ways(engine: Engine, body: dict, params: dict) -> tuple[str, str, dict]:
    """The same request with the prefilter off and on; returns both texts and the step counts."""
    import asyncio

    from reference_server.backends.base import TextDelta
    from reference_server.protocol import CreateChatCompletionRequest
    from reference_server.backends.local.prompts import template_messages
    from reference_server.sampling import SamplingParams

    request = CreateChatCompletionRequest(model=MODEL, **body)
    plan = tools.plan(engine, request)
    prompt = engine.tokenize(engine.render_chat(template_messages(request, plan.instructions)))

    async def text() -> str:
        out = ""
        async for event in engine.generate(prompt, SamplingParams(grammar=plan.grammar, **params)):
            out += event.text if isinstance(event, TextDelta) else ""
        return out

    before = dict(engine.stats)
    try:
        engine.grammar_prefilter = False
        full = asyncio.run(text())
        engine.grammar_prefilter = True
        fast = asyncio.run(text())
    finally:
        engine.grammar_prefilter = True
    steps = {k: engine.stats[k] - before[k] for k in ("grammar_steps_top", "grammar_steps_full")}
    return full, fast, steps


PREFILTER_CASES = [
    {"messages": [{"role": "user", "content": "Book a table for 4 at Luigi's at 19:30."}], "tools": TOOLS,
     "tool_choice": "required"},
    {"messages": [{"role": "user", "content": "Tell me about Paris."}],
     "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMAS["city"]}}},
    {"messages": [{"role": "user", "content": "Describe a cat as a JSON object."}],
     "response_format": {"type": "json_object"}},
]


@pytest.mark.parametrize("body", PREFILTER_CASES, ids=["required", "json_schema", "json_object"])
@pytest.mark.parametrize("params", [{"temperature": 0.0}, {"temperature": 1.0, "seed": 7}], ids=["greedy", "seeded"])
def test_grammar_prefilter_changes_nothing_but_the_work(serial_engine, body, params):
    """Checking the likeliest tokens first must give the very tokens the full check gives.

    The serial runner's prefilter (grammar_filter.py); the batching runner's check of the sampled
    token is tested in test_batching.py.
    """
    full, fast, steps = _generate_both_ways(serial_engine, body, {"max_tokens": 64, **params})
    assert fast == full
    assert steps["grammar_steps_top"] > steps["grammar_steps_full"] >= 0  # the shortcut was taken


def test_grammar_prefilter_rules():
    """When checking only the K likeliest tokens is known to pick what the full check picks."""
    import numpy as np

    from reference_server.backends.local.grammar_filter import K, same_choice
    from reference_server.sampling import SamplingParams

    logits = np.linspace(10.0, 0.0, K).astype(np.single)  # the K likeliest, best first
    one = np.zeros(K, bool)
    one[-1] = True  # only the least likely of the K is legal
    many = np.ones(K, bool)
    assert same_choice(SamplingParams(max_tokens=1, temperature=0.0), logits, one)  # greedy: any legal one
    assert same_choice(SamplingParams(max_tokens=1, top_k=40, top_p=0.9), logits, many)  # 40 legal: top-k
    # min_p: outside tokens (logit <= 0) are cut only if the best legal logit is > -log(min_p) above them
    assert not same_choice(SamplingParams(max_tokens=1, top_p=1.0, min_p=0.05), logits, one)
    best = np.zeros(K, bool)
    best[0] = True
    assert same_choice(SamplingParams(max_tokens=1, top_p=1.0, min_p=0.05), logits, best)
    assert not same_choice(SamplingParams(max_tokens=1, top_p=0.9, min_p=0.05), logits, best)  # top_p renormalises
    assert not same_choice(SamplingParams(max_tokens=1, top_p=1.0, min_p=0.0, top_k=0), logits, best)


# ---- streaming -----------------------------------------------------------------------------------

def stream_calls(client, prompt: str, **kwargs) -> tuple[dict[int, dict], list[str]]:
    """Reassembles streamed calls; each call's ``pieces`` counts the deltas its arguments came in."""
    calls: dict[int, dict] = {}
    finishes = []
    for chunk in ask(client, prompt, stream=True, **kwargs):
        for choice in chunk.choices:
            for piece in choice.delta.tool_calls or []:
                if piece.index not in calls:  # the first delta of a call carries id, type and name
                    assert piece.id and piece.type == "function" and piece.function.name
                    calls[piece.index] = {"id": piece.id, "name": piece.function.name, "arguments": "",
                                          "pieces": 0}
                else:
                    assert piece.id is None and piece.type is None and piece.function.name is None
                calls[piece.index]["arguments"] += piece.function.arguments
                calls[piece.index]["pieces"] += 1
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    return calls, finishes


@pytest.mark.parametrize("choice,prompt", [
    ({"type": "function", "function": {"name": "create_event"}}, "Plan a kickoff with Ann and Ben in Lyon."),
    ({"type": "function", "function": {"name": "search_flights"}}, "Flights from SFO to NRT for one adult."),
    ("required", "Book a table for 4 at Luigi's at 19:30."),
])
def test_streamed_tool_calls_reassemble(client, choice, prompt):
    calls, finishes = stream_calls(client, prompt, tools=TOOLS, tool_choice=choice, max_tokens=96)
    assert finishes == ["tool_calls"] and sorted(calls) == list(range(len(calls))) and calls
    for call in calls.values():
        jsonschema.validate(json.loads(call["arguments"]), schema_of(call["name"]))
        assert call["pieces"] > 3  # streamed as generated, not in one block at the end


def test_streamed_and_whole_calls_agree(serial_client):
    """Two requests compared token for token: a --deterministic server (batching may change floats)."""
    client = serial_client
    prompt, choice = "Set the heating to 21 degrees.", {"type": "function", "function": {"name": "set_thermostat"}}
    calls, _ = stream_calls(client, prompt, tools=TOOLS, tool_choice=choice, max_tokens=64)
    whole = ask(client, prompt, tools=TOOLS, tool_choice=choice, max_tokens=64).choices[0].message.tool_calls
    assert [(c.function.name, c.function.arguments) for c in whole] == \
        [(c["name"], c["arguments"]) for c in calls.values()]  # one scanner reads both


def test_streamed_json_schema_reassembles(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "recipe", "schema": SCHEMAS["recipe"]}}
    text, finishes = "", []
    for chunk in ask(client, "Give me a pancake recipe.", stream=True, response_format=fmt, max_tokens=96):
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finishes += [choice.finish_reason] if choice.finish_reason else []
    assert finishes == ["stop"]
    jsonschema.validate(json.loads(text), SCHEMAS["recipe"])


def test_streamed_auto_answer_is_content(client):
    chunks = list(ask(client, "Who wrote Hamlet?", stream=True, tools=WEATHER, max_tokens=24))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    if not any(d.tool_calls for d in deltas):
        assert "".join(d.content or "" for d in deltas).strip()


# ---- bad input: 400 in OpenAI's envelope, with the param -----------------------------------------

def tool(parameters) -> list[dict]:
    return [{"type": "function", "function": {"name": "f", "parameters": parameters}}]


HI = [{"role": "user", "content": "Hi"}]
CALLED = [{"role": "user", "content": "Weather?"},
          {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                                "function": {"name": "get_weather", "arguments": "{}"}}]}]
BAD = {
    "parameters not an object schema": ({"tools": tool({"type": "array"})}, "tools[0].function.parameters"),
    "parameters not a JSON Schema": ({"tools": tool({"type": "object", "properties": 5})},
                                     "tools[0].function.parameters"),
    "unsupported keyword in parameters": ({"tools": WEATHER + tool({"type": "object", "properties": {
        "tags": {"type": "array", "uniqueItems": True}}})}, "tools[1].function.parameters"),
    "converter refuses (remote $ref)": ({"tools": tool({"type": "object", "properties": {
        "x": {"$ref": "https://example.com/x.json"}}})}, "tools[0].function.parameters"),
    "fractional number bound": ({"tools": tool({"type": "object", "properties": {
        "p": {"type": "number", "minimum": 0.5}}})}, "tools[0].function.parameters"),
    "duplicate function name": ({"tools": WEATHER + WEATHER}, "tools[1].function.name"),
    "tool_choice names an unknown function": ({"tools": WEATHER, "tool_choice": {
        "type": "function", "function": {"name": "get_time"}}}, "tool_choice"),
    "tool_choice without tools": ({"tool_choice": "required"}, "tool_choice"),
    "allowed_tools names an unknown function": ({"tools": WEATHER, "tool_choice": {
        "type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
            {"type": "function", "function": {"name": "get_time"}}]}}},
        "tool_choice.allowed_tools.tools[0].function.name"),
    "allowed_tools with an unknown mode": ({"tools": WEATHER, "tool_choice": {
        "type": "allowed_tools", "allowed_tools": {"mode": "sometimes", "tools": [
            {"type": "function", "function": {"name": "get_weather"}}]}}}, "tool_choice.allowed_tools.mode"),
    "tool_choice of an unknown type": ({"tools": WEATHER, "tool_choice": {"type": "bogus"}}, "tool_choice.type"),
    "tool_choice object without a type": ({"tools": WEATHER, "tool_choice": {"function": {"name": "get_weather"}}},
                                          "tool_choice.type"),
    "custom tool_choice": ({"tools": WEATHER, "tool_choice": {"type": "custom", "custom": {"name": "x"}}},
                           "tool_choice.type"),
    "tool message without tool_call_id": ({"messages": CALLED + [{"role": "tool", "content": "18C"}]},
                                          "messages[2].tool_call_id"),
    "tool message answering no call": ({"messages": CALLED + [{"role": "tool", "tool_call_id": "call_2",
                                                                "content": "18C"}]}, "messages[2].tool_call_id"),
    "logprobs with tools": ({"tools": WEATHER, "logprobs": True}, "logprobs"),
    "json_schema: not a JSON Schema": ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "nonsense"}}}}, "response_format.json_schema.schema"),
    "json_schema: unsupported keyword": ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"not": {"type": "null"}}}}}}},
        "response_format.json_schema.schema"),
    "json_schema: unanchored pattern": ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "string", "pattern": "[a-z]+"}}}}, "response_format.json_schema.schema"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_a_400_naming_the_param(http, case):
    extra, param = BAD[case]
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, "max_tokens": 8, **extra})
    assert r.status_code == 400, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"]
    assert body["error"]["param"] == param, body


# ---- no model: ranges, schema rewriting, the scanner ---------------------------------------------

def test_integer_ranges_match_exactly_the_integers_in_bounds():
    rng = random.Random(7)
    cases = [(0, 0), (1, 10), (-5, 5), (-100, -3), (7, 1234), (0, None), (None, 0), (5, None), (None, -7),
             (None, None)] + [tuple(sorted(rng.sample(range(-2000, 2000), 2))) for _ in range(60)]
    for lo, hi in cases:
        matcher = re.compile(grammars.alternatives_regex(integer_range(lo, hi)))
        for n in range(-2500, 2500):
            inside = (lo is None or n >= lo) and (hi is None or n <= hi)
            assert bool(matcher.fullmatch(str(n))) == inside, (lo, hi, n)
        assert not any(matcher.fullmatch(s) for s in ("-0", "01", "+1", "1.0", "1e3"))


def test_number_ranges_admit_nothing_outside_bounds():
    values = [str(n) for n in range(-300, 300)] + [f"{n / 8:.3f}" for n in range(-2400, 2400)]
    for lo, hi in [(0, 1), (0, 100), (-5, 5), (-10, -2), (None, 3), (3, None), (None, -4), (2, 2), (None, None)]:
        matcher = re.compile(grammars.alternatives_regex(number_range(lo, hi)))
        for text in values:
            x = float(text)
            inside = (lo is None or x >= lo) and (hi is None or x <= hi)
            assert not (matcher.fullmatch(text) and not inside), (lo, hi, text)
            if inside and (x.is_integer() and "." not in text or x not in (lo, hi)):
                assert matcher.fullmatch(text), (lo, hi, text)  # and every plain spelling inside is allowed


@pytest.mark.parametrize("schema,where", [
    ({"type": "array", "uniqueItems": True}, ""),
    ({"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 2}}}, "/properties/n"),
    ({"allOf": [{"type": "object"}]}, ""),
    ({"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}], "maxLength": 3}}}, "/properties/a"),
    ({"type": "string", "pattern": "^[^,]+$"}, ""),
    ({"type": "integer", "minimum": 5, "maximum": 1}, ""),
    ({"enum": ["a", 1], "type": "boolean"}, ""),
])
def test_unenforceable_schemas_are_refused(schema, where):
    with pytest.raises(UnsupportedSchema) as err:
        schema_rules(schema, Engine.grammar_from_json_schema, "p-")
    assert err.value.where == where


def test_schema_rewrites_close_the_converters_gaps():
    from llama_cpp.llama_grammar import LlamaGrammar

    schema = {"type": "object", "required": ["tags", "extra"],
              "properties": {"tags": {"type": ["array", "null"], "items": {"type": "string"}, "minItems": 1},
                             "n": {"type": "integer", "exclusiveMinimum": 0, "maximum": 3}}}
    rules = schema_rules(schema, Engine.grammar_from_json_schema, "p-")
    assert all(name.startswith("p-") for name in rules.rules)
    text = rules.gbnf()
    assert "::= ([1-3])" in text  # 1..3, from an exclusive bound
    assert f"p-char ::= {grammars.JSON_CHAR} | " in text  # no raw control characters inside strings
    LlamaGrammar.from_string(text, verbose=False)


def test_enum_values_that_break_the_schema_are_dropped():
    rules = schema_rules({"type": "string", "enum": ["a", 1, "b"]}, Engine.grammar_from_json_schema, "p-")
    assert '"\\"a\\""' in rules.gbnf() and '"1"' not in rules.gbnf()


def test_rename_leaves_literals_classes_and_counts_alone():
    body = 'space "space" [a-z]{2,3} (space | x)* "\\"space\\""'
    assert grammars.rename(body, {"space": "p-space", "x": "p-x"}) == \
        'p-space "space" [a-z]{2,3} (p-space | p-x)* "\\"space\\""'


def _calls(events) -> list[tuple[str, str]]:
    """(name, arguments) per call, assembled from ToolCallDelta events as a client would."""
    calls: list[list[str]] = []
    for e in events:
        if e.id is not None:
            calls.append([e.name, ""])
        calls[e.call][1] += e.arguments
    return [tuple(c) for c in calls]


def test_scanner_reads_the_same_calls_from_any_chunking():
    text = ('<tool_call>[{"name": "book_table", "arguments": {"restaurant": "Chez \\"Al\\" {x}", "people": 2}}, '
            '{"name":"get_weather","arguments":{"city":"Nice","unit":"celsius"}}]</tool_call>')
    whole = tools.ToolCallReply(0, may_answer=False)
    calls = _calls(whole.feed(text))
    assert [(name, json.loads(args)) for name, args in calls] == [
        ("book_table", {"restaurant": 'Chez "Al" {x}', "people": 2}),
        ("get_weather", {"city": "Nice", "unit": "celsius"})]
    for size in (1, 2, 3, 7):
        reply = tools.ToolCallReply(0, may_answer=False)
        events = [e for i in range(0, len(text), size) for e in reply.feed(text[i:i + size])]
        assert _calls(events) == calls
        firsts = [e for e in events if e.id is not None]
        assert [f.call for f in firsts] == [0, 1] and all(f.arguments == "" for f in firsts)
        assert all(isinstance(e, ToolCallDelta) and e.index == 0 for e in events)
    assert whole.finish_reason("stop") == "tool_calls" and whole.finish_reason("length") == "length"


def test_scanner_in_auto_mode_reads_an_empty_list_as_an_answer():
    reply = tools.ToolCallReply(2, may_answer=True)
    events = reply.feed("<tool_call>") + reply.feed("[]") + reply.feed("Hello") + reply.feed(" there")
    assert events == [TextDelta(2, "Hello"), TextDelta(2, " there")]
    assert reply.finish_reason("stop") == "stop"


def test_history_is_written_in_the_call_format():
    from reference_server.protocol import AssistantMessage, ToolMessage

    call = AssistantMessage(role="assistant", tool_calls=[{"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Paris"}'}}])
    assert tools.template_message(call) == {"role": "assistant", "content":
                                            '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]'
                                            '</tool_call>'}
    result = ToolMessage(role="tool", tool_call_id="call_1", content="18C")
    assert tools.template_message(result) == {"role": "tool", "content": "18C"}


def test_default_budget_is_bounded_only_when_the_client_sets_none():
    from reference_server.protocol import CreateChatCompletionRequest

    plan = tools.Plan(calls=True, default_max_tokens=tools.DEFAULT_MAX_TOKENS)
    body = CreateChatCompletionRequest(model=MODEL, messages=HI)
    assert plan.token_limit(body, 10_000) == tools.DEFAULT_MAX_TOKENS
    assert plan.token_limit(body, 100) == 100
    assert plan.token_limit(body.model_copy(update={"max_tokens": 2000}), 10_000) == 2000
    assert tools.Plan().token_limit(body, 10_000) is None  # plain chat: the context is the limit
