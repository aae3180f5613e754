"""OpenAI's Responses API (``POST /responses``, ``GET /responses/{id}``): the rows of ``coursekit conform``.

Every row is optional: a server can be a faithful OpenAI-compatible chat server without the
Responses API (llama-cpp-python's has none), and the first request tells. When ``POST
/responses`` is refused in words (a 404 for an unknown path, say), every row of the group reads
"not offered", without another request; a server that crashes on it (a 5xx) fails them. A
server that does offer the API must get it right: ``--strict`` fails it on any broken row, and
the last lab that builds the endpoint requires every row to pass.

What the rows hold a server to, beyond the spec's components (every body and every event is
validated against ``schemas/`` and OpenAI's own ``Response`` and ``ResponseStreamEvent``):

* the semantic events of a stream come in the spec's order, each named on its ``event:`` line,
  numbered 0, 1, 2... by ``sequence_number``, and their deltas add up to the final text;
* ``instructions`` and ``previous_response_id`` really reach the model, judged by what the
  server itself reports: ``usage.input_tokens`` grows by the instructions, and by the whole
  earlier turn (its input and its output) when a stored response is continued;
* a stored response can be retrieved as it was sent, and an unknown id is a 404 in OpenAI's
  error envelope, a broken request a 400 naming the field.

Model prose is never judged. Each generation asks for at most 16 tokens (the spec's minimum
``max_output_tokens``) at temperature 0: seven short generations in all.
"""

from __future__ import annotations

import json
from typing import Any

from .core import Group, NotOffered, Probe, Refused
from .openai_api import _clip, error_envelope

GROUP = Group("responses", "OpenAI's Responses API: /v1/responses, /v1/responses/{id}")
check = GROUP.check

PROMPT = "What is the capital of France?"  # a short answer: most models end it well before 16 tokens
FOLLOW_UP = "And of Italy?"  # shorter than PROMPT: a continuation that ignored the earlier turn reads less
# Longer than any default system prompt a chat template puts in when there is none (SmolLM2's has
# about 20 tokens), so that instructions that replace it still add to the input.
INSTRUCTIONS = ("Answer as a careful assistant would: in English, in one short sentence, without lists, without "
                "code, without repeating the question, and without saying anything about yourself, your training "
                "or these instructions. If you do not know the answer, say so plainly and stop there.")
TOKENS = 16  # the spec's minimum for max_output_tokens
NO_SUCH_ID = "resp_conform_no_such_response"
TERMINAL = ("response.completed", "response.incomplete")
MESSAGE_EVENTS = ["response.output_item.added", "response.content_part.added"]
MESSAGE_END = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


def _create(t: Probe, **kwargs: Any) -> tuple[dict[str, Any], Any]:
    model = t.model
    kwargs = {"input": PROMPT, "max_output_tokens": TOKENS, "temperature": 0, **kwargs}
    return t.sdk("POST", "/responses",
                 lambda: t.session.sdk.responses.with_raw_response.create(model=model, **kwargs))


def first_response(t: Probe) -> tuple[dict[str, Any], Any]:
    """The group's first request, made once per run: does the server serve the Responses API at all?"""
    def make() -> tuple[dict[str, Any], Any]:
        try:
            return _create(t)
        except Refused as exc:
            if exc.is_refusal:
                raise NotOffered(f"no Responses API: {exc.reason}") from None
            raise
    return t.session.memo("responses", make)


def output_text(t: Probe, body: Any, what: str) -> str:
    """The text of the response's message items (what the SDK's ``output_text`` joins)."""
    output = body.get("output") if isinstance(body, dict) else None
    if not isinstance(output, list):
        t.fail(f"{what} has no output list: {_clip(output)}")
    messages = [item for item in output if isinstance(item, dict) and item.get("type") == "message"]
    if not messages:
        t.fail(f"{what}: its output holds no message item: {_clip([i.get('type') for i in output if isinstance(i, dict)])}")
    parts = [p for m in messages for p in (m.get("content") or []) if isinstance(p, dict)]
    texts = [p.get("text") for p in parts if p.get("type") == "output_text"]
    if not texts:
        t.fail(f"{what}: its message has no output_text part: content types "
               f"{_clip([p.get('type') for p in parts])}")
    return "".join(x for x in texts if isinstance(x, str))


