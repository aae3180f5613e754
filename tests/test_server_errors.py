"""Every failure answers in OpenAI's envelope with the right status, and the server stays up.

Raw HTTP here: the SDK would turn these into exceptions and hide the bytes we promise.
"""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from conftest import EOG_TOKENS, MODEL, N_CTX, start_server
from reference_server import create_app
from reference_server.backends.local import LocalBackend as Engine

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "Hi"}]


def envelope(response: httpx.Response, status: int, *, param: str | None = None,
             code: str | None = None, type: str = "invalid_request_error") -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body  # never FastAPI's {"detail": ...}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["message"] and err["type"] == type
    assert err["param"] == param and err["code"] == code, err
    assert "Traceback" not in err["message"]
    return err


@pytest.fixture(autouse=True)
def still_serving(http):
    """After every error case the same server answers a normal request."""
    yield
    ok = http.post(CHAT, json={"model": MODEL, "messages": HI, "max_tokens": 2})
    assert ok.status_code == 200, ok.text


def test_malformed_json(http):
    r = http.post(CHAT, content=b'{"model": "x", "messages": [', headers={"content-type": "application/json"})
    assert "parse the JSON body" in envelope(r, 400)["message"]


def test_json_without_content_type_says_so(http):
    r = http.post(CHAT, content=b'{"model": "x", "messages": []}', headers={"content-type": "text/plain"})
    assert "Content-Type: application/json" in envelope(r, 400)["message"]


def test_body_that_is_not_an_object(http):
    envelope(http.post(CHAT, json=["not", "an", "object"]), 400)


def test_missing_required_field_names_it(http):
    err = envelope(http.post(CHAT, json={"model": MODEL}), 400, param="messages")
    assert "messages" in err["message"]


@pytest.mark.parametrize("field,value,param", [
    ("temperature", 2.5, "temperature"),
    ("top_p", 1.5, "top_p"),
    ("n", 0, "n"),
    ("presence_penalty", -3, "presence_penalty"),
    ("max_tokens", 0, "max_tokens"),
    ("stop", ["a", "b", "c", "d", "e"], "stop"),
    ("temperature", "hot", "temperature"),
    ("logit_bias", {"abc": 5}, "logit_bias"),
    ("logit_bias", {"45": 500}, "logit_bias.45"),
])
def test_out_of_range_values(http, field, value, param):
    r = http.post(CHAT, json={"model": MODEL, "messages": HI, field: value})
    envelope(r, 400, param=param)


