"""Wrong answers a learner could plausibly give that the lab checks must refuse (issue 18).

Each test runs a check on the named wrong answer and expects it to fail; the solution passing the
same check is proven by tests/test_labs.py, which runs every solved notebook.
"""

from __future__ import annotations

import contextlib
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coursekit.checks import LabCheckFailed
from coursekit.labchecks import errors

BASE, CAP = 0.5, 8.0


def _delay(attempt: int, retry_after: object, rand: object, jitter: object) -> float:
    if retry_after is not None:
        try:
            return float(retry_after)  # type: ignore[arg-type]
        except ValueError:
            pass
    return jitter(min(CAP, BASE * 2 ** attempt), rand)  # type: ignore[operator]


def test_backoff_refuses_full_jitter_that_can_wait_nothing() -> None:
    def full_jitter(attempt: int, retry_after: object = None, *, rand: object = random.random) -> float:
        return _delay(attempt, retry_after, rand, lambda d, r: d * r())
    with pytest.raises(LabCheckFailed) as info:
        errors.backoff(full_jitter)
    assert "barely waits" in info.value.what
    from coursekit.checks import CONCRETE
    assert "at least half" in CONCRETE["Backoff with jitter"]


def test_backoff_accepts_half_to_all_of_the_delay() -> None:
    def half_jitter(attempt: int, retry_after: object = None, *, rand: object = random.random) -> float:
        return _delay(attempt, retry_after, rand, lambda d, r: d * (0.5 + r() / 2))
    errors.backoff(half_jitter)  # raises LabCheckFailed when it does not pass


