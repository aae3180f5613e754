"""schemas/: valid JSON Schemas, examples that pass, pitfalls refused by name, and proof that our
verdicts are OpenAI's, except for a short list of deliberate differences, each with its reason.

OpenAI's official spec enters through ``schemas/openai_spec_subset.json``: the components of
openapi.yaml that our schemas correspond to, and everything they reference, copied unmodified (the
full file is 3 MB of YAML and not part of this repository; the subset ships with the package, for
``coursekit conform``). ``python tests/test_schemas.py openapi.yaml`` regenerates it; a test
checks that it still matches the full spec when the full spec is at hand.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

import schemas
from schema_cases import CASES, Bad
from schemas import __main__ as cli
from schemas import openai_spec, validation
from schemas.openai_spec import (NO_COMPONENT, SUBSET, as_json_schema, extract_subset, nullable_as_json_schema,
                                 spec_validators)

HERE = Path(__file__).parent
FULL_SPEC = Path(os.environ.get("OPENAI_OPENAPI_SPEC", "/work/shared/spec/openai-openapi.yaml"))

# ---- the deliberate differences ------------------------------------------------------------------

@dataclass(frozen=True)
class Difference:
    stricter: bool  # True: we refuse what the spec accepts; False: we accept what it refuses
    reason: str


DIFFERENCES = {
    "usage_required": Difference(True, (
        "The spec makes usage optional on chat and legacy completion responses. Every non-streamed "
        "OpenAI response carries it, and clients read it unchecked to count cost and context: a server "
        "that omits it passes the spec and breaks them. Stream chunks keep it optional.")),
    "usage_arithmetic": Difference(True, (
        "The spec types token counts as bare integers, so -1 tokens, or a total_tokens that is not "
        "prompt_tokens + completion_tokens, pass. Counts are never negative (minimum: 0); the sum "
        "compares two fields, which JSON Schema cannot express, so schemas.validate checks it in code.")),
    "closed_objects": Difference(True, (
        "The spec leaves objects open (only the embedding request says additionalProperties: false), so "
        "any extra field passes. Ours are closed: a camelCase systemFingerprint in a response is a field "
        "no client will ever read, and an unknown request field such as maxTokens must be refused, as "
        "OpenAI does ('Unrecognized request argument supplied'), not silently ignored with its limit.")),
    "content_needs_tool_calls": Difference(True, (
        "The spec lets an assistant message's content be null in any case (refusals and audio answers, "
        "which a local model never produces). Without tool_calls, a null content is a server bug that "
        "crashes clients calling content.strip(); in a request, such a message says nothing.")),
    "base64_embeddings": Difference(False, (
        "The spec's request offers encoding_format: 'base64', yet its response types embedding as a "
        "float array only. The API then sends a base64 string, and the official Python client asks for "
        "base64 by default (openai/lib/_parsing/_embeddings.py): refusing it would refuse the most "
        "common real response.")),
    "empty_page_ids": Difference(False, (
        "The spec types a list's first_id and last_id as strings, which an empty page (after= the last item) "
        "cannot give: there is no first item. They are null then, not an invented id.")),
    "unserved_features": Difference(True, (
        "The spec accepts built-in tools (web_search, file_search, code_interpreter...), image and file parts, "
        "reasoning settings and include values for them, and a request without input (a stored prompt "
        "supplies it). A local text model has none of these; the server refuses each by name with a 400 "
        "rather than answer as if it had run them, and the request schema says so.")),
    "function_tool_defaults": Difference(False, (
        "The spec requires strict and parameters on every function tool, null allowed. Chat completions make "
        "both optional, and tools ported from there omit them; absent means what null means (no parameters: "
        "an empty object; strict or not, the grammar enforces the schema), so there is nothing to refuse.")),
    "assistant_output_text": Difference(False, (
        "An assistant message with output_text parts is an earlier response's output message; the spec "
        "accepts it only with the id and status the server gave it. A client that rebuilds the history "
        "from its own copy of the text leaves them out; the text is all the model reads, so it is accepted.")),
    "status_consistency": Difference(True, (
        "The spec does not tie status to the rest: a completed response without usage, an incomplete one "
        "without incomplete_details, a response.completed event carrying a response still in progress all "
        "pass it. Each leaves a client unable to tell what happened (was the text cut? what did it cost?).")),
    "legacy_stream_nulls": Difference(False, (
        "The spec describes legacy completion chunks with the non-streamed component, whose finish_reason "
        "and usage are never null. In a stream, finish_reason is null until a choice's last chunk, and "
        "with include_usage every chunk has usage: null, exactly as in chat; completion_chunk says so.")),
}

# Valid examples that the spec refuses (looser differences show on valid data, not on counter-examples).
EXAMPLE_DIFFERENCES = {
    "embedding_response/examples[1]": "base64_embeddings",
    "completion_chunk/examples[0]": "legacy_stream_nulls",
    "completion_chunk/examples[2]": "legacy_stream_nulls",
    "response_input_item_list/examples[2]": "empty_page_ids",
    "response_request/examples[4]": "function_tool_defaults",
    "response_request/examples[5]": "assistant_output_text",
}


@dataclass(frozen=True)
class Verdict:
    """One value to judge with both our schema and OpenAI's, and the difference it shows, if any.

    For a counter-example, ``base`` is the valid example it was made from and ``path`` the field it
    breaks: the spec must accept the base and, when it refuses, refuse at the same place, so that
    both verdicts are about the one change.
    """

    id: str
    schema: str
    instance: Any
    differs: str | None
    base: Any = None
    path: str | None = None


EXAMPLES = [Verdict(f"{name}/examples[{i}]", name, example, EXAMPLE_DIFFERENCES.get(f"{name}/examples[{i}]"))
            for name in schemas.names() for i, example in enumerate(schemas.load(name)["examples"])]
# OpenAI's spec judges the OpenAI schemas; the other protocols' (ollama_*, anthropic_*, llamacpp_*) have
# their own checks: their clients in tests/test_ollama.py ..., and llama-server's captured bodies.
OPENAI = {*openai_spec.COMPONENTS, *NO_COMPONENT}
VERDICTS = [v for v in EXAMPLES if v.schema in OPENAI] + [
    Verdict(case.id, case.schema, case.instance(), case.differs, schemas.load(case.schema)["examples"][case.example],
            case.path) for case in CASES if case.schema in OPENAI]


@pytest.fixture(scope="session")
def subset() -> dict[str, Any]:
    return json.loads(SUBSET.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def full_spec() -> dict[str, Any]:
    """OpenAI's whole openapi.yaml, parsed once (several seconds), when it is at hand."""
    if not FULL_SPEC.exists():
        pytest.skip(f"the full spec is not at {FULL_SPEC} (set OPENAI_OPENAPI_SPEC)")
    yaml = pytest.importorskip("yaml")
    return yaml.load(FULL_SPEC.read_bytes(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@pytest.fixture(scope="session")
def openai(subset: dict[str, Any]) -> dict[str, Draft202012Validator]:
    """Validators for OpenAI's components, built once per session."""
    return spec_validators(as_json_schema(subset))


# ---- the schemas themselves ----------------------------------------------------------------------

NOT_API = {"common", "checkpoint_record"}  # shared parts; course machinery (coursekit's checkpoint log)


def test_names_match_the_files() -> None:
    """An API schema file that names() does not list would never be checked, nor its examples run."""
    on_disk = {p.name.removesuffix(".schema.json") for p in Path(schemas.__file__).parent.glob("*.schema.json")}
    assert on_disk == {*schemas.names(), *NOT_API}


@pytest.mark.parametrize("name", [*schemas.names(), "common"])
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = schemas.load(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"{schemas.BASE_URI}{name}.schema.json"
    assert schema["title"] and len(schema["description"]) > 80, "the description should teach the pitfall"
    assert name == "common" or schema["examples"], "an object without examples has nothing to show the course"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda v: v.id)
def test_example_is_valid(example: Verdict) -> None:
    assert schemas.validate(example.instance, example.schema) == []


def test_refs_stay_inside_the_registry() -> None:
    """A $ref to a file that does not exist must fail loudly, not fetch anything."""
    from referencing.exceptions import Unresolvable

    with pytest.raises(Unresolvable):
        schemas.registry().resolver(schemas.BASE_URI).lookup("nowhere.schema.json")


# ---- counter-examples ----------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_counter_example_is_refused_where_it_is_wrong(case: Bad) -> None:
    problems = schemas.validate(case.instance(), case.schema)
    at_path = [p for p in problems if p.path == case.path]
    assert at_path, f"expected a problem at {case.path}, got: {[str(p) for p in problems]}"
    assert all(str(p).startswith(p.path + ": ") and p.expected and p.found for p in problems)
    assert any(case.says in str(p) for p in at_path), f"{case.says!r} not in {[str(p) for p in at_path]}"


def test_problems_say_expected_and_found_in_plain_words() -> None:
    bad = {"id": "x", "object": "chat.completion", "created": 1, "model": "m", "usage": {"prompt_tokens": 1,
           "completion_tokens": 1, "total_tokens": 2},
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi", "refusal": None},
                        "logprobs": None, "finish_reason": "STOP", "finishReason": "stop"}]}
    assert [(p.path, p.message, p.expected, p.found) for p in schemas.validate(bad, "chat_completion_response")] == [
        ("choices[0]", "choices[0]: unexpected field 'finishReason' (fields are snake_case: did you mean "
         "'finish_reason'?)", "only the fields 'index', 'message', 'logprobs', 'finish_reason'", "field 'finishReason'"),
        ("choices[0].finish_reason", "choices[0].finish_reason: 'STOP' is not one of 'stop', 'length', "
         "'tool_calls', 'content_filter', 'function_call'",
         "one of 'stop', 'length', 'tool_calls', 'content_filter', 'function_call'", "a string 'STOP'"),
    ]