def test_bad_message_role_and_shape(http):
    err = envelope(http.post(CHAT, json={"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}), 400,
                   param="messages[0].role")
    assert "'wizard' is not one of" in err["message"] and "'assistant'" in err["message"]
    envelope(http.post(CHAT, json={"model": MODEL, "messages": [{"role": "user"}]}), 400,
             param="messages[0].content")
    envelope(http.post(CHAT, json={"model": MODEL, "messages": []}), 400, param="messages")


def test_union_errors_report_the_branch_the_client_meant(http):
    """A list for ``stop`` is judged as a list (too long), not as "should be a valid string"."""
    err = envelope(http.post(CHAT, json={"model": MODEL, "messages": HI, "stop": list("abcde")}), 400, param="stop")
    assert "at most 4 items" in err["message"], err["message"]
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    err = envelope(http.post(CHAT, json={"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, image]}]}), 400, param="messages[0].content[1].type")
    assert "'image_url' parts are not supported" in err["message"] and "text only" in err["message"]


def test_unrecognised_argument_is_refused_like_openai(http):
    err = envelope(http.post(CHAT, json={"model": MODEL, "messages": HI, "max_token": 5}), 400, param="max_token")
    assert "Unrecognized request argument supplied: max_token" in err["message"]


def test_spec_fields_we_cannot_honour_are_accepted(http):
    r = http.post(CHAT, json={"model": MODEL, "messages": HI, "max_tokens": 2, "store": False,
                              "metadata": {"k": "v"}, "service_tier": "auto", "parallel_tool_calls": True})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("field,value", [
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("functions", [{"name": "f", "parameters": {"type": "object"}}]),
    ("function_call", "auto"),
    ("modalities", ["text", "audio"]),
])
def test_spec_fields_this_server_cannot_serve_are_refused_clearly(http, field, value):
    err = envelope(http.post(CHAT, json={"model": MODEL, "messages": HI, field: value}), 400,
                   param=field if field != "modalities" else "modalities[1]")
    assert "not supported" in err["message"] or "cannot" in err["message"] or "Input should be" in err["message"]


def test_unknown_model(http):
    err = envelope(http.post(CHAT, json={"model": "gpt-4o", "messages": HI}), 404, param="model",
                   code="model_not_found")
    assert "gpt-4o" in err["message"]
    envelope(http.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"}), 404,
             param="model", code="model_not_found")


def test_unknown_route_and_wrong_method(http):
    err = envelope(http.post("/v1/nothing-here", json={}), 404)
    assert "/v1/nothing-here" in err["message"]
    envelope(http.get(CHAT), 405)


def test_context_length_exceeded_names_the_numbers(http):
    r = http.post(CHAT, json={"model": MODEL, "messages": HI, "max_tokens": N_CTX})
    err = envelope(r, 400, param="max_tokens", code="context_length_exceeded")
    assert str(N_CTX) in err["message"]
    long = [{"role": "user", "content": "word " * (N_CTX + 50)}]
    envelope(http.post(CHAT, json={"model": MODEL, "messages": long}), 400, param="messages",
             code="context_length_exceeded")
    # The prompt alone overflows: "messages" is what to shrink, even with max_tokens sent (as OpenAI says)
    envelope(http.post(CHAT, json={"model": MODEL, "messages": long, "max_tokens": 1}), 400, param="messages",
             code="context_length_exceeded")
    envelope(http.post("/v1/embeddings", json={"model": MODEL, "input": "word " * (N_CTX + 50)}), 400,
             param="input", code="context_length_exceeded")


def test_stream_options_need_stream(http):
    r = http.post(CHAT, json={"model": MODEL, "messages": HI, "stream_options": {"include_usage": True}})
    envelope(r, 400, param="stream_options")


def test_completions_specific_errors(http):
    envelope(http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "suffix": "y"}), 400, param="suffix")
    envelope(http.post("/v1/completions", json={"model": MODEL, "prompt": [[999999]]}), 400, param="prompt[0]")


def test_embeddings_specific_errors(http):
    envelope(http.post("/v1/embeddings", json={"model": MODEL, "input": ""}), 400, param="input")
    envelope(http.post("/v1/embeddings", json={"model": MODEL, "input": "x", "dimensions": 64}), 400,
             param="dimensions")
    envelope(http.post("/v1/embeddings", json={"model": MODEL, "input": "x", "encoding_format": "int8"}), 400,
             param="encoding_format")


def test_api_keys(settings, engine):
    secured = start_server(settings.model_copy(update={"api_keys": ["sk-right"]}), engine)
    try:
        with httpx.Client(base_url=secured.root) as http:
            envelope(http.get("/v1/models"), 401, code="invalid_api_key")
            r = http.get("/v1/models", headers={"Authorization": "Bearer sk-wrong"})
            assert envelope(r, 401, code="invalid_api_key")["message"] == "Incorrect API key provided."
            assert r.headers["www-authenticate"] == "Bearer"
            assert http.get("/v1/models", headers={"Authorization": "Bearer sk-right"}).status_code == 200
            assert http.get("/health").status_code == 200  # probes need no key
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=secured.base_url, api_key="sk-wrong", max_retries=0).models.list()
        ok = openai.OpenAI(base_url=secured.base_url, api_key="sk-right", max_retries=0)
        assert ok.chat.completions.create(model=MODEL, messages=HI, max_tokens=2).choices
        assert not secured.contract.violations
    finally:
        secured.stop()


def test_cors_is_configurable(settings, engine):
    app = create_app(settings.model_copy(update={"cors_origins": ["http://localhost:3000"]}), backend=engine)
    with TestClient(app) as tc:
        pre = tc.options("/v1/chat/completions", headers={
            "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "http://localhost:3000"
        other = tc.get("/v1/models", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    with TestClient(create_app(settings, backend=engine)) as tc:  # off by default
        assert "access-control-allow-origin" not in tc.get("/v1/models", headers={"Origin": "http://x"}).headers


def test_503_while_the_model_loads(settings):
    """An engine that has not loaded yet: health and every endpoint say 503, then recover."""
    engine = Engine(settings)
    app = create_app(settings, backend=engine)
    tc = TestClient(app)  # not entered: the lifespan (which would start loading) does not run
    envelope(tc.get("/health"), 503, code="model_loading", type="server_error")
    r = tc.post(CHAT, json={"model": MODEL, "messages": HI})
    envelope(r, 503, code="model_loading", type="server_error")
    assert r.headers["retry-after"] == "1"
    engine.load()
    assert tc.get("/health").status_code == 200
    assert tc.post(CHAT, json={"model": MODEL, "messages": HI, "max_tokens": 2}).status_code == 200


def test_unexpected_error_is_500_without_traceback(settings, engine, monkeypatch):
    app = create_app(settings, backend=engine)
    monkeypatch.setattr(engine, "render_chat", lambda messages: 1 / 0)
    with TestClient(app, raise_server_exceptions=False) as tc:
        err = envelope(tc.post(CHAT, json={"model": MODEL, "messages": HI}), 500, type="server_error")
        assert "ZeroDivision" not in err["message"]


def test_full_queue_answers_429(settings):
    """max_queue=0: while every slot is busy, the next request is refused at once, not queued."""
    engine = Engine(settings.model_copy(update={"max_queue": 0, "embeddings": False, "parallel": 1}))
    engine.load()
    busy = start_server(engine.settings, engine)
    long = {"model": MODEL, "messages": HI, "max_tokens": 400, "logit_bias": {str(t): -100 for t in EOG_TOKENS}}
    try:
        with httpx.Client(base_url=busy.root, timeout=120) as http:
            first: dict = {}
            t = threading.Thread(target=lambda: first.update(r=http.post(CHAT, json=long)))
            t.start()
            while engine.queue_depth == 0:
                time.sleep(0.001)
            r = http.post(CHAT, json={"model": MODEL, "messages": HI, "max_tokens": 2})
            envelope(r, 429, code="rate_limit_exceeded", type="rate_limit_error")
            assert r.headers["retry-after"]
            t.join()
            assert first["r"].status_code == 200 and first["r"].json()["usage"]["completion_tokens"] == 400
    finally:
        busy.stop()