def test_fix_check_refuses_a_fix_that_returns_a_constant() -> None:
    import copy

    from coursekit.labchecks import openai_format

    def solution(broken: dict) -> dict:
        import datetime as dt
        fixed = copy.deepcopy(broken)
        choice = fixed["choices"][0]
        choice["finish_reason"] = choice.pop("finishReason").lower()
        choice["logprobs"] = None
        choice["message"].update(role="assistant", refusal=None)
        fixed["created"] = int(dt.datetime.fromisoformat(fixed["created"].replace("Z", "+00:00")).timestamp())
        prompt, completion = fixed.pop("prompt_tokens"), fixed.pop("completion_tokens")
        fixed["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion}
        return fixed
    answer = solution(openai_format.BROKEN_RESPONSE)
    openai_format.fixed(solution)
    with pytest.raises(LabCheckFailed) as info:
        openai_format.fixed(lambda broken: copy.deepcopy(answer))
    assert "not another broken response" in info.value.what
    assert "Lyon is second." in " ".join(info.value.details)


@pytest.fixture()
def package(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """myserver/ as the solutions of labs 01 to ``request.param`` write it, importable (forgotten afterwards)."""
    import sys
    from pathlib import Path

    from coursekit import export

    root = Path(__file__).resolve().parents[1]
    export.export_notebooks(sorted((root / "solutions").glob(f"0[1-{getattr(request, 'param', 3)}]*.ipynb")), tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "myserver" or m.startswith("myserver.")]:
        monkeypatch.delitem(sys.modules, name)
    yield tmp_path / "myserver"
    for name in [m for m in sys.modules if m == "myserver" or m.startswith("myserver.")]:
        del sys.modules[name]


def _client_of_fake_app() -> Any:
    from fastapi.testclient import TestClient

    from coursekit.labchecks.fakes import FakeEngine, package_module

    app = package_module("app").create_app(package_module("settings").Settings(), engine=FakeEngine(pieces=6))
    return TestClient(app, raise_server_exceptions=False)


def test_chat_endpoint_refuses_an_answer_kept_from_an_earlier_request(package: Path) -> None:
    from coursekit.labchecks import fastapi_basics

    with _client_of_fake_app() as http:
        fastapi_basics.chat_endpoint(http)  # the solution passes
    chat = package / "routers" / "chat.py"
    source = chat.read_text()
    line = "    events = await worker.run("
    assert line in source
    chat.write_text("CACHE = {}\n" + source.replace(
        line, "    events = CACHE.setdefault('events', None) or await worker.run(").replace(
        "    return collect(events, meta)", "    CACHE['events'] = events\n    return collect(events, meta)"))
    import sys
    for name in [m for m in sys.modules if m.startswith("myserver")]:
        del sys.modules[name]
    with _client_of_fake_app() as http, pytest.raises(LabCheckFailed) as info:
        fastapi_basics.chat_endpoint(http)
    assert "does not come from the model" in info.value.what


@pytest.mark.parametrize("message", [lambda name: "Error.", lambda name: name, lambda name: "Something failed."])
def test_error_mapping_refuses_messages_that_do_not_say_what_went_wrong(message: Any) -> None:
    from coursekit.labchecks import api_design

    def table(say: Any) -> dict:
        return {name: (status, {"error": {"message": say(name), "type": type_, "param": param, "code": code}})
                for name, (status, type_, param, code) in api_design.EXPECTED_ERRORS.items()}
    api_design.errors(table(lambda name: f"{name}: {api_design.MESSAGE_WORDS[name][-1]} went wrong here"))
    with pytest.raises(LabCheckFailed) as info:
        api_design.errors(table(message))
    assert "what went wrong" in " ".join(info.value.details)


@pytest.mark.parametrize("package", [4], indirect=True)
def test_stream_check_refuses_a_stream_sent_all_at_once(package: Path) -> None:
    from coursekit.labchecks import streaming

    with _client_of_fake_app() as http:
        streaming.stream_endpoint(http)  # the solution passes
    module = package / "streaming.py"
    source = module.read_text()
    loop = "    async for chunk in chunks:\n        yield sse_event(json.dumps(chunk))\n"
    assert loop in source
    module.write_text(source.replace(loop, "    everything = [chunk async for chunk in chunks]\n"
                                           "    for chunk in everything:\n        yield sse_event(json.dumps(chunk))\n"))
    import sys
    for name in [m for m in sys.modules if m.startswith("myserver")]:
        del sys.modules[name]
    with _client_of_fake_app() as http, pytest.raises(LabCheckFailed) as info:
        streaming.stream_endpoint(http)
    assert "sent all at once" in info.value.what


def test_waiting_for_health_stops_on_a_model_that_failed_to_load() -> None:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from fastapi.testclient import TestClient

    from coursekit import lab

    app = FastAPI()
    answers = iter([("model_loading", "The model is still loading."),
                    ("model_load_failed", "The model failed to load: ValueError: not a GGUF file")])

    @app.get("/health")
    def health() -> JSONResponse:
        code, message = next(answers)
        return JSONResponse({"error": {"message": message, "type": "server_error", "param": None,
                                       "code": code}}, status_code=503)
    with TestClient(app) as http, pytest.raises(lab.ModelNotReady, match="not a GGUF file"):
        lab.wait_until_ready(http, timeout=5)


def test_hints_are_graded_a_nudge_first_then_the_shape_never_the_code(capsys: pytest.CaptureFixture[str]) -> None:
    from coursekit import checks
    from coursekit.labchecks import streaming as check

    checks.FAILURES.pop("SSE framing", None)

    def as_text(data: str) -> str:
        return f"data: {data}\n\n"  # a str: the body must be bytes
    with pytest.raises(LabCheckFailed) as first:
        check.framing(as_text)
    assert first.value.hint.startswith("an SSE event is a field name")
    assert "encode" not in first.value.hint and "check.hint(check.framing)" in first.value.hint
    assert "📖 Reread: course/04-streaming.md" in first.value.message
    check.hint(check.framing)
    assert "encode('utf-8')" in capsys.readouterr().out
    with pytest.raises(LabCheckFailed) as second:
        check.framing(as_text)
    assert second.value.hint == "return the text .encode('utf-8')"


@pytest.mark.parametrize("module", ["api_design", "fastapi_basics", "streaming", "errors", "embeddings", "tools",
                                    "batching", "responses", "scaling_out"])
def test_graded_modules_nudge_every_check_and_their_shapes_hold_no_calls(module: str) -> None:
    import importlib

    checks_module = importlib.import_module(f"coursekit.labchecks.{module}")
    found = [fn for fn in vars(checks_module).values() if hasattr(fn, "concrete_hint")]
    assert len(found) >= 4
    for fn in found:
        assert fn.nudge, fn.check_name
        assert not re.search(r"\w\(", fn.concrete_hint + fn.nudge), f"code to copy in {fn.check_name}"


# ---- lab 8: batching (plain data, a scripted model, and a scripted client: no llama.cpp) ----------------

def _solution_entries(slots: list) -> list:
    out = []
    for slot in slots:
        if slot.next_token is not None:
            out.append((slot.next_token, len(slot.tokens), slot.seq, True))
        else:
            out += [(t, len(slot.tokens) + i, slot.seq, i == len(slot.todo) - 1) for i, t in enumerate(slot.todo)]
    return out


def test_batch_check_refuses_logits_after_every_prompt_token() -> None:
    from coursekit.labchecks import batching

    batching.entries(_solution_entries)

    def every_row(slots: list) -> list:
        return [(token, pos, seq, True) for token, pos, seq, _ in _solution_entries(slots)]
    with pytest.raises(LabCheckFailed) as info:
        batching.entries(every_row)
    assert "after every prompt token" in info.value.what


def test_batch_check_refuses_a_prompt_that_restarts_at_position_0() -> None:
    from coursekit.labchecks import batching

    def from_zero(slots: list) -> list:
        out = []
        for slot in slots:
            if slot.next_token is not None:
                out.append((slot.next_token, len(slot.tokens), slot.seq, True))
            else:  # forgets the cached prefix its cells hold
                out += [(t, i, slot.seq, i == len(slot.todo) - 1) for i, t in enumerate(slot.todo)]
        return out
    with pytest.raises(LabCheckFailed) as info:
        batching.entries(from_zero)
    assert "positions [0, 1], not [4, 5]" in info.value.what


def _step(one_decode: bool = True, row_of: Any = None) -> Any:
    """The solution's step, or a variant: a decode per slot, or a row picked another way."""
    def step(engine: Any) -> None:
        busy = [slot for slot in engine.slots if slot.request is not None]
        groups = [busy] if one_decode else [[slot] for slot in busy]
        for group in groups:
            entries = _solution_entries(group)
            engine.decode(entries)
            rows = {seq: i for i, (_, _, seq, logits) in enumerate(entries) if logits}
            for k, slot in enumerate(group):
                if slot.todo:
                    slot.tokens += slot.todo
                    slot.todo = []
                else:
                    slot.tokens.append(slot.next_token)
                token = engine.sample(slot, row_of(k, slot, rows) if row_of else rows[slot.seq])
                request = slot.request
                request.count += 1
                request.out.put(token)
                if token in engine.end_of_turn or request.count >= request.max_tokens:
                    engine.release(slot)
                else:
                    slot.next_token = token
    return step


def test_step_check_refuses_a_decode_per_sequence_and_a_row_per_slot() -> None:
    from coursekit.labchecks import batching

    batching.step(_step())
    with pytest.raises(LabCheckFailed) as info:
        batching.step(_step(one_decode=False))
    assert "more than once in one step" in info.value.what
    with pytest.raises(LabCheckFailed) as info:
        batching.step(_step(row_of=lambda k, slot, rows: k))  # the slot's place, not its entry's
    assert "has no logits" in info.value.what or "logits of sequence" in info.value.what


def test_prefix_check_refuses_the_whole_prompt_from_the_cache() -> None:
    import os

    from coursekit.labchecks import batching

    def longest(cached: list, new: list) -> int:
        return len(os.path.commonprefix([cached, new]))

    def right(cached: list, new: list) -> int:
        return max(0, min(longest(cached, new), len(new) - 1))

    def pick(free: list, tokens: list) -> Any:
        return max(free, key=lambda slot: right(slot.tokens, tokens))
    batching.prefix(right, pick)
    with pytest.raises(LabCheckFailed) as info:
        batching.prefix(longest, pick)
    assert "returned 4, not 3" in info.value.what
    assert "no logits" in " ".join(info.value.details)
    with pytest.raises(LabCheckFailed) as info:
        batching.prefix(right, lambda free, tokens: free[0])
    assert "holds the first 5 tokens" in info.value.what


class _ScriptedClient:
    """Just what the lab's room() and the checks call of the official client, with a fixed speed."""

    def __init__(self, answers: dict[str, str] | None = None, seconds_per_token: float = 0.01) -> None:
        from types import SimpleNamespace

        self.answers, self.delay = answers or {}, seconds_per_token
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

    def create(self, *, messages: list, max_tokens: int, stream: bool = False, **_: Any) -> Any:
        from types import SimpleNamespace as NS

        text = self.answers.get(messages[-1]["content"], "1, 2, 3, 4, 5, 6, 7, 8")
        if not stream:
            return NS(choices=[NS(message=NS(content=text))], usage=NS(completion_tokens=max_tokens))

        def chunks() -> Iterator[Any]:
            for _ in range(max_tokens):
                time.sleep(self.delay)
                yield NS(choices=[NS(delta=NS(content="x"))], usage=None)
            yield NS(choices=[], usage=NS(completion_tokens=max_tokens))
        return chunks()


def _room(one_by_one: bool) -> Any:
    from concurrent.futures import ThreadPoolExecutor

    def ask(client: Any, max_tokens: int) -> dict:
        start, tokens = time.perf_counter(), 0
        for chunk in client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Count."}],
                                                    max_tokens=max_tokens, stream=True):
            tokens = chunk.usage.completion_tokens if chunk.usage else tokens
        return {"seconds": time.perf_counter() - start, "tokens": tokens}

    def room(client: Any, n_clients: int, max_tokens: int = 24) -> dict:
        start = time.perf_counter()
        if one_by_one:
            answers = [ask(client, max_tokens) for _ in range(n_clients)]
        else:
            with ThreadPoolExecutor(n_clients) as pool:
                answers = list(pool.map(lambda _: ask(client, max_tokens), range(n_clients)))
        seconds = time.perf_counter() - start
        tokens = sum(a["tokens"] for a in answers)
        return {"clients": n_clients, "tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds}
    return room


def test_room_check_refuses_clients_that_ask_one_after_another() -> None:
    from types import SimpleNamespace

    from coursekit.labchecks import batching

    server = SimpleNamespace(ready=True, client=_ScriptedClient)
    batching.room(_room(one_by_one=False), server)
    with pytest.raises(LabCheckFailed) as info:
        batching.room(_room(one_by_one=True), server)
    assert "one after another" in info.value.what


def test_together_check_refuses_answers_that_cross() -> None:
    from types import SimpleNamespace

    from coursekit.labchecks import batching

    alone = ["1, 2, 3, 4, 5, 6", "Monday, Tuesday, Wednesday", "A, B, C, D, E", "January, February"]
    right = dict(zip(batching.NEAR_CERTAIN, alone))
    batching.together(SimpleNamespace(ready=True, client=lambda: _ScriptedClient(right)), alone)
    crossed = dict(zip(batching.NEAR_CERTAIN, alone[1:] + alone[:1]))  # each sampled from another's row
    with pytest.raises(LabCheckFailed) as info:
        batching.together(SimpleNamespace(ready=True, client=lambda: _ScriptedClient(crossed)), alone)
    assert "4 of 4 answers" in info.value.what


def test_faster_check_refuses_a_room_that_still_waits_in_line() -> None:
    from coursekit.labchecks import batching

    serial = {"clients": 4, "tokens": 96, "seconds": 2.0, "tok_s": 48.0, "first_token_ms": [30, 530, 1030, 1530]}
    batching.faster(serial, {**serial, "seconds": 1.0, "tok_s": 96.0, "first_token_ms": [40, 45, 50, 55]})
    with pytest.raises(LabCheckFailed) as info:  # a thread per slot forgotten: the worker still serialises
        batching.faster(serial, {**serial, "seconds": 1.9, "tok_s": 50.5, "first_token_ms": [30, 500, 980, 1450]})
    assert "1.05x" in info.value.what and "one by one" in " ".join(info.value.details)
    busy = {**serial, "seconds": 1.9, "tok_s": 50.5}  # one room slowed by other work: measured again
    batching.faster(serial, busy, again=lambda: {**serial, "seconds": 1.0, "tok_s": 96.0})
    assert busy["tok_s"] == 96.0
    rooms = []
    with pytest.raises(LabCheckFailed) as info:
        batching.faster(serial, {**serial, "tok_s": 50.5}, again=lambda: rooms.append(1) or {**serial, "tok_s": 49.0})
    assert len(rooms) == 2 and "best of 3 rooms" in " ".join(info.value.details)


# ---- lab 9: the Responses API -------------------------------------------------------------------------

@pytest.fixture()
def lab9(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The solution's myserver.responses and myserver.store (labs 1 to 7, then 9, exported)."""
    import sys

    from coursekit import export
    from coursekit.labchecks.fakes import package_module

    root = Path(__file__).resolve().parents[1]
    export.export_notebooks(sorted((root / "solutions").glob("0[1-7]*.ipynb")) + [
        root / "solutions" / "09_responses.ipynb"], tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "myserver" or m.startswith("myserver.")]:
        monkeypatch.delitem(sys.modules, name)
    yield package_module("responses"), package_module("store")
    for name in [m for m in sys.modules if m == "myserver" or m.startswith("myserver.")]:
        del sys.modules[name]


def test_items_check_refuses_a_translation_that_drops_the_earlier_turns(lab9: Any) -> None:
    from coursekit.labchecks import responses as check

    translate, _ = lab9
    check.items(translate.chat_messages)

    def without_history(body: Any, history: Any = ()) -> list[dict[str, str]]:
        instructions = [{"role": "system", "content": body.instructions}] if body.instructions else []
        return instructions + translate.input_messages(body)  # previous_response_id, silently ignored
    with pytest.raises(LabCheckFailed) as info:
        check.items(without_history)
    assert "previous_response_id would be ignored" in info.value.what


@pytest.mark.parametrize("wrong, says", [
    ("usage", "chat's names"),       # usage named as in chat completions
    ("text-part", "'output_text'"),  # the content part typed "text": no output_text for the SDK
    ("complete", "status 'completed', expected 'incomplete'"),  # a cut answer reported as complete
])
def test_response_check_refuses_chat_shapes_and_a_cut_answer_called_complete(lab9: Any, wrong: str,
                                                                             says: str) -> None:
    from coursekit.labchecks import responses as check

    translate, _ = lab9
    check.response_object(translate.response_object, translate.finish)

    def finish(response: dict, item_id: str, text: str, done: Any) -> dict:
        translate.finish(response, item_id, text, done)
        if wrong == "usage":
            usage = response["usage"]
            response["usage"] = {"prompt_tokens": usage["input_tokens"], "completion_tokens": usage["output_tokens"],
                                 "total_tokens": usage["total_tokens"]}
        elif wrong == "text-part":
            response["output"][0]["content"][0]["type"] = "text"
        else:
            response.update(status="completed", incomplete_details=None)
            response["output"][0]["status"] = "completed"
        return response
    with pytest.raises(LabCheckFailed) as info:
        check.response_object(translate.response_object, finish)
    assert says in info.value.what


@pytest.mark.parametrize("wrong, says", [
    ("no-numbers", "sequence numbers"),      # deltas (and everything else) without sequence_number
    ("numbered-deltas-only", "sequence numbers"),
    ("no-snapshot", "response.created shows the response as it was then"),
])
def test_events_check_refuses_unnumbered_events_and_events_that_change_later(lab9: Any, wrong: str,
                                                                            says: str) -> None:
    from coursekit.labchecks import responses as check

    translate, _ = lab9
    check.events(translate.response_events, translate.named_frames, translate.response_object)

    async def response_events(response: dict, events: Any) -> Any:
        count = 0
        async for event in translate.response_events(response, events):
            if wrong == "no-numbers":
                event.pop("sequence_number")
            elif wrong == "numbered-deltas-only":
                if event["type"] == "response.output_text.delta":
                    event["sequence_number"], count = count, count + 1
                else:
                    event.pop("sequence_number")
            elif "response" in event:
                event["response"] = response  # the live dict, not a snapshot: it changes after it was sent
            yield event
    with pytest.raises(LabCheckFailed) as info:
        check.events(response_events, translate.named_frames, translate.response_object)
    assert says in info.value.what


def test_events_check_refuses_frames_without_event_names(lab9: Any) -> None:
    import json as json_module

    from coursekit.labchecks import responses as check

    translate, _ = lab9

    async def data_only(events: Any) -> Any:  # lab 4's framing, reused as it was
        async for event in events:
            yield f"data: {json_module.dumps(event)}\n\n".encode()
    with pytest.raises(LabCheckFailed) as info:
        check.events(translate.response_events, data_only, translate.response_object)
    assert "'event:' line" in info.value.what


@pytest.mark.parametrize("wrong, says", [
    ("no-answer", "ends before the answer"),  # a continuation would not know what the model said
    ("none", "instead of raising a 404"),     # an unknown id answered with null and a 200
    ("unbounded", "it should never hold more than MAX_STORED"),
])
def test_store_check_refuses_a_store_without_answers_nulls_or_no_bound(lab9: Any, wrong: str, says: str) -> None:
    from coursekit.labchecks import responses as check

    _, store = lab9
    check.store(store.remember, store.stored)

    def remember(response: dict, conversation: list) -> None:
        if response["store"]:
            answer = [] if wrong == "no-answer" else [
                {"role": "assistant", "content": response["output"][0]["content"][0]["text"]}]
            store.STORE[response["id"]] = (response, [*conversation, *answer])

    def stored(response_id: str, param: Any = None) -> Any:
        return store.STORE.get(response_id) if wrong == "none" else store.stored(response_id, param)
    with pytest.raises(LabCheckFailed) as info:
        check.store(remember if wrong != "none" else store.remember, stored)
    assert says in info.value.what




# ---- lab 10: Ollama's API on the learner's server ----------------------------------------------------

@pytest.fixture()
def package10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """myserver/ as the solutions of labs 01 to 10 write it, importable (forgotten afterwards)."""
    import sys

    from coursekit import export

    root = Path(__file__).resolve().parents[1]
    export.export_notebooks(sorted(p for p in (root / "solutions").glob("*.ipynb") if p.stem[:2] <= "10"), tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    _forget_myserver()
    yield tmp_path / "myserver"
    _forget_myserver()


def _forget_myserver() -> None:
    import sys

    for name in [m for m in sys.modules if m == "myserver" or m.startswith("myserver.")]:
        del sys.modules[name]


def _rewrite(path: Path, old: str, new: str) -> None:
    """A wrong answer: one piece of the solution's module replaced, the package re-imported."""
    source = path.read_text()
    assert old in source, f"{old!r} is not in {path.name}: the solution changed, update this test"
    path.write_text(source.replace(old, new))
    _forget_myserver()


@contextlib.contextmanager
def _ollama_server(api_key: str | None = None) -> Iterator[Any]:
    """The package's app on a real port around a scripted engine (what lab.serve gives, without a model)."""
    from types import SimpleNamespace

    from coursekit.labchecks.fakes import FakeEngine, live_app, package_module

    settings = package_module("settings").Settings(api_keys=[api_key] if api_key else [])
    app = package_module("app").create_app(settings, engine=FakeEngine(pieces=5, delay=0.002))
    with live_app(app) as root:
        yield SimpleNamespace(root=root, ready=True, api_key=api_key)


def _fails(check: Any, *args: Any) -> LabCheckFailed:
    with pytest.raises(LabCheckFailed) as info:
        check(*args)
    return info.value


def test_provider_checks_are_graded_and_their_shapes_hold_no_calls() -> None:
    test_graded_modules_nudge_every_check_and_their_shapes_hold_no_calls("providers")


def test_chat_checks_refuse_sse_instead_of_ndjson(package10: Path) -> None:
    from coursekit.labchecks import providers

    providers.scripted_chat()  # the solution passes
    with _ollama_server() as server:
        providers.chat(server)
    _rewrite(package10 / "routers" / "ollama.py", "return ndjson_response(reply_lines(",
             "from ..streaming import sse_response\n        return sse_response(reply_lines(")
    failure = _fails(providers.scripted_chat)
    assert "Server-Sent Events" in failure.what and "NDJSON" in failure.what
    with _ollama_server() as server:
        assert "Server-Sent Events" in _fails(providers.chat, server).what


def test_scripted_chat_check_says_what_the_route_raised(package10: Path) -> None:
    from coursekit.labchecks import providers

    _rewrite(package10 / "routers" / "ollama.py", "messages, max_tokens, keywords = to_engine(body)",
             "messages, max_tokens, keywords = to_engine(body), None")  # three names, two values
    failure = _fails(providers.scripted_chat)
    assert "answered 500" in failure.what and "your code raised ValueError" in " ".join(failure.details)


def test_checks_refuse_a_stream_that_defaults_to_false(package10: Path) -> None:
    from coursekit.labchecks import providers
    from coursekit.labchecks.fakes import package_module

    _rewrite(package10 / "ollama.py", "    stream: bool = True", "    stream: bool = False")
    ollama = package_module("ollama")
    assert "stream=False" in _fails(providers.translation, ollama.ChatRequest, ollama.to_engine).what
    failure = _fails(providers.scripted_chat)
    assert "got one JSON object" in failure.what and failure.section.title == "Pitfalls that break real clients"


@pytest.mark.parametrize("wrong, words", [
    ("options.temperature or None", "temperature 0 became 1.0"),  # 0 is falsy: the greedy request is lost
    ("options.temperature or 1.0", "temperature 0 became 1.0"),
    ("num_predict", "num_predict -1 gave max_tokens=-1"),  # Ollama's "no limit" passed on as a limit
])
def test_translation_refuses_options_lost_on_the_way(package10: Path, wrong: str, words: str) -> None:
    from coursekit.labchecks import providers
    from coursekit.labchecks.fakes import package_module

    module = package10 / "ollama.py"
    if "temperature" in wrong:
        _rewrite(module, '{"temperature": options.temperature,', f'{{"temperature": {wrong},')
    else:
        _rewrite(module, " if options.num_predict is not None and options.num_predict > 0 else None", "")
    ollama = package_module("ollama")
    failure = _fails(providers.translation, ollama.ChatRequest, ollama.to_engine)
    assert words in failure.what + " ".join(failure.details)


def test_translation_refuses_keywords_that_override_the_engines_defaults(package10: Path) -> None:
    from coursekit.labchecks import providers
    from coursekit.labchecks.fakes import package_module

    _rewrite(package10 / "ollama.py", "{name: value for name, value in keywords.items() if value is not None}",
             "keywords")  # None for every option the client left out: temperature=None reaches the engine
    ollama = package_module("ollama")
    failure = _fails(providers.translation, ollama.ChatRequest, ollama.to_engine)
    assert "defaults alone" in failure.what and "temperature=None" in failure.details[0]


@pytest.mark.parametrize("scale, unit", [(1e3, "milliseconds"), (1e6, "microseconds"), (1, "seconds")])
def test_done_line_refuses_durations_in_other_units(package10: Path, scale: float, unit: str) -> None:
    from coursekit.labchecks import providers
    from coursekit.labchecks.fakes import package_module

    ollama, done = package_module("ollama"), package_module("engine").Done

    def in_other_units(model: str, text: str, done: Any, clock: Any) -> dict:
        def to(seconds: float) -> int | float:
            return int(seconds * scale) if scale > 1 else seconds
        return ollama.line(model, text, done=True, done_reason=done.finish_reason,
                           total_duration=to(clock.end - clock.start), load_duration=0,
                           prompt_eval_count=done.prompt_tokens, prompt_eval_duration=to(clock.first - clock.start),
                           eval_count=done.completion_tokens, eval_duration=to(clock.end - clock.first))
    providers.last_line(ollama.done_line, ollama.Clock, done)  # the solution passes
    failure = _fails(providers.last_line, in_other_units, ollama.Clock, done)
    shown = " ".join(failure.details)
    assert (f"that is {unit}" in shown) if scale > 1 else ("a float" in shown)


def test_done_line_refuses_a_missing_done_reason(package10: Path) -> None:
    from coursekit.labchecks import providers
    from coursekit.labchecks.fakes import package_module

    ollama, done = package_module("ollama"), package_module("engine").Done

    def without_reason(model: str, text: str, done: Any, clock: Any) -> dict:
        line = ollama.done_line(model, text, done, clock)
        del line["done_reason"]
        return line
    assert "no done_reason" in _fails(providers.last_line, without_reason, ollama.Clock, done).what


def test_tags_check_refuses_openais_model_list(package10: Path) -> None:
    from coursekit.labchecks import providers

    with _ollama_server() as server:
        providers.tags(server)  # the solution passes
    _rewrite(package10 / "routers" / "ollama.py", 'return {"models": [{"name": engine.model_id, "model": engine.model_id,',
             'return {"object": "list", "data": [{"id": engine.model_id, "object": "model",')
    with _ollama_server() as server:
        assert "OpenAI's list" in _fails(providers.tags, server).what


@pytest.mark.parametrize("condition, words", [
    ("False", "OpenAI's envelope for an unknown model"),  # nothing reshaped: the ollama client shows a dict
    ("True", "GET /v1/models without the API key"),       # Ollama's envelope everywhere: /v1's clients break
])
def test_envelope_check_refuses_an_envelope_on_the_wrong_paths(package10: Path, condition: str, words: str) -> None:
    from coursekit.labchecks import providers

    with _ollama_server("sk-lab10") as server:
        providers.envelope(server)  # the solution passes
    _rewrite(package10 / "errors.py", "if request.url.path.startswith(prefix):", f"if {condition}:")
    with _ollama_server("sk-lab10") as server:
        assert words in _fails(providers.envelope, server).what


def test_scripted_chat_check_refuses_sse_habits_in_ndjson(package10: Path) -> None:
    from coursekit.labchecks import providers

    _rewrite(package10 / "ollama.py", 'json.dumps(line) + "\\n"', 'json.dumps(line) + "\\n\\n"')  # SSE's blank line
    assert "is blank" in _fails(providers.scripted_chat).what


# ---- lab 11: the gateway ------------------------------------------------------------------------

@pytest.fixture()
def package11(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """myserver/ as the solutions of labs 01 to 11 write it, importable (forgotten afterwards)."""
    import sys

    from coursekit import export

    root = Path(__file__).resolve().parents[1]
    export.export_notebooks([p for p in sorted((root / "solutions").glob("*.ipynb")) if p.stem[:2] <= "11"], tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    _forget_myserver()
    yield tmp_path / "myserver"
    _forget_myserver()






def _lab11(name: str) -> Any:
    import importlib

    return importlib.import_module(f"myserver.{name}")


def _gateway_checks(check_name: str) -> None:
    from coursekit.labchecks import scaling_out as check

    gateway, engine, errors, settings, limits = (_lab11(m) for m in ("gateway", "engine", "errors", "settings", "limits"))
    if check_name == "cooldown":
        check.cooldown(gateway.Upstream, gateway.COOLDOWN)
    elif check_name == "routing":
        check.routing(gateway.pick)
    elif check_name == "retries":
        check.retries(gateway.GatewayEngine, settings.Settings, engine.Done, errors.APIError)
    else:
        check.rate_limit(limits.RequestsPerMinute, errors.APIError)


ROUND_ROBIN = """    candidates = [u for u in upstreams if u not in exclude and u.available(now)]
    if not candidates:
        return None
    pick.turn = getattr(pick, "turn", -1) + 1
    return candidates[pick.turn % len(candidates)]
"""
FIXED_WINDOW = """            minute = now // self.window
            if times and times[0] // self.window != minute:
                times.clear()
            if len(times) >= self.limit:
                raise rate_limited(self.limit, self.window, (minute + 1) * self.window - now)
            times.append(now)
"""
GATEWAY_WRONG = {  # name: (module file, check, solution text, wrong text, words the failure must say)
    "a cool-down that never ends": ("gateway.py", "cooldown", "self.down_until = now + COOLDOWN",
                                    "self.down_until = float('inf')", "never available again"),
    "no cool-down at all": ("gateway.py", "cooldown", "self.down_until = now + COOLDOWN", "pass",
                            "straight back"),
    "round-robin, blind to load": ("gateway.py", "routing",
                                   "    candidates = [u for u in upstreams if u not in exclude and u.available(now)]\n"
                                   "    return min(candidates, key=lambda u: u.outstanding, default=None)\n",
                                   ROUND_ROBIN, "round-robin"),
    "the first available, blind to load": ("gateway.py", "routing",
                                           "return min(candidates, key=lambda u: u.outstanding, default=None)",
                                           "return candidates[0] if candidates else None", "fewest outstanding"),
    "a retry after the first token": ("gateway.py", "retries", "if sent:  # the client", "if False:  # the client",
                                      "glued to another"),
    "no retry at all": ("gateway.py", "retries", "upstream.failed(self.clock())  # and round the loop, to the next upstream", "raise",
                        "should have moved to upstream 2"),
    "a 400 retried elsewhere": ("gateway.py", "retries", "if not retryable(error):  # wrong everywhere",
                                "if False:  # wrong everywhere", "unchanged"),
    "a window per calendar minute": ("limits.py", "rate_limit",
                                     "            while times and times[0] <= now - self.window:\n"
                                     "                times.popleft()\n"
                                     "            if len(times) >= self.limit:\n"
                                     "                raise rate_limited(self.limit, self.window, times[0] + self.window - now)\n"
                                     "            times.append(now)\n", FIXED_WINDOW, "slides"),
    "a 429 without Retry-After": ("limits.py", "rate_limit",
                                  "raise rate_limited(self.limit, self.window, times[0] + self.window - now)",
                                  "raise APIError(429, 'Too many requests.', type='requests', code='rate_limit_exceeded')",
                                  "no Retry-After"),
    "one limit for every key": ("limits.py", "rate_limit", "times = self.times[key]", "times = self.times['all']",
                                "per key"),
}


@pytest.mark.parametrize("wrong", list(GATEWAY_WRONG))
def test_gateway_checks_refuse_plausible_wrong_answers(wrong: str, package11: Path) -> None:
    module, check_name, old, new, said = GATEWAY_WRONG[wrong]
    _gateway_checks(check_name)  # the solution passes
    _rewrite(package11 / module, old, new)
    with pytest.raises(LabCheckFailed) as info:
        _gateway_checks(check_name)
    assert said in " ".join([info.value.what, *info.value.details])


# --- against processes: scripted upstreams (no model), the learner's gateway in-process ---

class _Gateway:
    """What lab.serve returns, for a gateway served in this process (fakes.live_app)."""

    def __init__(self, root: str) -> None:
        self.root, self.base_url, self.ready = root, f"{root}/v1", True

    def client(self, api_key: str, timeout: float = 30) -> Any:
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=timeout)


@pytest.fixture()
def scripted_upstreams() -> Iterator[list[Any]]:
    """Two scripted reference servers as processes (tests/fixtures/scripted_upstream.py): killable."""
    import subprocess
    import sys
    import tempfile

    from coursekit import lab

    script = Path(__file__).resolve().parent / "fixtures" / "scripted_upstream.py"
    ups = []
    for number in (1, 2):
        log = Path(tempfile.mkstemp(prefix=f"scripted{number}-", suffix=".log")[1])
        with log.open("w") as out:
            process = subprocess.Popen([sys.executable, str(script)], stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        ups.append(lab.Upstream(number, process, log))
    try:
        yield [u.wait(timeout=60) for u in ups]
    finally:
        for u in ups:
            u.kill()


@contextlib.contextmanager
def _served_gateway(ups: list[Any], **settings: Any) -> Iterator[_Gateway]:
    from coursekit.labchecks.fakes import live_app

    config = _lab11("settings").Settings(upstream_url=",".join(u.url for u in ups), upstream_api_key=None,
                                         api_keys=["sk-a", "sk-b"], **settings)
    with live_app(_lab11("app").create_app(config)) as root:
        yield _Gateway(root)


def test_the_mid_stream_check_refuses_a_stream_continued_on_another_upstream(package11: Path,
                                                                             scripted_upstreams: list[Any]) -> None:
    from coursekit.labchecks import scaling_out as check

    _rewrite(package11 / "gateway.py", "if sent:  # the client", "if False:  # the client")
    with _served_gateway(scripted_upstreams) as gateway, pytest.raises(LabCheckFailed) as info:
        check.mid_stream(gateway, scripted_upstreams, "sk-a")
    assert "still ended normally" in info.value.what
    assert sum(u.alive for u in scripted_upstreams) == 1  # it did kill the one serving the stream


def test_the_live_checks_pass_on_the_solution_and_refuse_a_gateway_blind_to_load_or_that_never_retries(
        package11: Path, scripted_upstreams: list[Any]) -> None:
    """Against scripted upstreams: a gateway that always picks the first upstream fails the spread
    check; the solution passes spread, a death mid-stream and failover; then a gateway that neither
    cools a dead upstream down nor retries fails failover (upstream 1 dead, first in its list)."""
    from coursekit.labchecks import scaling_out as check

    gateway_py = package11 / "gateway.py"
    least_busy = "return min(candidates, key=lambda u: u.outstanding, default=None)"
    _rewrite(gateway_py, least_busy, "return candidates[0] if candidates else None")
    with _served_gateway(scripted_upstreams) as gateway, pytest.raises(LabCheckFailed) as info:
        check.spread(gateway, scripted_upstreams, "sk-a")
    assert "expected one each" in info.value.what
    _rewrite(gateway_py, "return candidates[0] if candidates else None", least_busy)

    with _served_gateway(scripted_upstreams) as gateway:
        check.spread(gateway, scripted_upstreams, "sk-a")
        check.mid_stream(gateway, scripted_upstreams, "sk-a")
        check.failover(gateway, scripted_upstreams, "sk-a")
    assert check.OBSERVED["failover"]["answered"] == 3

    _rewrite(gateway_py, "self.down_until = now + COOLDOWN", "pass")
    _rewrite(gateway_py, "upstream.failed(self.clock())  # and round the loop, to the next upstream", "raise")
    dead_first = sorted(scripted_upstreams, key=lambda u: u.alive)  # first in the list: ties go to it
    with _served_gateway(dead_first) as gateway, pytest.raises(LabCheckFailed) as info:
        check.failover(gateway, dead_first, "sk-a")
    assert "with one upstream dead" in info.value.what


def test_the_live_rate_limit_check_refuses_one_limit_for_every_key(package11: Path) -> None:
    from coursekit.labchecks import scaling_out as check
    from coursekit.labchecks.fakes import FakeEngine, live_app

    def serve() -> Any:
        config = _lab11("settings").Settings(api_keys=["sk-a", "sk-b"], requests_per_minute=3, rate_window=1)
        return live_app(_lab11("app").create_app(config, engine=FakeEngine()))
    with serve() as root:
        check.rate_limit_live(_Gateway(root), "sk-a", "sk-b", 3)
    _rewrite(package11 / "limits.py", "times = self.times[key]", "times = self.times['all']")
    with serve() as root, pytest.raises(LabCheckFailed) as info:
        check.rate_limit_live(_Gateway(root), "sk-a", "sk-b", 3)
    assert "each key has its own limit" in info.value.what