def test_any_of_reports_the_branch_that_fits_not_every_branch() -> None:
    """usage is "an object or null": for a broken object, the object's problems are the useful ones."""
    chunk = schemas.load("chat_completion_chunk")["examples"][3]
    chunk["usage"] = {"prompt_tokens": "31", "total_tokens": 41}
    assert [str(p) for p in schemas.validate(chunk, "chat_completion_chunk")] == [
        "usage.completion_tokens: required field is missing",
        "usage.prompt_tokens: expected an integer, found a string '31'",
    ]


def test_problems_are_sorted_by_path_with_numeric_indexes() -> None:
    response = schemas.load("chat_completion_response")["examples"][2]
    choices = [dict(response["choices"][0], index=i) for i in range(11)]
    for choice in (choices[10], choices[2]):
        choice["finish_reason"] = "eos"
    paths = [p.path for p in schemas.validate(dict(response, choices=choices), "chat_completion_response")]
    assert paths == ["choices[2].finish_reason", "choices[10].finish_reason"]


def test_check_raises_with_every_problem() -> None:
    with pytest.raises(schemas.SchemaError) as raised:
        schemas.check({"error": {"message": "x", "type": "server_error"}}, "error")
    assert isinstance(raised.value, ValueError)
    assert str(raised.value).splitlines() == [str(p) for p in raised.value.problems] == [
        "error.code: required field is missing", "error.param: required field is missing"]
    assert schemas.check(schemas.load("error")["examples"][0], "error") is None