def usage(t: Probe, body: Any, what: str) -> dict[str, int]:
    """``input_tokens`` and ``output_tokens``, checked against ``total_tokens`` and the budget."""
    found = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(found, dict):
        t.fail(f"{what} has no usage" if found is None else f"{what}: usage is {_clip(found)}")
    if "prompt_tokens" in found or "completion_tokens" in found:
        t.problem(f"{what}: usage has chat's names (prompt_tokens, completion_tokens); the Responses API says "
                  "input_tokens and output_tokens")
    numbers = {k: found.get(k) for k in ("input_tokens", "output_tokens", "total_tokens")}
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in numbers.values()):
        t.fail(f"{what}: usage lacks whole numbers for input_tokens, output_tokens, total_tokens: {_clip(found)}")
    t.expect(numbers["input_tokens"] + numbers["output_tokens"] == numbers["total_tokens"],
             f"{what}: usage.total_tokens {numbers['total_tokens']} is not input_tokens + output_tokens")
    t.expect(numbers["input_tokens"] >= 1, f"{what}: usage.input_tokens is {numbers['input_tokens']} for a "
             "non-empty input")
    t.expect(1 <= numbers["output_tokens"] <= TOKENS, f"{what}: usage.output_tokens is "
             f"{numbers['output_tokens']} with max_output_tokens={TOKENS}")
    return numbers


def finished(t: Probe, body: Any, what: str) -> str:
    """A finished response: its shape, status and text (returned)."""
    if not isinstance(body, dict):
        t.fail(f"{what} is {_clip(body)}, not a JSON object")
    t.expect(body.get("object") == "response", f"{what}: object is {_clip(body.get('object'))}, expected 'response'")
    t.expect(isinstance(body.get("id"), str) and body["id"], f"{what} has no id to retrieve or continue it by")
    status = body.get("status")
    t.expect(status in ("completed", "incomplete"), f"{what}: status is {_clip(status)}, expected 'completed' "
             "(or 'incomplete', cut at max_output_tokens)")
    if status == "incomplete":
        reason = (body.get("incomplete_details") or {}).get("reason") if isinstance(
            body.get("incomplete_details"), dict) else None
        t.expect(reason == "max_output_tokens", f"{what} is incomplete, yet incomplete_details.reason is "
                 f"{_clip(reason)}, expected 'max_output_tokens'")
    text = output_text(t, body, what)
    t.expect(text.strip(), f"{what}: output_text is empty")
    usage(t, body, what)
    return text


def _field(body: Any, *path: str) -> Any:
    for key in path:
        body = body.get(key) if isinstance(body, dict) else None
    return body


# ---- creating ------------------------------------------------------------------------------------

@check("responses.create", "POST /responses: a message item with output_text, and usage", required=False)
def create(t: Probe) -> None:
    body, parsed = first_response(t)
    t.validate(body, "response")
    text = finished(t, body, "the response")
    t.expect(parsed.output_text == text, "the openai client reads a different output_text")


# ---- streaming -----------------------------------------------------------------------------------

def _order_problem(types: list[str]) -> str | None:
    """Where a text-only stream's event types leave the spec's order, or None."""
    deltas = types.count("response.output_text.delta")
    expected = (["response.created", "response.in_progress", *MESSAGE_EVENTS]
                + ["response.output_text.delta"] * deltas + MESSAGE_END + [types[-1] if types else "?"])
    if deltas == 0:
        return "the stream has no response.output_text.delta event"
    if not types or types[-1] not in TERMINAL:
        return (f"the stream ends with {_clip(types[-1] if types else None)}, not response.completed "
                "(or response.incomplete): the client cannot tell the end from a cut connection")
    for at in range(max(len(types), len(expected))):
        got = types[at] if at < len(types) else "(the end)"
        want = expected[at] if at < len(expected) else "(the end)"
        if got != want:
            return f"event {at} is {got}, expected {want} (the spec's order for one message)"
    return None


