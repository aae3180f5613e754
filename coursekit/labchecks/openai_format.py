"""Checks for lab 02: OpenAI's request, response and chunk shapes, built by hand."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from ..checks import Mismatch, Section, check, require_schema, short, type_name
from ..model import MODEL_ID

REQUEST = Section("02-openai-format", "A request and its response")
RESPONSE = REQUEST
CHUNKS = Section("04-streaming", "The sequence of chunks")
PITFALLS = Section("02-openai-format", "Pitfalls that break real clients")
SECTIONS = (REQUEST, CHUNKS, PITFALLS)


#: the answer of a server with every classic mistake (the lab shows it, then fixes it)
BROKEN_RESPONSE: dict[str, Any] = {
    "id": "chatcmpl-7f3a9c",
    "object": "chat.completion",
    "created": "2025-06-01T12:00:00Z",
    "model": MODEL_ID,
    "choices": [
        {
            "index": 0,
            "message": {"role": "Assistant", "content": "Paris."},
            "finishReason": "STOP",
        }
    ],
    "prompt_tokens": 25,
    "completion_tokens": 3,
}


def _content(message: Any) -> Any:
    return message.get("content") if isinstance(message, dict) else None


@check("Request", section=REQUEST,
       hint="a request names the model and carries the conversation as a list of {'role', 'content'} "
            "messages; sampling options sit next to them at the top level")
def request(body: Any) -> str:
    require_schema(body, "chat_completion_request", what="REQUEST")
    details = []
    if body["model"] != MODEL_ID:
        details.append(f"model is {body['model']!r}: use the id the server lists, {MODEL_ID!r}")
    roles = [m.get("role") for m in body["messages"]]
    if roles[:1] != ["system"]:
        details.append(f"the first message should be the system message, found roles {roles}")
    if roles[-1:] != ["user"]:
        details.append(f"the last message should be the user's question, found roles {roles}")
    if body.get("temperature") != 0:
        details.append(f"temperature is {body.get('temperature')!r}: ask for 0 (the most likely token each "
                       "time), so the answer is reproducible")
    limit = body.get("max_tokens")
    if not isinstance(limit, int) or limit > 24:
        details.append(f"max_tokens is {limit!r}: set a small limit (at most 24) so the model stops soon")
    if details:
        raise Mismatch("REQUEST is valid JSON for the API but not the one asked for", details=details)
    return f"Request: a valid chat_completion_request with {len(roles)} messages"


@check("Response", section=RESPONSE,
       hint="a chat.completion has id, object, created (unix seconds), model, choices (each with index, "
            "message, logprobs, finish_reason) and usage")
def response(body: Any, request_body: Any) -> str:
    require_schema(body, "chat_completion_response", what="RESPONSE")
    details = []
    if not body["id"].startswith("chatcmpl-"):
        details.append(f"id is {body['id']!r}: chat completion ids start with 'chatcmpl-'")
    if isinstance(request_body, dict) and body["model"] != request_body.get("model"):
        details.append(f"model is {body['model']!r}, the request asked for {request_body.get('model')!r}")
    if len(body["choices"]) != 1:
        details.append(f"{len(body['choices'])} choices: the request asked for one (n defaults to 1)")
    elif not isinstance(_content(body["choices"][0]["message"]), str) or not body["choices"][0]["message"]["content"]:
        details.append("the assistant message has no text content")
    limit = request_body.get("max_tokens") if isinstance(request_body, dict) else None
    if isinstance(limit, int) and body["usage"]["completion_tokens"] > limit:
        details.append(f"usage.completion_tokens is {body['usage']['completion_tokens']}, more than the "
                       f"request's max_tokens ({limit})")
    if details:
        raise Mismatch("RESPONSE is valid but does not answer REQUEST", details=details)
    from openai.types.chat import ChatCompletion

    parsed = ChatCompletion.model_validate(body)  # what the official client makes of it
    return f"Response: valid, and the official client reads {parsed.choices[0].message.content!r}"


@check("Stream", section=CHUNKS,
       hint="a stream is: a first chunk whose delta holds the role, chunks whose delta holds a piece of "
            "content, a last chunk with an empty delta and the finish_reason; same id on every chunk")
def chunks(items: Any, response_body: Any) -> str:
    if not isinstance(items, list) or not items:
        raise Mismatch(f"CHUNKS should be a non-empty list of chunk dicts, got {short(items) if items is not None else type_name(items)}")
    for i, chunk in enumerate(items):
        require_schema(chunk, "chat_completion_chunk", what=f"CHUNKS[{i}]")
    details = []
    if len({c["id"] for c in items}) != 1 or len({c["created"] for c in items}) != 1:
        details.append("every chunk of one stream carries the same id and created")
    choices = [c["choices"][0] if c["choices"] else None for c in items]
    if any(ch is None for ch in choices):
        details.append("a chunk has no choices (only the optional usage chunk at the very end may)")
    else:
        if choices[0]["delta"].get("role") != "assistant":
            details.append("the first delta should carry role 'assistant'")
        if any("role" in ch["delta"] for ch in choices[1:]):
            details.append("only the first delta carries the role")
        finishes = [ch["finish_reason"] for ch in choices]
        if finishes[-1] is None or any(f is not None for f in finishes[:-1]):
            details.append(f"finish_reason should be null on every chunk but the last; found {finishes}")
        text = "".join(ch["delta"].get("content") or "" for ch in choices)
        expected = None
        if isinstance(response_body, dict) and response_body.get("choices"):
            expected = _content(response_body["choices"][0].get("message"))
        if expected is not None and text != expected:
            details.append(f"the deltas add up to {text!r}, but RESPONSE says {expected!r}")
        if len([ch for ch in choices if ch["delta"].get("content")]) < 2:
            details.append("split the text over at least two content chunks: that is what streaming is for")
    if details:
        raise Mismatch("the chunks are valid one by one, but not as a stream", details=details)
    return f"Stream: {len(items)} valid chunks that add up to the response"


@check("Fix the broken response", section=PITFALLS,
       hint="run verdict() on your result: fix one reported path at a time (casing, the missing usage "
            "object, the ISO date, the dropped nulls)")
def fixed(fix: Callable[[dict[str, Any]], Any]) -> str:
    original = copy.deepcopy(BROKEN_RESPONSE)
    result = fix(copy.deepcopy(BROKEN_RESPONSE))
    require_schema(result, "chat_completion_response", what="fix_response(BROKEN)")
    details = []
    if result["choices"][0]["message"]["content"] != "Paris.":
        details.append("the answer changed: keep the content 'Paris.'")
    if result["choices"][0]["finish_reason"] != "stop":
        details.append(f"finish_reason is {result['choices'][0]['finish_reason']!r}: 'STOP' meant 'stop'")
    usage = result["usage"]
    if (usage["prompt_tokens"], usage["completion_tokens"]) != (25, 3):
        details.append("usage should keep the counts the broken response had (25 prompt, 3 completion tokens)")
    if result["created"] != 1748779200:
        details.append(f"created is {result['created']}: 2025-06-01T12:00:00Z is 1748779200 in unix seconds")
    if result["id"] != original["id"]:
        details.append("keep the id: it was fine")
    if details:
        raise Mismatch("the response is valid now, but some values changed meaning", details=details)
    other = _fix_another(fix)
    if other:
        raise Mismatch("fix_response repairs BROKEN, but not another broken response: it should read its "
                       "input, not return the answer written out", details=other,
                       hint="take every value from broken (its id, text, counts, time) and rename or convert it")
    return "Fix: valid, and it still says 'Paris.' with the same counts"


#: a second broken response, with other values: a fix that ignores its input gives the first one's
OTHER_BROKEN: dict[str, Any] = {
    **copy.deepcopy(BROKEN_RESPONSE),
    "id": "chatcmpl-0b1d2e",
    "created": "2025-07-14T08:30:00Z",
    "choices": [{"index": 0, "message": {"role": "Assistant", "content": "Lyon is second."},
                 "finishReason": "LENGTH"}],
    "prompt_tokens": 40,
    "completion_tokens": 7,
}


def _fix_another(fix: Callable[[dict[str, Any]], Any]) -> list[str]:
    """What ``fix`` got wrong on OTHER_BROKEN (empty when it carried every value over)."""
    try:
        result = fix(copy.deepcopy(OTHER_BROKEN))
        choice = result["choices"][0]
        got = {"id": result["id"], "content": choice["message"]["content"],
               "finish_reason": choice["finish_reason"], "created": result["created"],
               "counts": (result["usage"]["prompt_tokens"], result["usage"]["completion_tokens"])}
    except Exception as exc:  # the learner's code may crash on input it was not written for
        return [f"fix_response(another broken response) raised {type(exc).__name__}: {exc}"]
    want = {"id": "chatcmpl-0b1d2e", "content": "Lyon is second.", "finish_reason": "length",
            "created": 1752481800, "counts": (40, 7)}
    return [f"{key}: got {short(got[key])}, the input says {short(want[key])}"
            for key in want if got[key] != want[key]]


@check("Stretch: the usage chunk", section=CHUNKS,
       hint="with stream_options={'include_usage': True}, one extra chunk ends the stream: choices is [] "
            "and usage is filled in; every other chunk has usage: null")
def usage_chunk(chunk: Any, items: Any, response_body: Any) -> str:
    require_schema(chunk, "chat_completion_chunk", what="USAGE_CHUNK")
    details = []
    if chunk["choices"] != []:
        details.append("choices should be [] in the usage chunk")
    if not chunk.get("usage"):
        details.append("usage should be the usage object, not null")
    elif isinstance(response_body, dict) and chunk["usage"] != response_body.get("usage"):
        details.append("usage should be the same counts as in RESPONSE")
    if isinstance(items, list) and items and isinstance(items[0], dict) and chunk["id"] != items[0].get("id"):
        details.append("the usage chunk belongs to the same stream: same id as CHUNKS")
    if details:
        raise Mismatch("not the closing usage chunk yet", details=details)
    return "Stretch: a valid closing usage chunk"


def summary(request_body: Any, response_body: Any, items: Any, broken: Any,
            fix: Callable[[dict[str, Any]], Any], usage: Any) -> dict[str, Any]:
    """Schema problem counts of the lab's objects, for the checkpoint; never raises."""
    from ..checks import describe, schema_problems

    def count(make: Callable[[], Any], name: str) -> Any:
        try:
            return len(schema_problems(make(), name))
        except Exception as exc:
            return describe(exc)

    listed = items if isinstance(items, list) else []
    return {
        "request": count(lambda: request_body, "chat_completion_request"),
        "response": count(lambda: response_body, "chat_completion_response"),
        "chunks": [count(lambda c=c: c, "chat_completion_chunk") for c in listed],
        "broken": count(lambda: broken, "chat_completion_response"),
        "fixed": count(lambda: fix(copy.deepcopy(BROKEN_RESPONSE)), "chat_completion_response"),
        "usage_chunk": count(lambda: usage, "chat_completion_chunk"),
    }