def test_unknown_schema_name_is_refused() -> None:
    with pytest.raises(ValueError, match="chat_completion_response"):
        schemas.validate({}, "chat_completion")


def test_validators_are_built_once() -> None:
    """Every server response of the test suite goes through validate: no schema work per call."""
    schemas.validate({}, "model")
    assert validation._validator("model") is validation._validator("model")
    assert validation.registry() is validation.registry()


@pytest.mark.parametrize("module", [schemas, openai_spec], ids=lambda m: m.__name__)
def test_package_docstring_example_runs(module: Any) -> None:
    import doctest

    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0


def test_load_returns_a_copy() -> None:
    schemas.load("model")["properties"].clear()
    assert schemas.validate({"id": "m", "object": "model", "created": 1, "owned_by": "me", "x": 1}, "model")


# ---- agreement with OpenAI's spec ----------------------------------------------------------------

@pytest.mark.parametrize("verdict", [v for v in VERDICTS if v.schema not in NO_COMPONENT], ids=lambda v: v.id)
def test_verdict_agrees_with_openai_spec(verdict: Verdict, openai: dict[str, Draft202012Validator]) -> None:
    problems = schemas.validate(verdict.instance, verdict.schema)
    spec_errors = list(openai[verdict.schema].iter_errors(verdict.instance))
    ours, theirs = not problems, not spec_errors
    if verdict.differs is None:
        assert ours == theirs, (f"ours: {[str(p) for p in problems] or 'valid'}; the spec: "
                                f"{best_match(spec_errors).message if spec_errors else 'valid'}")
    else:
        stricter = DIFFERENCES[verdict.differs].stricter
        assert (ours, theirs) == (not stricter, stricter), (
            f"listed as deliberate difference {verdict.differs!r}, but both say {'valid' if ours else 'invalid'}: "
            "remove it from the list")
    if verdict.base is not None:
        assert openai[verdict.schema].is_valid(verdict.base), "a counter-example must start from a spec-valid example"
    if verdict.path is not None and spec_errors:
        spec_paths = [validation._path(e.absolute_path) for e in spec_errors]
        assert any(_same_place(verdict.path, p) for p in spec_paths), f"the spec refuses elsewhere: {spec_paths}"


