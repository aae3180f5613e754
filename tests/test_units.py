"""Pure pieces, no model: stop matching, error parameters, encodings, settings."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from reference_server.serving.common import encode_base64
from reference_server.errors import loc_to_param
from reference_server.sampling import StopMatcher
from reference_server.settings import Settings


def feed_all(stops, pieces):
    m = StopMatcher(stops)
    out = "".join(m.feed(p) for p in pieces) + m.flush()
    return out, m.stopped


@pytest.mark.parametrize("pieces,stops,expected,stopped", [
    (["Hello", " wor", "ld"], [], "Hello world", False),
    (["Hello", " wor", "ld"], ["world"], "Hello ", True),
    (["Hel", "lo END", " more"], ["END"], "Hello ", True),
    (["a", "E", "N", "D", "b"], ["END"], "a", True),           # split over single characters
    (["price: 5", "E", "UR"], ["END"], "price: 5EUR", False),  # held back, then released
    (["x<|", "im_end|>"], ["<|im_end|>", "x"], "", True),      # earliest stop wins
    (["ab"], ["b", "ab"], "", True),
])
def test_stop_matcher(pieces, stops, expected, stopped):
    assert feed_all(stops, pieces) == (expected, stopped)


def test_stop_matcher_never_emits_part_of_a_stop():
    m = StopMatcher(["STOP"])
    assert m.feed("go ST") == "go "
    assert m.feed("O") == ""
    assert m.feed("P!") == "" and m.stopped


@pytest.mark.parametrize("loc,body,param", [
    (("body", "temperature"), {"temperature": 3}, "temperature"),
    (("body", "messages", 0, "user", "content"), {"messages": [{"role": "user"}]}, "messages[0].content"),
    (("body", "messages", 1, "tool", "tool_call_id"), {"messages": [{}, {"role": "tool", "content": "x"}]},
     "messages[1].tool_call_id"),
    (("body", "stop", "list[str]"), {"stop": ["a"] * 5}, "stop"),
    (("body", "logit_bias", "45"), {"logit_bias": {"45": 500}}, "logit_bias.45"),
    (("body",), ["x"], None),
])
def test_loc_to_param(loc, body, param):
    assert loc_to_param(loc, body) == param


def test_base64_is_little_endian_float32():
    v = [0.5, -1.25, 3.0]
    raw = base64.b64decode(encode_base64(v))
    assert len(raw) == 12 and np.frombuffer(raw, dtype="<f4").tolist() == v


def test_settings_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("REFERENCE_SERVER_API_KEYS", "a, b,,c")
    monkeypatch.setenv("REFERENCE_SERVER_PORT", "9001")
    s = Settings(model_path=tmp_path / "Qwen2.5-0.5B-Instruct-Q4_K_M.gguf")
    assert s.api_keys == ["a", "b", "c"] and s.port == 9001
    assert s.served_model_id == "Qwen2.5-0.5B-Instruct"
    assert Settings(model_id="mine").served_model_id == "mine"
    assert Settings(host="::1", port=1).base_url == "http://[::1]:1/v1"


def test_default_model_is_the_embedded_gguf():
    s = Settings()
    assert s.model_path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and s.model_path.exists()
    assert s.served_model_id == "SmolLM2-135M-Instruct"
