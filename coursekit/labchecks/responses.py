"""Checks for lab 09: the Responses API on the learner's own engine (items, the response object,
the semantic events, the store), then the official client and the conformance checker's rows."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

from ..checks import Mismatch, Section, check, require_schema, short, type_name
from ..checks import hint as hint  # check.hint(check.NAME): the concrete hint, on request
from ..model import MODEL_ID

REQUEST = Section("09-responses", "A request and its response")
ITEMS = Section("09-responses", "Items instead of messages")
EVENTS = Section("09-responses", "Semantic events instead of deltas")
STATE = Section("09-responses", "Server-side state and what it costs")
PITFALLS = Section("09-responses", "Pitfalls that break real clients")
EXAM = Section("labs", "The final exam")
SECTIONS = (REQUEST, ITEMS, EVENTS, STATE, PITFALLS, EXAM)

ORDER = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
         "response.output_text.delta", "response.output_text.done", "response.content_part.done",
         "response.output_item.done", "response.completed"]


def _package(name: str) -> Any:
    from .fakes import package_module

    return package_module(name)


def _request(**fields: Any) -> Any:
    """A request as your server parses it: your ResponseRequest (myserver/protocol.py)."""
    return _package("protocol").ResponseRequest(model=MODEL_ID, **fields)


def valid(instance: Any, name: str, *, what: str, hint: str | None = None) -> None:
    """Valid against ``schemas/<name>`` and against OpenAI's own component for it."""
    from schemas import openai_spec

    require_schema(instance, name, what=what, hint=hint)
    spec = openai_spec.problems(instance, name)
    if spec:
        raise Mismatch(f"{what} breaks OpenAI's {openai_spec.COMPONENTS[name]} component",
                       details=[f"{path or '$'}: {message}" for path, message in spec[:6]], hint=hint)


# ---- Step 1: items -----------------------------------------------------------------------------

@check("Items to messages", section=ITEMS,
       nudge="a Responses request is translated, not generated anew: each item becomes the chat message your "
             "engine already reads, and the instructions come first, as a system message",
       hint="input_messages: one message per item, its role (developer becomes system) and its content as one "
            "string (a list of input_text parts joined); chat_messages: the instructions as a system message if "
            "there are any, then the history, then the input messages")
def items(chat_messages: Callable[..., Any]) -> str:
    history = [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]
    cases = [
        ("input 'Hi' (a string)", _request(input="Hi"), (), [{"role": "user", "content": "Hi"}]),
        ("a message item whose content is two input_text parts",
         _request(input=[{"type": "message", "role": "user", "content": [
             {"type": "input_text", "text": "Hello, "}, {"type": "input_text", "text": "world."}]}]), (),
         [{"role": "user", "content": "Hello, world."}]),
        ("a developer message, then a user message without 'type'",
         _request(input=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]), (),
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]),
        ("instructions 'Be kind.' and input 'Hi'", _request(input="Hi", instructions="Be kind."), (),
         [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]),
        ("instructions, an earlier turn (history) and input 'And Italy?'",
         _request(input="And Italy?", instructions="Be kind."), history,
         [{"role": "system", "content": "Be kind."}, *history, {"role": "user", "content": "And Italy?"}]),
    ]
    for what, body, past, want in cases:
        got = chat_messages(body, list(past))
        if not isinstance(got, list):
            raise Mismatch(f"chat_messages returned {type_name(got)} for {what}, not a list of messages")
        got = [{k: v for k, v in m.items() if k in ("role", "content")} if isinstance(m, dict) else m for m in got]
        if got == want:
            continue
        details = [f"expected: {short(want, 160)}", f"got:      {short(got, 160)}"]
        if past and not any(m in got for m in past):
            raise Mismatch(f"for {what}, the earlier turn is missing: previous_response_id would be ignored",
                           details=details)
        if past and sorted(map(str, got)) == sorted(map(str, want)):
            raise Mismatch(f"for {what}, the order is wrong: instructions, then the earlier turns, then the input",
                           details=details)
        if any(isinstance(m, dict) and m.get("role") == "developer" for m in got):
            raise Mismatch(f"for {what}: the chat template has no 'developer' role; it is the newer name of "
                           "'system'", details=details)
        if any(isinstance(m, dict) and not isinstance(m.get("content"), str) for m in got):
            raise Mismatch(f"for {what}: a message's content should be one string (the parts' texts joined)",
                           details=details)
        raise Mismatch(f"chat_messages is not right for {what}", details=details)
    return "Items to messages: strings, input_text parts, roles, instructions and earlier turns"


