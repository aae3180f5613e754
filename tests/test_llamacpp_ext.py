"""llama.cpp server's own endpoints (/tokenize, /detokenize, /props), in llama-server's shapes.

tests/fixtures/llamacpp/ holds what a real llama-server (built from the llama.cpp that
llama-cpp-python 0.3.36 vendors, benchmarks/llama_server.py) answered to the same requests
with the same model; ``capture.py`` there re-records them. Tokens and pieces must be exactly
llama-server's (same model, same tokenizer); /props must have its shape and agree on what
both servers know. Raw HTTP: these endpoints have no official client.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import schemas
from conftest import MODEL, N_CTX, start_server
from reference_server import Settings, create_app
from reference_server.backends.scripted import ScriptedBackend

FIXTURES = Path(__file__).parent / "fixtures" / "llamacpp"
CAPTURED = json.loads((FIXTURES / "captured.json").read_text(encoding="utf-8")) if (
    FIXTURES / "captured.json").is_file() else None


# ---- against what llama-server answered ------------------------------------------------------------

def exchanges(path: str) -> list[dict]:
    assert CAPTURED is not None, f"no {FIXTURES / 'captured.json'}: run tests/fixtures/llamacpp/capture.py"
    return [x for x in CAPTURED["exchanges"] if x["path"] == path and not x.get("without_key")]


@pytest.mark.parametrize("path", ["/tokenize", "/detokenize"])
def test_same_answers_as_llama_server(http, path):
    for x in exchanges(path):
        r = http.post(path, json=x["request"])
        assert (r.status_code, r.json()) == (x["status"], x["response"]), f"request {x['request']}"


def test_props_has_llama_servers_shape_and_agrees_on_what_both_know(http, settings):
    [theirs] = [x["response"] for x in exchanges("/props")]
    theirs = {**theirs, "model_path": str(settings.model_path)}  # captured on another machine (capture.py)
    ours = http.get("/props").json()
    assert not schemas.validate(theirs, "llamacpp_props"), "the schema must describe llama-server's own body"

    def types(value):
        return {k: (types(v) if isinstance(v, dict) else type(v).__name__) for k, v in value.items()}

    def shared(a, b):
        return {k: (shared(a[k], b[k]) if isinstance(a[k], dict) else a[k]) for k in a if k in b}

    assert shared(types(ours), types(theirs)) == types(ours), "a field llama-server lacks, or of another type"
    for field in ("chat_template", "bos_token", "eos_token", "model_path", "model_alias", "model_ftype", "modalities"):
        assert ours[field] == theirs[field], field
    assert ours["default_generation_settings"]["n_ctx"] == theirs["default_generation_settings"]["n_ctx"] == N_CTX
    # Not the same, by design: the sampling defaults (the engine's, OpenAI's temperature 1 and top_p 1, where
    # llama-server has 0.8 and 0.95), total_slots (one sequence at a time here) and build_info.


def test_errors_have_llama_servers_envelope(http):
    [refused] = [x for x in exchanges("/tokenize") + CAPTURED["exchanges"] if x["status"] >= 400]
    assert refused["status"] == 401 and not schemas.validate(refused["response"], "llamacpp_error"), refused
    r = http.post("/detokenize", json={"tokens": [60000]})
    assert r.status_code == 400 and r.json()["error"]["code"] == 400
    assert r.json()["error"]["type"] == "invalid_request_error" and "vocabulary" in r.json()["error"]["message"]
    r = http.post("/tokenize", json={"text": "x"})
    assert r.status_code == 400 and "'content'" in r.json()["error"]["message"]


# ---- what the shapes mean ----------------------------------------------------------------------------

def test_tokenize_specials_pieces_and_round_trip(http):
    def tokens(**body):
        return http.post("/tokenize", json=body).json()["tokens"]

    assert tokens(content="<|im_end|>") == [2]                                  # parse_special defaults to true
    assert len(tokens(content="<|im_end|>", parse_special=False)) > 1            # then it is just text
    hello = tokens(content="Hello world")
    assert tokens(content=["Hello", 2, " world"]) == [hello[0], 2, *tokens(content=" world")]
    pieces = tokens(content="🦙 llama", with_pieces=True)
    assert [p["piece"] for p in pieces][:3] == [[240, 159], [166], [153]]        # parts of one character: bytes
    assert "".join(p["piece"] for p in pieces if isinstance(p["piece"], str)) == " llama"
    ids = [p["id"] for p in pieces]
    assert http.post("/detokenize", json={"tokens": ids}).json() == {"content": "🦙 llama"}
    assert http.post("/detokenize", json={"tokens": [1, *hello, 2]}).json()["content"] == "<|im_start|>Hello world<|im_end|>"


def test_props_says_what_the_server_runs(http):
    props = http.get("/props").json()
    assert props["default_generation_settings"]["n_ctx"] == N_CTX and props["model_alias"] == MODEL
    assert props["model_path"].endswith(".gguf") and "<|im_start|>" in props["chat_template"]
    assert (props["bos_token"], props["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    params = props["default_generation_settings"]["params"]
    assert (params["temperature"], params["top_k"], params["min_p"]) == (1.0, 40, 0.05)  # the engine's defaults


# ---- the same auth and loading as /v1 ---------------------------------------------------------------

def test_api_keys_guard_these_routes_too(settings, engine):
    secured = start_server(settings.model_copy(update={"api_keys": ["sk-right"]}), engine)
    try:
        import httpx

        with httpx.Client(base_url=secured.root) as http:
            r = http.post("/tokenize", json={"content": "x"})
            assert r.status_code == 401 and r.json()["error"] == {
                "code": 401, "type": "authentication_error", "message": r.json()["error"]["message"]}
            assert http.get("/props", headers={"x-api-key": "sk-right"}).status_code == 200
            assert http.post("/tokenize", json={"content": "x"},
                             headers={"Authorization": "Bearer sk-right"}).json() == {"tokens": [104]}
        assert not secured.contract.violations
    finally:
        secured.stop()


def test_byte_pieces_and_loading_on_the_scripted_backend():
    """The scripted backend's tokenizer is byte-level: llama-server's README example, exactly."""
    with TestClient(create_app(Settings(embeddings=False), backend=ScriptedBackend([]))) as c:
        assert c.post("/tokenize", json={"content": "á", "with_pieces": True}).json() == {
            "tokens": [{"id": 195, "piece": [195]}, {"id": 161, "piece": [161]}]}
        assert c.post("/tokenize", json={"content": "á", "add_special": True}).json() == {"tokens": [256, 195, 161]}
    with TestClient(create_app(Settings(embeddings=False), backend=ScriptedBackend([], ready=False))) as c:
        r = c.get("/props")
        assert r.status_code == 503 and r.json()["error"]["type"] == "unavailable_error"
