"""Wrong answers a learner could plausibly give that the lab checks must refuse (issue 18).

Each test runs a check on the named wrong answer and expects it to fail; the solution passing the
same check is proven by tests/test_labs.py, which runs every solved notebook.
"""

from __future__ import annotations

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
                                    "batching"])
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