# ---- Step 2: the response object -------------------------------------------------------------------

def _done(finish_reason: str, prompt_tokens: int, completion_tokens: int) -> Any:
    return _package("engine").Done(finish_reason, prompt_tokens, completion_tokens)


def _usage_hint(response: Any) -> None:
    usage = response.get("usage") if isinstance(response, dict) else None
    if isinstance(usage, dict) and ("prompt_tokens" in usage or "completion_tokens" in usage):
        raise Mismatch("usage has chat's names (prompt_tokens, completion_tokens): the Responses API counts "
                       "input_tokens and output_tokens", details=[f"usage: {short(usage, 160)}"],
                       hint="usage holds input_tokens, output_tokens and total_tokens (their sum), and two details "
                            "objects: input_tokens_details with cached_tokens and cache_write_tokens (both 0 "
                            "here), output_tokens_details with reasoning_tokens (0)")


@check("The response object", section=REQUEST,
       nudge="a response is not a chat.completion: its output is a list of items, the assistant's message holds "
             "output_text parts, and a cut answer is 'incomplete', with the reason",
       hint="output_message: type message, the id, the status, role assistant, content one output_text part "
            "(text, annotations [], logprobs []); finish: status completed, or incomplete with incomplete_details "
            "reason max_output_tokens when the finish reason is 'length'; output, the one message; usage with "
            "input_tokens, output_tokens, total_tokens and the two details objects")
def response_object(response_object: Callable[..., Any], finish: Callable[..., Any]) -> str:
    body = _request(input="Capital of France?", max_output_tokens=16, temperature=0)
    started = response_object(body, MODEL_ID)
    valid(started, "response", what="response_object(...) (given: did you change it?)")
    cases = [("a finished answer", "stop", "Paris.", 12, 3, "completed"),
             ("an answer cut at max_output_tokens", "length", "The capital of France is Paris, a city",
              12, 16, "incomplete")]
    for what, reason, text, prompt, completion, status in cases:
        response = copy.deepcopy(started)
        got = finish(response, "msg_lab9check", text, _done(reason, prompt, completion))
        if got is not None and got is not response:
            raise Mismatch("finish returned another object: complete the response it was given, in place "
                           "(the route returns that very dict)")
        if response.get("status") == "in_progress":
            raise Mismatch(f"after finish, {what} is still in_progress: finish sets the status")
        _usage_hint(response)
        output = response.get("output")
        part = output[0]["content"][0] if (isinstance(output, list) and output and isinstance(output[0], dict)
                                           and output[0].get("content")) else None
        if isinstance(part, dict) and part.get("type") != "output_text":
            raise Mismatch(f"the message's content part has type {short(part.get('type'))}: the Responses API "
                           "says 'output_text' (the SDK's response.output_text reads only those)",
                           details=[f"content[0]: {short(part, 160)}"])
        valid(response, "response", what=f"the response, finished for {what}")
        if response["status"] != status:
            raise Mismatch(f"{what}: status {response['status']!r}, expected {status!r}")
        if status == "incomplete" and (response.get("incomplete_details") or {}).get("reason") != "max_output_tokens":
            raise Mismatch("a cut answer should say why: incomplete_details.reason 'max_output_tokens'")
        [message] = response["output"] if len(response["output"]) == 1 else [None]
        if message is None:
            raise Mismatch(f"output holds {len(response['output'])} items: one message was generated")
        if message["content"][0]["text"] != text or message.get("id") != "msg_lab9check":
            raise Mismatch("the message item should hold the generated text and the item id finish was given",
                           details=[f"output[0]: {short(message, 160)}"])
        if message.get("status") != status:
            raise Mismatch(f"{what}: the message item's status is {short(message.get('status'))}; it is "
                           f"{status!r} too")
        usage = response["usage"]
        if (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) != (
                prompt, completion, prompt + completion):
            raise Mismatch(f"usage should count the Done's tokens: input {prompt}, output {completion}, total "
                           f"{prompt + completion}", details=[f"usage: {short(usage, 160)}"])
    return "The response object: output items with output_text, status and usage, valid against OpenAI's spec"