def _same_place(ours: str, theirs: str) -> bool:
    """One path contains the other: the spec may stop at the object whose field we name, or go deeper."""
    short, long = sorted((ours, theirs), key=len)
    return short in ("$", long) or long.startswith((short + ".", short + "["))


def test_every_listed_difference_is_shown_by_a_case() -> None:
    """A reason nobody can observe is not a difference any more: the list must stay short and true."""
    used = {v.differs for v in VERDICTS if v.differs}
    assert used == set(DIFFERENCES)


def test_nullable_rewrite_is_needed(subset: dict[str, Any]) -> None:
    """Without the rewrite, the spec would refuse OpenAI's own stream chunks (usage: null)."""
    chunk = schemas.load("chat_completion_chunk")["examples"][2]
    assert chunk["usage"] is None
    assert not spec_validators(subset)["chat_completion_chunk"].is_valid(chunk)
    assert spec_validators(nullable_as_json_schema(subset))["chat_completion_chunk"].is_valid(chunk)


@pytest.mark.parametrize("name", list(NO_COMPONENT))
def test_schema_without_component_accepts_the_spec_example(name: str) -> None:
    """No component to compare with: the spec's own example body must pass."""
    assert schemas.validate(NO_COMPONENT[name]["example"], name) == []


@pytest.mark.parametrize("name", list(NO_COMPONENT))
def test_copied_example_is_still_the_specs(name: str, full_spec: dict[str, Any]) -> None:
    path, method = NO_COMPONENT[name]["operation"]
    example = full_spec["paths"][path][method]["x-oaiMeta"]["examples"]["response"]
    assert json.loads(example) == NO_COMPONENT[name]["example"]


