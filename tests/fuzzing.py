"""Fuzzing a running server from its own OpenAPI document, with schemathesis; shared by
tests/test_fuzz.py (short, in the suite) and benchmarks/fuzz.py (long, with a committed result).

Every operation gets requests generated from its declared schema (positive: valid, negative:
invalid). For each response:

- no 5xx, and the response fits the document: a declared status, a declared content type, a
  body valid against the declared schema (schemathesis's checks), and for a stream every event
  valid against the declared event schema (checked here: schemathesis reads 3.1, not ``itemSchema``);
- a valid request is answered 200, or refused with a 400 by one of ``UNDECLARABLE``: the rules
  JSON Schema cannot state, which the document states in words on the field ("declared but
  rejected" otherwise);
- an invalid request is refused with a 4xx ("accepted but undeclared" otherwise).

Since ``model`` is an enum of the served ids, valid requests name the served model and reach the
model; ``Tally.reached`` counts those that did.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import hypothesis.errors
import schemathesis
from hypothesis import HealthCheck, Phase, given
from jsonschema import Draft202012Validator
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

GENERATION = {"POST /v1/chat/completions", "POST /v1/completions", "POST /v1/embeddings", "POST /v1/responses"}

# The server's rules that JSON Schema cannot state (they depend on the model, or compare values
# across the request): the document says them in words on the field, and the server refuses with a
# 400 naming the field. A valid request refused for one of these is counted, not failed.
UNDECLARABLE: dict[str, Callable[[dict[str, Any]], bool]] = {
    "context window (tokens)": lambda e: e.get("code") == "context_length_exceeded",
    "model vocabulary (token ids)": lambda e: bool(re.search(r"within the model's vocabulary|decode to no text|not a token id of this "
                                                             r"model", e["message"])),
    "embedding size (dimensions)": lambda e: e.get("param") == "dimensions",
    "tool definitions (unique names, enforceable schemas)": lambda e: bool(re.search(
        r"Duplicate function name|not a valid JSON Schema", e["message"])) or e.get("code") == "unsupported_schema",
    "tool_choice names a tool": lambda e: "no function named" in e["message"],
    "tool results answer earlier calls": lambda e: bool(re.search(r"must be a response to a preceding message|"
                                                                  r"No tool call found for function call output",
                                                                  e["message"])),
    "logprobs with tools": lambda e: "'logprobs' is not supported together with 'tools'" in e["message"],
    "chat template": lambda e: "chat template rejected" in e["message"],
    # Data, not shape: ids of stored responses (/v1/responses), keys of the keys file (/v1/usage).
    "stored responses (ids that exist)": lambda e: e.get("code") == "response_not_found" or "No input item with id"
                                                   in e["message"],
    "usage (a key of the keys file)": lambda e: "Usage is kept only for the keys" in e["message"],
}


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)   # (operation, mode, status) -> requests
    reached: Counter = field(default_factory=Counter)    # operation -> valid requests answered 200
    valid: Counter = field(default_factory=Counter)      # operation -> valid requests sent
    rules: Counter = field(default_factory=Counter)      # rule -> valid requests refused by it
    valid_negatives: int = 0   # "invalid" requests that the document in fact admits (generator's doing)
    nothing_invalid: list[str] = field(default_factory=list)  # operations no request can be invalid for
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # "operation mode" -> seconds

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def server_errors(self) -> int:
        return sum(n for (_, _, status), n in self.statuses.items() if status >= 500)

    def share_reached(self) -> float:
        sent = sum(self.valid[op] for op in GENERATION)
        return sum(self.reached[op] for op in GENERATION) / sent if sent else 0.0


class short_generations:
    """Caps every generation at 2 tokens, after the request was validated (the verdicts stay the server's)."""

    def __init__(self, engine: Any, tokens: int = 2) -> None:  # a LocalBackend
        self.engine, self.tokens = engine, tokens

    def __enter__(self) -> None:
        runner = self.engine.runner
        self.submit = submit = runner.submit
        runner.submit = lambda prompt, params: submit(prompt, dataclasses.replace(  # type: ignore[method-assign]
            params, max_tokens=min(params.max_tokens, self.tokens)))

    def __exit__(self, *exc: Any) -> None:
        self.engine.runner.submit = self.submit  # type: ignore[method-assign]


def load(root: str) -> tuple[Any, dict[str, Any]]:
    doc = json.loads(_get(root + "/openapi.json"))
    schema = schemathesis.openapi.from_dict(doc)
    schema.config.update(base_url=root)
    schema.config.max_stream_events = 100_000  # schemathesis reads 20 events of a stream by default: all of it
    return schema, doc


def _get(url: str) -> str:
    import httpx

    return httpx.get(url, timeout=60).text


def fuzz(root: str, examples: dict[GenerationMode, int], *, seed: int | None = None,
         on_response: Callable[[str], None] | None = None, only: str = "") -> Tally:
    """``examples[mode]`` requests per operation (fewer where the schema admits fewer); ``only``:
    the operations whose label ("POST /v1/chat/completions") contains it."""
    schema, doc = load(root)
    tally, start = Tally(), time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        if only not in operation.label:
            continue
        for mode, count in examples.items():
            if mode.is_negative and not (operation.body or operation.path_parameters):
                continue  # nothing to make invalid (GET /health)
            began = time.monotonic()
            _run(operation, mode, count, doc, tally, seed, on_response)
            tally.timings[f"{operation.label} {mode.value}"] = round(time.monotonic() - began, 1)
    tally.seconds = time.monotonic() - start
    return tally


def _run(operation: Any, mode: GenerationMode, count: int, doc: dict[str, Any], tally: Tally,
         seed: int | None, on_response: Callable[[str], None] | None) -> None:
    label = operation.label

    @hypothesis.settings(max_examples=count, deadline=None, database=None, derandomize=seed is None,
                         phases=[Phase.generate], suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @given(case=operation.as_strategy(generation_mode=mode))
    def each(case: Any) -> None:
        try:
            response = case.call(timeout=300)
        except Exception as exc:  # a dropped connection is a failure too
            tally.failures.append(f"{label} {mode.value}: {exc!r}")
            return
        tally.statuses[(label, mode.value, response.status_code)] += 1
        if on_response:
            on_response(label)
        for problem in judge(case, response, mode, doc, tally):
            sent = json.dumps(case.body, default=str)[:500] if isinstance(case.body, (dict, list)) else ""
            tally.failures.append(f"{label} {mode.value} -> {response.status_code}: {problem}\n  sent: "
                                  f"{case.formatted_path} {case.query or ''} {sent}")

    if seed is not None:
        each = hypothesis.seed(seed)(each)
    try:
        each()
    except hypothesis.errors.Unsatisfiable:  # the document admits every value of every parameter here
        tally.nothing_invalid.append(f"{label} {mode.value}")


def judge(case: Any, response: Any, mode: GenerationMode, doc: dict[str, Any], tally: Tally) -> list[str]:
    label, status = case.operation.label, response.status_code
    problems: list[str] = []
    try:
        case.validate_response(response, checks=[not_a_server_error, status_code_conformance,
                                                  content_type_conformance, response_schema_conformance])
    except BaseException as exc:  # schemathesis's FailureGroup (an exception group): one line per failed check
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        problems.append(str(exc).strip().splitlines()[0] + ": " + " | ".join(
            getattr(f, "title", str(f)) for f in getattr(exc, "exceptions", [])))
    content_type = response.headers.get("content-type") or [""]  # schemathesis keeps every value of a header
    if content_type[0].startswith("text/event-stream"):
        problems += _stream_problems(response.text, case, doc)
    body = _json(response)
    if mode.is_positive:
        tally.valid[label] += 1
        if status == 200:
            tally.reached[label] += 1
        else:
            error = (body or {}).get("error") if isinstance(body, dict) else None
            rule = next((name for name, test in UNDECLARABLE.items() if error and test(error)), None)
            if status in (400, 404) and rule:
                tally.rules[rule] += 1
            else:
                problems.append(f"declared but rejected: {response.text[:300]}")
    elif status < 400:
        why = _why_invalid(doc, case) if isinstance(case.body, (dict, list)) else "a parameter"
        if why is None:
            tally.valid_negatives += 1
        else:
            problems.append(f"accepted but undeclared: the document refuses this request ({why}), the server "
                            f"answered {status}")
    return problems


def _json(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _request_schema(doc: dict[str, Any], case: Any) -> dict[str, Any]:
    op = doc["paths"][case.operation.path][case.operation.method.lower()]
    return op["requestBody"]["content"]["application/json"]["schema"]


def _why_invalid(doc: dict[str, Any], case: Any) -> str | None:
    """Where the body breaks the declared schema, or None if it does not."""
    from jsonschema.exceptions import best_match

    validator = Draft202012Validator({**_request_schema(doc, case), "components": doc["components"]})
    error = best_match(validator.iter_errors(case.body))
    return None if error is None else f"{error.json_path}: {error.message[:200]}"


def _stream_problems(text: str, case: Any, doc: dict[str, Any]) -> list[str]:
    """Every event's data valid against the declared event schema; ``[DONE]`` last where declared."""
    op = doc["paths"][case.operation.path][case.operation.method.lower()]
    data_schema = op["responses"]["200"]["content"]["text/event-stream"]["itemSchema"]["properties"]["data"]
    branches = data_schema.get("anyOf", [data_schema])
    event = next(b["contentSchema"] for b in branches if "contentSchema" in b)
    done = any(b.get("const") == "[DONE]" for b in branches)
    validator = Draft202012Validator({**event, "components": doc["components"]})
    problems, datas = [], []
    # SSE ends lines with CRLF, LF or CR only; str.splitlines would also split at U+0085 or U+2028,
    # which a model may well write (and JSON leaves unescaped).
    for frame in (f for f in re.split(r"(?:\r\n|\r|\n){2}", text) if f.strip()):
        lines = re.split(r"\r\n|\r|\n", frame)
        strange = [line for line in lines if not line.startswith(("data:", "event:", "id:", "retry:", ":"))]
        data = "\n".join(line[len("data:"):].removeprefix(" ") for line in lines if line.startswith("data:"))
        if strange or not data:
            problems.append(f"not an SSE event with data: {frame[:100]!r}")
            continue
        datas.append(data)
        if data == "[DONE]":
            continue
        try:
            value = json.loads(data)
        except ValueError:
            problems.append(f"event data is not JSON: {data[:100]!r}")
            continue
        for error in validator.iter_errors(value):
            problems.append(f"event outside the declared schema: {error.message[:200]}")
    if done and (not datas or datas[-1] != "[DONE]"):
        problems.append("the stream does not end with data: [DONE]")
    if "[DONE]" in datas[:-1] or (not done and "[DONE]" in datas):
        problems.append("data: [DONE] where the document does not have it")
    return problems