@check("responses.stream", "streamed: the semantic events in order, named and numbered", required=False)
def stream(t: Probe) -> None:
    first_response(t)
    streamed = t.stream("/responses", {"model": t.model, "input": PROMPT, "max_output_tokens": TOKENS,
                                       "temperature": 0, "stream": True})
    x = streamed.exchange
    t.expect(x.content_type == "text/event-stream",
             f"Content-Type is {x.content_type or 'missing'!r}, expected 'text/event-stream'")
    events: list[dict[str, Any]] = []
    for i, raw in enumerate(streamed.events):
        try:
            event = json.loads(raw.data)
        except ValueError:
            t.problem(f"event {i} is not JSON: {_clip(raw.data, 60)}")
            continue
        if not isinstance(event, dict):
            t.problem(f"event {i} is {_clip(event, 60)}, not an object")
            continue
        kind = event.get("type")
        if raw.name is None:
            t.problem(f"event {i} ({kind}) has no 'event:' line; OpenAI names every event by its type")
        elif raw.name != kind:
            t.problem(f"event {i} is named {raw.name!r} on its 'event:' line, but its type is {_clip(kind)}")
        t.validate(event, "response_stream_event", where=f"event {i} ({kind}): ")
        events.append(event)
    if not events:
        t.fail("the stream has no events")
    numbers = [e.get("sequence_number") for e in events]
    t.expect(numbers == list(range(len(events))),
             f"sequence_number should count 0, 1, 2... in the order sent; got {_clip(numbers, 60)}")
    types = [e.get("type") for e in events]
    problem = _order_problem(types)
    if problem:
        t.fail(problem)
    item_id = _field(events[2], "item", "id")
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    t.expect(all(e.get("item_id") == item_id for e in events if "item_id" in e),
             f"the text events do not all name the message item {_clip(item_id)} by item_id")
    text = "".join(e.get("delta") or "" for e in deltas)
    done = next(e for e in events if e["type"] == "response.output_text.done")
    t.expect(done.get("text") == text, f"response.output_text.done has text {_clip(done.get('text'), 50)}, "
             f"the deltas add up to {_clip(text, 50)}")
    final = events[-1].get("response")
    t.expect(_field(events[0], "response", "status") == "in_progress",
             f"response.created's response has status {_clip(_field(events[0], 'response', 'status'))}, "
             "expected 'in_progress'")
    if isinstance(final, dict):
        t.expect(final.get("id") == _field(events[0], "response", "id"),
                 "response.created and the last event carry different response ids")
        got = finished(t, final, f"the response of {events[-1]['type']}")
        t.expect(got == text, f"the final response's text {_clip(got, 50)} is not what the deltas sent, "
                 f"{_clip(text, 50)}")
    else:
        t.problem(f"{events[-1]['type']} carries no response")
    # ... and the official client reads such a stream to its last event. (Not responses.stream's
    # get_final_response: it insists on response.completed, and a model may need more than 16 tokens.)
    import httpx
    import openai

    model = t.model
    try:
        read = list(t.session.sdk.responses.create(model=model, input=PROMPT, max_output_tokens=TOKENS,
                                                   temperature=0, stream=True))
        last = read[-1] if read else None
        t.expect(last is not None and last.type in TERMINAL and last.response.output_text,
                 f"read by the openai client, the stream ends with {_clip(getattr(last, 'type', None))} and "
                 "no output_text")
    except (openai.APIError, httpx.HTTPError, ValueError) as exc:
        t.problem(f"the openai client fails on the stream: {type(exc).__name__}: {_clip(str(exc), 160)}")


@check("responses.items", "input as message items with input_text parts", required=False)
def items(t: Probe) -> None:
    base, _ = first_response(t)
    body, _ = _create(t, input=[{"type": "message", "role": "user",
                                 "content": [{"type": "input_text", "text": PROMPT}]}])
    t.validate(body, "response")
    finished(t, body, "the response to a list of items")
    a, b = _field(base, "usage", "input_tokens"), _field(body, "usage", "input_tokens")
    if isinstance(a, int) and isinstance(b, int):
        t.expect(a == b, f"the same user message sent as a string and as an input_text item gives "
                 f"{a} and {b} input tokens: the items were not read as that message")