def test_discriminator_rewrite_is_needed(subset: dict[str, Any]) -> None:
    """Without it, the spec would refuse a plain developer message with input_text parts."""
    request = schemas.load("response_request")["examples"][2]
    assert request["input"][0]["content"][0]["type"] == "input_text"
    assert not spec_validators(nullable_as_json_schema(subset))["response_request"].is_valid(request)
    assert spec_validators(as_json_schema(subset))["response_request"].is_valid(request)


def test_spec_subset_matches_the_full_spec(subset: dict[str, Any], full_spec: dict[str, Any]) -> None:
    assert extract_subset(full_spec, FULL_SPEC.read_bytes()) == subset, (
        f"regenerate: python tests/test_schemas.py {FULL_SPEC}")


# ---- the command line ----------------------------------------------------------------------------

def test_cli_validates_a_good_and_a_bad_file(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    response = schemas.load("chat_completion_response")["examples"][0]
    good.write_text(json.dumps(response))
    bad.write_text(json.dumps(dict(response, usage=None, object="chat.completion.chunk")))
    # Both at once: each start-up imports jsonschema (about a second).
    ok, refused = [subprocess.Popen([sys.executable, "-m", "schemas", "validate", str(f), "--schema",
                                     "chat_completion_response"], stdout=subprocess.PIPE, text=True, cwd=HERE.parent)
                   for f in (good, bad)]
    assert (ok.communicate(timeout=60)[0], ok.returncode) == ("OK: valid chat_completion_response\n", 0)
    assert (refused.communicate(timeout=60)[0].splitlines(), refused.returncode) == ([
        "object: expected 'chat.completion', found a string 'chat.completion.chunk'",
        "usage: expected an object, found null",
    ], 1)


def _main(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, stdin: str, *args: str) -> tuple[int, str]:
    """The same entry point in-process, for the input forms."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main(list(args))
    return code, capsys.readouterr().out


def test_cli_reads_stdin_arrays_and_event_streams(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    chunks = schemas.load("chat_completion_chunk")["examples"]
    assert _main(capsys, monkeypatch, json.dumps(chunks), "validate", "-", "--each", "--schema",
                 "chat_completion_chunk") == (0, f"OK: valid chat_completion_chunk ({len(chunks)} items)\n")

    broken = {"error": {"message": "The server had an error.", "type": "server_error"}}
    stream = "".join(f"data: {json.dumps(c)}\n\n" for c in [chunks[0], broken]) + "data: [DONE]\n\n"
    assert _main(capsys, monkeypatch, stream, "validate", "-", "--schema", "chat_completion_chunk") == (
        1, "[1] error.code: required field is missing\n[1] error.param: required field is missing\n")

    assert _main(capsys, monkeypatch, "{", "validate", "-", "--schema", "model")[0] == 2
    lines = schemas.load("ollama_chat_response")["examples"]
    ndjson = "".join(json.dumps(line) + "\n" for line in [*lines, {"error": "model 'x' not found"}])
    assert _main(capsys, monkeypatch, ndjson, "validate", "-", "--schema", "ollama_chat_response") == (
        0, f"OK: valid ollama_chat_response ({len(lines) + 1} items)\n")
    named = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in schemas.load("anthropic_stream_event")["examples"])
    assert _main(capsys, monkeypatch, named, "validate", "-", "--schema", "anthropic_stream_event")[0] == 0
    code, out = _main(capsys, monkeypatch, ndjson.replace('"done": false', '"done": "no"', 1), "validate", "-",
                      "--schema", "ollama_chat_response")
    assert (code, out) == (1, "[0] done: expected a boolean, found a string 'no'\n")
    code, out = _main(capsys, monkeypatch, "", "list")
    assert (code, out.split()) == (0, schemas.names())


if __name__ == "__main__":  # python tests/test_schemas.py PATH/TO/openapi.yaml
    import yaml

    raw = Path(sys.argv[1]).read_bytes()
    spec = yaml.load(raw, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    SUBSET.write_text(json.dumps(extract_subset(spec, raw), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {SUBSET}")
