"""Checks for lab 07: a forced tool call under a grammar, the client's tool loop, structured output."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..checks import Mismatch, Section, check, require_schema, short, type_name
from ..checks import hint as hint  # check.hint(check.NAME): the concrete hint, on request
from ..model import MODEL_ID

CALLS = Section("07-tools", "A forced call, request and response")
LOOP = Section("07-tools", "The round trip")
GRAMMARS = Section("07-tools", "Grammars: constraining sampling")
STRUCTURED = Section("07-tools", "Structured outputs: `response_format`")
EXAM = Section("labs", "The final exam")
SECTIONS = (CALLS, LOOP, GRAMMARS, STRUCTURED, EXAM)



def _response(message: Any, finish_reason: str = "tool_calls") -> dict[str, Any]:
    return {"id": "chatcmpl-lab7", "object": "chat.completion", "created": 1748779200, "model": MODEL_ID,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


@check("The tool-call message", section=CALLS,
       nudge="a tool call is an assistant message with no text and a list of calls, each with its own id "
             "and the function's name and arguments (a JSON string)",
       hint="role assistant, content and refusal null, tool_calls: one item with a fresh 'call_' id, type "
            "'function', and a function object holding the name and the arguments text")
def tool_message(tool_call_message: Callable[[str, str], Any]) -> str:
    arguments = '{"city": "Paris", "unit": "celsius"}'
    message = tool_call_message("get_weather", arguments)
    if not isinstance(message, dict):
        raise Mismatch(f"tool_call_message returned {type_name(message)}, not a message dict")
    require_schema(_response(message), "chat_completion_response",
                   what="a chat.completion carrying tool_call_message('get_weather', ...)")
    details = []
    if message.get("content") is not None:
        details.append(f"content is {short(message.get('content'))}: with tool_calls it is null (None), not text")
    calls = message.get("tool_calls") or []
    if len(calls) != 1:
        details.append(f"{len(calls)} tool calls: one call to get_weather was asked for")
    else:
        call = calls[0]
        if not call["id"].startswith("call_"):
            details.append(f"the call's id is {call['id']!r}: OpenAI's start with 'call_'")
        elif call["id"] == (tool_call_message("get_weather", arguments).get("tool_calls") or [{}])[0].get("id"):
            details.append("two calls got the same id: the tool message answers one call by its id, so each is new")
        if call["function"]["name"] != "get_weather":
            details.append(f"function.name is {call['function']['name']!r}, not 'get_weather'")
        if call["function"]["arguments"] != arguments:
            details.append("function.arguments should be the arguments string exactly as generated")
    if details:
        raise Mismatch("a valid message, but not the call that was asked for", details=details)
    return "The tool-call message: content null, one call with a call_ id, arguments as a JSON string"


@check("A forced tool call", section=GRAMMARS,
       nudge="a forced call is generation under a grammar: the tool's parameters schema decides what the "
             "model can write, and the answer is re-dressed as a call",
       hint="when a tool is forced: generate under the tool's parameters schema, collect the answer, then "
            "replace its message with your tool-call message (the text is the arguments) and its "
            "finish_reason 'stop' with 'tool_calls'")
def forced_call(http: Any, tool: dict[str, Any]) -> str:
    import jsonschema

    name = tool["function"]["name"]
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "What's the weather like in Paris today?"}],
            "tools": [tool], "tool_choice": {"type": "function", "function": {"name": name}},
            "max_tokens": 32, "temperature": 0}
    r = http.post("/v1/chat/completions", json=body)
    if r.status_code != 200:
        raise Mismatch(f"a request forcing {name} answered {r.status_code}", details=[f"body: {r.text[:160]!r}"])
    out = r.json()
    require_schema(out, "chat_completion_response", what="the answer to a forced tool call")
    choice = out["choices"][0]
    calls = choice["message"].get("tool_calls")
    if not calls:
        raise Mismatch(f"the answer has no tool_calls; the model wrote text instead: "
                       f"{short(choice['message']['content'], 80)}")
    call = calls[0]["function"]
    if call["name"] != name:
        raise Mismatch(f"the call is to {call['name']!r}, not {name!r}")
    try:
        arguments = json.loads(call["arguments"])
    except ValueError:
        raise Mismatch(f"the arguments are not JSON: {call['arguments']!r}",
                       hint="generate them under the grammar of the tool's parameters schema") from None
    try:
        jsonschema.validate(arguments, tool["function"]["parameters"])
    except jsonschema.ValidationError as exc:
        raise Mismatch(f"the arguments {call['arguments']} break the tool's schema: {exc.message}") from None
    if choice["finish_reason"] != "tool_calls":
        raise Mismatch(f"finish_reason is {choice['finish_reason']!r}: after a complete call it is 'tool_calls'")
    return f"A forced tool call: {name}({call['arguments']}), valid against its schema"


def _as_dict(message: Any) -> dict[str, Any]:
    if isinstance(message, dict):
        return message
    if hasattr(message, "model_dump"):  # the SDK's ChatCompletionMessage
        return message.model_dump(exclude_none=True)
    raise Mismatch(f"a message is {type_name(message)}, not a dict")


@check("The tool-calling loop", section=LOOP,
       nudge="the client runs the tool, not the server: it sends the call and its result back, and asks "
             "again",
       hint="after the first reply: run the named function with its parsed arguments, append the assistant "
            "message as it came (with its tool_calls) and a tool message answering the call's id with the "
            "result as JSON text; ask again without forcing the tool")
def tool_loop(answer_with_tools: Callable[[str], Any], calls: list[Any]) -> str:
    calls.clear()
    out = answer_with_tools("What's the weather like in Paris today?")
    if not isinstance(out, tuple) or len(out) != 2:
        raise Mismatch(f"answer_with_tools returned {type_name(out)}: return (messages, final_reply)")
    messages, final = out
    messages = [_as_dict(m) for m in messages]
    roles = [m.get("role") for m in messages]
    if roles != ["user", "assistant", "tool"]:
        raise Mismatch(f"the conversation's roles are {roles}: expected user, assistant (the call), tool "
                       "(its result)")
    made = messages[1].get("tool_calls") or []
    if not made:
        raise Mismatch("the assistant message you sent back has no tool_calls: send the model's message as it is")
    call = made[0]
    call_id = call["id"] if isinstance(call, dict) else call.id
    if messages[2].get("tool_call_id") != call_id:
        raise Mismatch(f"the tool message answers {messages[2].get('tool_call_id')!r}, but the call's id is "
                       f"{call_id!r}: that is how the model knows which call a result belongs to")
    if not isinstance(messages[2].get("content"), str):
        raise Mismatch("the tool message's content should be a string: json.dumps(result)")
    if len(calls) != 1:
        raise Mismatch(f"get_weather ran {len(calls)} times: run the call the model asked for, once")
    reply = final.choices[0]
    if reply.message.tool_calls:
        raise Mismatch("the final reply is another call, not text for the user: did the second request "
                       "still force get_weather? A tool_choice that names a function obliges the server to "
                       "call it, on every request that carries it",
                       hint="send the second request without tool_choice (or with tool_choice='none'); "
                            "keep tools, so that the model knows what the call was")
    if not reply.message.content:
        raise Mismatch("the final reply has no text: the model should answer the user, using the result")
    return (f"The tool-calling loop: get_weather({json.dumps(calls[0])}) ran, its result went back, "
            f"and the model answered in {reply.finish_reason!r} text")


COUNTRY_SCHEMA = {
    "type": "object",
    "properties": {
        "country": {"type": "string"},
        "capital": {"type": "string"},
        "continent": {"type": "string",
                      "enum": ["Africa", "Asia", "Europe", "North America", "Oceania", "South America"]},
    },
    "required": ["country", "capital", "continent"],
    "additionalProperties": False,
}


@check("Structured output", section=STRUCTURED,
       nudge="structured output is the same grammar as a forced call, taken from response_format instead "
             "of a tool",
       hint="response_schema gives the schema inside response_format for json_schema, any JSON object for "
            "json_object, and nothing otherwise; the route generates under it")
def structured(client: Any) -> str:
    import jsonschema

    reply = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Tell me about France."}], max_tokens=32,
        temperature=0, response_format={"type": "json_schema",
                                        "json_schema": {"name": "country", "schema": COUNTRY_SCHEMA}})
    choice = reply.choices[0]
    text = choice.message.content or ""
    try:
        value = json.loads(text)
    except ValueError:
        if choice.finish_reason == "length" and text.lstrip().startswith("{"):
            raise Mismatch(f"max_tokens cut the JSON (finish_reason 'length'): {text[:80]!r}") from None
        raise Mismatch(f"the content is not JSON: {text[:80]!r}",
                       hint="generate it under the schema's grammar, as for the tool call") from None
    try:
        jsonschema.validate(value, COUNTRY_SCHEMA)
    except jsonschema.ValidationError as exc:
        raise Mismatch(f"the JSON breaks the schema: {exc.message}") from None
    return f"Structured output: {text.strip()} is valid against the schema"


_EXAM: dict[str, Any] = {}
LAB_CHECKS = ("The tool-call message", "A forced tool call", "Structured output", "The tool-calling loop")

#: optional rows of `coursekit conform` for what the labs build: the course's exam requires them too
BUILT_IN_THE_LABS = {
    "completions": "lab 4", "completions.stream": "lab 4", "embeddings.float": "lab 6",
    "embeddings.base64": "lab 6", "tools": "lab 7", "tools.stream": "lab 7", "json.object": "lab 7",
    "json.schema": "lab 7",
}


@check("The final exam", section=EXAM,
       nudge="the exam grades the whole server: each failing row names a feature, and the lab that built it",
       hint="read each failing row's reason: it names the request and what came back; the lab that built "
            "that feature, and its chapter, tell you where to fix it")
def final_exam(server: Any) -> str:
    """``coursekit conform`` on the learner's server: every required row passes, and so does every
    optional feature the labs built; the others may be "not offered", never broken."""
    from ..checks import RESULTS

    _EXAM.clear()
    if not getattr(server, "ready", False):
        raise Mismatch("your server is not running: see what the cell that started it printed")
    failing = [name for name in LAB_CHECKS if RESULTS.get(name) is False]
    if failing:  # the exam grades a finished server: the rows those checks cover would fail too
        raise Mismatch(f"first pass the lab's other checks: {', '.join(failing)}")
    try:
        from ..conform import run
    except ImportError:
        raise Mismatch("this checkout has no conformance checker (coursekit.conform): update the course "
                       "(git pull) and reinstall it (make setup)") from None
    report = run(server.base_url, api_key=getattr(server, "api_key", None), model=MODEL_ID, timeout=120)
    _EXAM.update(statuses=report.statuses(), ok=report.ok)
    print(report.table())
    wrong = [row for row in report.rows
             if row.status == "fail" or (row.required or row.id in BUILT_IN_THE_LABS) and row.status != "pass"]
    if wrong:
        details = [f"{row.id}" + (f" ({BUILT_IN_THE_LABS[row.id]})" if row.id in BUILT_IN_THE_LABS else "")
                   + f": {row.status}: {row.reason}" for row in wrong]
        raise Mismatch(f"{len(wrong)} row{'s' if len(wrong) > 1 else ''} of the exam "
                       f"{'do' if len(wrong) > 1 else 'does'} not pass", details=details)
    offered = sum(1 for row in report.rows if not row.required and row.status == "pass")
    return (f"The final exam: all {_required(report)} required rows pass, and {offered} of "
            f"{sum(1 for row in report.rows if not row.required)} optional features: your server conforms")


def _required(report: Any) -> int:
    return sum(1 for row in report.rows if row.required)


def exam_summary() -> dict[str, Any]:
    """The exam's rows (row id -> status), for the checkpoint; empty if it did not run."""
    return dict(_EXAM.get("statuses") or {})