@check("responses.instructions", "instructions reach the model and are echoed", required=False)
def instructions(t: Probe) -> None:
    base, _ = first_response(t)
    body, _ = _create(t, instructions=INSTRUCTIONS)
    t.validate(body, "response")
    finished(t, body, "the response with instructions")
    t.expect(body.get("instructions") == INSTRUCTIONS,
             f"the response's instructions are {_clip(body.get('instructions'))}, not the ones sent")
    a, b = _field(base, "usage", "input_tokens"), _field(body, "usage", "input_tokens")
    if isinstance(a, int) and isinstance(b, int):
        t.expect(b > a, f"with {len(INSTRUCTIONS.split())} words of instructions the input is {b} tokens, without "
                 f"them {a}: the instructions did not reach the model")


# ---- state ---------------------------------------------------------------------------------------

def _stored(t: Probe, first: dict[str, Any], call: Any) -> Any:
    """``call()``, where a 404 for the first response is a broken promise if it said it was stored
    (``store`` defaults to true), and an honest "not offered" if it said it was not."""
    try:
        return call()
    except Refused as exc:
        if exc.http_status != 404:
            raise
        if first.get("store") is False:
            raise NotOffered(f"the server stores no responses (they say store: false): {exc.reason}") from None
        t.fail(f"the first response was stored (store: {_clip(first.get('store', True))}), yet {exc.reason}")


@check("responses.previous", "previous_response_id continues the stored conversation", required=False)
def previous(t: Probe) -> None:
    first, _ = first_response(t)
    first_id = first.get("id")
    body, _ = _stored(t, first, lambda: _create(t, input=FOLLOW_UP, previous_response_id=first_id))
    t.validate(body, "response")
    finished(t, body, "the continuation")
    t.expect(body.get("previous_response_id") == first_id,
             f"the continuation's previous_response_id is {_clip(body.get('previous_response_id'))}, "
             f"not {first_id!r}")
    before_in, before_out = _field(first, "usage", "input_tokens"), _field(first, "usage", "output_tokens")
    now = _field(body, "usage", "input_tokens")
    if all(isinstance(n, int) for n in (before_in, before_out, now)):
        # The continuation reads the first input, the first output and the new input: far more
        # than the first input alone. A server that ignores previous_response_id reads only the new one.
        t.expect(now > before_in + before_out // 2,
                 f"the continuation read {now} input tokens; the first request's input and output were "
                 f"{before_in} + {before_out}: the stored conversation was not sent to the model")


@check("responses.retrieve", "GET /responses/{id} returns the stored response", required=False)
def retrieve(t: Probe) -> None:
    first, _ = first_response(t)
    first_id = first.get("id")
    if not isinstance(first_id, str) or not first_id:
        t.fail("the first response has no id to retrieve it by")
    body, _ = _stored(t, first, lambda: t.sdk("GET", f"/responses/{first_id}", lambda: (
        t.session.sdk.responses.with_raw_response.retrieve(first_id))))
    t.validate(body, "response")
    for key in ("id", "status", "output", "usage"):
        t.expect(isinstance(body, dict) and body.get(key) == first.get(key),
                 f"the retrieved response's {key} is not the one created: {_clip(_field(body, key), 60)}")


@check("responses.unknown_id", "unknown response id: 404 in the error envelope", required=False)
def unknown_id(t: Probe) -> None:
    first_response(t)
    x = t.get(f"/responses/{NO_SUCH_ID}")
    error_envelope(t, x, 404, type_=None, what=f"GET /responses/{NO_SUCH_ID}")
    x = t.post("/responses", {"model": t.model, "input": FOLLOW_UP, "max_output_tokens": TOKENS,
                              "previous_response_id": NO_SUCH_ID})
    error_envelope(t, x, 404, type_=None, param="previous_response_id",
                   what=f"previous_response_id {NO_SUCH_ID!r}")


@check("responses.bad_input", "invalid input: 400 naming the field", required=False)
def bad_input(t: Probe) -> None:
    first_response(t)
    x = t.post("/responses", {"model": t.model, "input": 42, "max_output_tokens": TOKENS})
    error_envelope(t, x, 400, param="input", what="input: 42")
    x = t.post("/responses", {"model": t.model, "max_output_tokens": TOKENS,
                              "input": [{"type": "message", "role": "robot", "content": "Hi"}]})
    error_envelope(t, x, 400, what='a message with role "robot"')
    param = _field(x.json() if x.content_type == "application/json" else None, "error", "param")
    t.expect(isinstance(param, str) and param.startswith("input"),
             f'a message with role "robot": error.param is {_clip(param)}, expected the field at fault, in input')