# ---- Step 3: the events ----------------------------------------------------------------------------

def _run_events(response_events: Callable[..., Any], response: dict[str, Any], items: list[Any]) -> list[Any]:
    from .fakes import run_async

    async def source() -> Any:
        for item in items:
            yield item
    stream = response_events(response, source())
    if not hasattr(stream, "__anext__"):
        if hasattr(stream, "close"):
            stream.close()
        raise Mismatch(f"response_events returned {type_name(stream)}: it should yield the events "
                       "(an async def that yields is an async generator)")

    async def drain() -> list[Any]:  # kept as yielded: an event that changes after it was sent shows
        return [e async for e in stream]
    return run_async(drain)


def parse_named(body: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) of each SSE event in ``body``."""
    out = []
    for block in body.decode("utf-8").replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        out.append((name, "\n".join(data)))
    return out


@check("The semantic events", section=EVENTS,
       nudge="a Responses stream announces, fills and closes the message, between the response's opening and "
             "closing events; every event says its type and its place in the stream",
       hint="yield, in order: response.created and response.in_progress (with a snapshot of the response), "
            "output_item.added (the message, in_progress, no content), content_part.added (an empty output_text), "
            "one output_text.delta per piece of text, output_text.done, content_part.done, output_item.done, then "
            "response.completed or response.incomplete; every event a dict with its type and a sequence_number "
            "counting from 0; named_frames writes an 'event: TYPE' line, then the 'data: ' line with the JSON, "
            "then a blank line")
def events(response_events: Callable[..., Any], named_frames: Callable[..., Any],
           response_object: Callable[..., Any]) -> str:
    from schemas import openai_spec

    body = _request(input="Capital of France?", max_output_tokens=16, temperature=0)
    for pieces, reason, last in ((["Paris", " is", " the capital."], "stop", "response.completed"),
                                 (["The", " capital"], "length", "response.incomplete")):
        response = response_object(body, MODEL_ID)
        got = _run_events(response_events, response, [*pieces, _done(reason, 9, len(pieces))])
        if not got or not all(isinstance(e, dict) for e in got):
            raise Mismatch(f"response_events yielded {short(got, 80)}: each event is a dict")
        numbers = [e.get("sequence_number") for e in got]
        if numbers != list(range(len(got))):
            raise Mismatch(f"the sequence numbers are {short(numbers, 80)}: every event carries sequence_number, "
                           "0, 1, 2... in the order sent", hint="count the events as you yield them: the first "
                           "is 0, and each event gets the next number, deltas included")
        types = [e.get("type") for e in got]
        want = ORDER[:4] + ["response.output_text.delta"] * len(pieces) + ORDER[5:-1] + [last]
        if types != want:
            raise Mismatch("the events are not in the spec's order",
                           details=[f"expected: {', '.join(t.removeprefix('response.') for t in want)}",
                                    f"got:      {', '.join(str(t).removeprefix('response.') for t in types)}"])
        created = got[0]["response"]
        if created.get("status") != "in_progress" or "usage" in created:
            raise Mismatch("response.created shows the response as it was then: in_progress, no usage; it shows "
                           f"status {short(created.get('status'))}",
                           hint="send a snapshot of the response in the lifecycle events: the response dict "
                                "changes later, an event sent must not")
        for i, event in enumerate(got):
            valid(event, "response_stream_event", what=f"event {i} ({event['type']})")
        deltas = [e["delta"] for e in got if e["type"] == "response.output_text.delta"]
        if deltas != pieces:
            raise Mismatch(f"the deltas are {short(deltas, 80)}, not the pieces the engine yielded, "
                           f"{short(pieces, 80)}")
        ids = {e.get("item_id") for e in got if "item_id" in e} | {got[2]["item"].get("id")}
        if len(ids) != 1:
            raise Mismatch(f"the events name {len(ids)} different item ids: one message, one id")
        final = got[-1]["response"]
        text = "".join(pieces)
        if final.get("output", [{}])[0].get("content", [{}])[0].get("text") != text:
            raise Mismatch(f"the final response's text is not the deltas joined ({text!r})")
        if response.get("status") != final.get("status"):
            raise Mismatch("after the stream, the response dict the route holds is not finished: finish it "
                           "(your finish) before the last event", details=[f"status: {short(response.get('status'))}"])
        if openai_spec.problems(final, "response"):
            raise Mismatch("the final response breaks OpenAI's Response component")
    frames = named_frames(_events_of(got))
    if not hasattr(frames, "__anext__"):
        raise Mismatch(f"named_frames returned {type_name(frames)}: an async generator of bytes, one per event")
    from .fakes import run_async

    async def drain() -> list[Any]:
        return [f async for f in frames]
    chunks = run_async(drain)
    if any(not isinstance(c, bytes) for c in chunks):
        raise Mismatch("named_frames should yield bytes (encode the text as UTF-8)")
    parsed = parse_named(b"".join(chunks))
    if [name for name, _ in parsed] != [e["type"] for e in got]:
        raise Mismatch("each frame starts with an 'event:' line naming the event's type",
                       details=[f"first frame: {short(chunks[0].decode('utf-8', 'replace') if chunks else '', 120)}"],
                       hint="a frame is 'event: ' + the type, a newline, 'data: ' + the event as JSON, and a blank "
                            "line")
    try:
        same = [json.loads(data) for _, data in parsed] == got
    except ValueError:
        same = False
    if not same:
        raise Mismatch("each frame's data line is the event as JSON, and nothing else (no [DONE]: the last "
                       "event says the stream is over)")
    return (f"The semantic events: {len(want)} events in the spec's order, numbered 0 to {len(want) - 1}, "
            "each named on its event: line")


def _events_of(items: list[Any]) -> Any:
    async def gen() -> Any:
        for item in items:
            yield item
    return gen()


# ---- Step 4: the store -----------------------------------------------------------------------------

def _fake_response(response_id: str, text: str = "Paris.", store: bool = True) -> dict[str, Any]:
    return {"id": response_id, "object": "response", "status": "completed", "store": store,
            "output": [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}]}


def _not_found(call: Callable[[], Any], what: str, param: str | None) -> None:
    errors = _package("errors")
    try:
        got = call()
    except errors.APIError as exc:
        if exc.status != 404:
            raise Mismatch(f"{what}: APIError {exc.status}, expected 404 (not found)") from None
        if exc.param != param:
            raise Mismatch(f"{what}: the error's param is {short(exc.param)}, expected {short(param)}: the field "
                           "that sent the unknown id") from None
        require_schema(exc.body(), "error", what=f"{what}: the error body")
        return
    except Exception as exc:  # noqa: BLE001
        raise Mismatch(f"{what} raised {type(exc).__name__}: the client would get a 500, not a 404",
                       hint="raise your errors module's APIError with status 404, a message naming the id, the "
                            "param you were given and a code such as response_not_found") from None
    raise Mismatch(f"{what} returned {short(got, 60)} instead of raising a 404: the client would get a 200",
                   hint="an unknown id is an APIError with status 404 (your lab 3 class), never a None")


@check("The stored responses", section=STATE,
       nudge="a stored response is kept with the conversation that continues it: the earlier turns, this input, "
             "and the answer; what is not there is a 404 in your envelope; and what is kept is bounded",
       hint="remember: if response store is true, STORE at the response's id holds the response and the "
            "conversation plus the assistant message whose content is the output text; drop the oldest while "
            "there are more than MAX_STORED; stored: the pair for a known id, else your APIError 404 with the "
            "param given")
def store(remember: Callable[..., Any], stored: Callable[..., Any]) -> str:
    module = _package("store")
    kept: dict[str, Any] = module.STORE
    before = dict(kept)
    conversation = [{"role": "user", "content": "Capital of France?"}]
    try:
        first = _fake_response("resp_lab9check_first")
        remember(first, list(conversation))
        got = stored("resp_lab9check_first")
        if not isinstance(got, tuple) or len(got) != 2:
            raise Mismatch(f"stored returned {short(got, 80)}: a pair (the response, the conversation)")
        response, past = got
        if response != first:
            raise Mismatch("stored gave back another response than the one remembered")
        want = [*conversation, {"role": "assistant", "content": "Paris."}]
        past = [{k: v for k, v in m.items() if k in ("role", "content")} if isinstance(m, dict) else m
                for m in past or []]
        if past == conversation:
            raise Mismatch("the stored conversation ends before the answer: a continuation would not know what "
                           "the model said", details=[f"stored: {short(past, 120)}"])
        if past != want:
            raise Mismatch("the stored conversation should be the conversation, then the assistant's answer "
                           "(its output text)", details=[f"expected: {short(want, 120)}", f"got:      {short(past, 120)}"])
        remember(_fake_response("resp_lab9check_unstored", store=False), list(conversation))
        _not_found(lambda: stored("resp_lab9check_unstored"), "a response created with store false", None)
        _not_found(lambda: stored("resp_nope"), "stored('resp_nope')", None)
        _not_found(lambda: stored("resp_nope", "previous_response_id"),
                   "stored('resp_nope', 'previous_response_id')", "previous_response_id")
        limit = module.MAX_STORED
        for i in range(limit + 3):
            remember(_fake_response(f"resp_lab9check_{i}"), list(conversation))
        if len(kept) > limit:
            raise Mismatch(f"after {limit + 3} more responses the store holds {len(kept)}: it should never hold "
                           f"more than MAX_STORED ({limit})",
                           hint="after adding, drop the oldest entries while there are more than MAX_STORED "
                                "(a dict remembers the order its keys were added in)")
        if f"resp_lab9check_{limit + 2}" not in kept:
            raise Mismatch("the newest response is not in the store: drop the oldest, not the newest")
    finally:
        kept.clear()
        kept.update(before)
    return (f"The stored responses: kept with their conversation and answer, 404 when unknown, at most "
            f"{module.MAX_STORED}")


# ---- Step 5: the official client, on your server -----------------------------------------------------

@check("The official client", section=PITFALLS,
       nudge="the official client reads your server as it reads OpenAI: a created response, a stream of events, "
             "a continuation and a retrieval",
       hint="the checks above first; then read the detail of what failed (it names the request) and the end of "
            "your server's log, where a 500 leaves its traceback (the server's log method shows it)")
def official_client(server: Any) -> str:
    import openai

    if not getattr(server, "ready", False):
        raise Mismatch("your server is not running: see what the cell that started it printed")
    client = server.client()
    raw = client.responses.with_raw_response.create(model=MODEL_ID, input="What is the capital of France?",
                                                     max_output_tokens=16, temperature=0)
    body = raw.http_response.json()
    valid(body, "response", what="the response to client.responses.create")
    first = raw.parse()
    if not first.id.startswith("resp_") or not first.output_text:
        raise Mismatch(f"the response's id is {first.id!r} and its output_text {first.output_text!r}: expected "
                       "a resp_ id and the model's text")
    streamed = list(client.responses.create(model=MODEL_ID, input="What is the capital of Italy?",
                                            max_output_tokens=16, temperature=0, stream=True))
    types = [e.type for e in streamed]
    if [e.sequence_number for e in streamed] != list(range(len(streamed))) or types[-1] not in (
            "response.completed", "response.incomplete"):
        raise Mismatch("read by the official client, the stream is not numbered from 0, or does not end with "
                       "response.completed (or .incomplete)", details=[f"types: {short(types, 160)}"])
    deltas = "".join(e.delta for e in streamed if e.type == "response.output_text.delta")
    if deltas != streamed[-1].response.output_text:
        raise Mismatch("the deltas do not add up to the final response's output_text")
    second = client.responses.create(model=MODEL_ID, input="And of Italy?", previous_response_id=first.id,
                                     max_output_tokens=16, temperature=0)
    if second.usage.input_tokens <= first.usage.input_tokens + first.usage.output_tokens // 2:
        raise Mismatch(f"the continuation read {second.usage.input_tokens} input tokens, the first request "
                       f"{first.usage.input_tokens} and its answer {first.usage.output_tokens}: the earlier turn "
                       "did not reach the model", hint="the route takes the history from your stored function; your "
                       "remember must keep the conversation and the answer, and chat_messages must put the history "
                       "before the input")
    again = client.responses.retrieve(first.id)
    if again.model_dump() != first.model_dump():
        raise Mismatch("client.responses.retrieve gives back another response than the one created")
    try:
        client.responses.retrieve("resp_nope")
    except openai.NotFoundError:
        pass
    else:
        raise Mismatch("retrieving 'resp_nope' should be a 404")
    return (f"The official client: created {first.id[:12]}…, streamed {len(streamed)} events, continued it "
            f"({second.usage.input_tokens} input tokens) and retrieved it")


# ---- The exam's Responses rows ----------------------------------------------------------------------

_EXAM: dict[str, Any] = {}
LAB_CHECKS = ("Items to messages", "The response object", "The semantic events", "The stored responses",
              "The official client")


@check("The Responses rows of the exam", section=EXAM,
       nudge="the conformance checker knows nothing of your code: each failing row names the request and what "
             "came back",
       hint="read each failing row's reason; the step of this lab that built that part, and its chapter section, "
            "tell you where to fix it")
def conformance(server: Any) -> str:
    from ..checks import RESULTS

    _EXAM.clear()
    if not getattr(server, "ready", False):
        raise Mismatch("your server is not running: see what the cell that started it printed")
    failing = [name for name in LAB_CHECKS if RESULTS.get(name) is False]
    if failing:
        raise Mismatch(f"first pass the lab's other checks: {', '.join(failing)}")
    from ..conform import run

    report = run(server.base_url, api_key=getattr(server, "api_key", None), model=MODEL_ID, timeout=120,
                 groups=["responses"])
    _EXAM.update(statuses=report.statuses(), seconds=round(report.seconds, 1))
    print(report.table())
    wrong = [row for row in report.rows if row.status != "pass"]
    if wrong:
        raise Mismatch(f"{len(wrong)} of the {len(report.rows)} Responses rows do not pass",
                       details=[f"{row.id}: {row.status}: {row.reason}" for row in wrong])
    return f"The Responses rows of the exam: all {len(report.rows)} pass, in {report.seconds:.1f} s"


def exam_summary() -> dict[str, Any]:
    """The rows (row id -> status) and the seconds they took, for the checkpoint; empty if they did not run."""
    return copy.deepcopy(_EXAM)
