"""Checks for lab 03: /v1/models and a non-streamed /v1/chat/completions on llama.cpp."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..checks import Mismatch, Section, check, require_schema, short
from ..model import MODEL_ID

SHAPING = Section("02-openai-format", "A request and its response")
ROUTES = Section("03-fastapi-basics", "The app factory")
REQUESTS = Section("03-fastapi-basics", "Request models: OpenAI's names, OpenAI's rules")
CLIENT = Section("01-api-design", "What a client actually depends on")
ONE_MODEL = Section("01-api-design", "One model, one name")
SECTIONS = (SHAPING, ROUTES, REQUESTS, CLIENT, ONE_MODEL)


#: what llama-cpp-python's create_completion returns (shortened): the input of to_chat_completion
SAMPLE_RAW = {
    "id": "cmpl-4e1c0b7d-0c4e-4c8e-9d59-3f1f2a7b9e10",
    "object": "text_completion",
    "created": 1748779200,
    "model": "/home/you/models/SmolLM2-135M-Instruct.Q4_1.gguf",
    "choices": [{"text": " The capital of France is Paris", "index": 0, "logprobs": None,
                 "finish_reason": "length"}],
    "usage": {"prompt_tokens": 31, "completion_tokens": 7, "total_tokens": 38},
}


def _json(response: Any, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise Mismatch(f"{what} answered {response.status_code} with a body that is not JSON: "
                       f"{response.text[:120]!r}") from None


@check("to_chat_completion", section=SHAPING,
       hint="keep the text, the finish_reason and the usage; change everything that says "
            "'text completion': the id prefix, object, the message shape, and the model name clients use")
def shaping(fn: Callable[[dict[str, Any], str], Any]) -> str:
    import copy

    raw = copy.deepcopy(SAMPLE_RAW)
    before = time.time()
    out = fn(raw, MODEL_ID)
    require_schema(out, "chat_completion_response", what="to_chat_completion(SAMPLE_RAW, MODEL_ID)")
    details = []
    if not out["id"].startswith("chatcmpl-"):
        details.append(f"id is {out['id']!r}: a chat completion id starts with 'chatcmpl-'")
    elif out["id"] == fn(copy.deepcopy(SAMPLE_RAW), MODEL_ID)["id"]:
        details.append("two calls gave the same id: every response needs its own (uuid.uuid4().hex)")
    if out["model"] != MODEL_ID:
        details.append(f"model is {short(out['model'])}: clients must see the id they sent, {MODEL_ID!r}, "
                       "not llama.cpp's file path")
    message = out["choices"][0]["message"]
    if message["content"] != SAMPLE_RAW["choices"][0]["text"].strip():
        details.append(f"content is {short(message['content'])}: it should be the generated text "
                       f"(stripped of surrounding spaces), {SAMPLE_RAW['choices'][0]['text'].strip()!r}")
    if out["choices"][0]["finish_reason"] != "length":
        details.append("finish_reason should be passed through ('length': max_tokens cut the text)")
    if out["usage"] != SAMPLE_RAW["usage"]:
        details.append(f"usage is {short(out['usage'])}: copy llama.cpp's token counts")
    if not before - 5 <= out["created"] <= time.time() + 5:
        details.append(f"created is {out['created']}: the unix time of *this* response, int(time.time())")
    if details:
        raise Mismatch("a valid chat.completion, but with the wrong values", details=details)
    return "to_chat_completion: a valid chat.completion with the served model id"


@check("GET /v1/models", section=ROUTES,
       hint="return {'object': 'list', 'data': [model_card()]}: a dict, FastAPI turns it into JSON")
def models_endpoint(http: Any) -> str:
    r = http.get("/v1/models")
    if r.status_code != 200:
        raise Mismatch(f"GET /v1/models answered {r.status_code}, not 200",
                       details=[f"body: {r.text[:160]!r}"])
    body = _json(r, "GET /v1/models")
    require_schema(body, "model_list", what="the body of GET /v1/models")
    ids = [m["id"] for m in body["data"]]
    if MODEL_ID not in ids:
        raise Mismatch(f"the list holds {ids}, not {MODEL_ID!r}")
    return f"GET /v1/models: 200, a valid model list with {MODEL_ID}"


@check("POST /v1/chat/completions", section=REQUESTS,
       hint="parse the body (FastAPI does it from the ChatRequest annotation), generate with llama.cpp, "
            "return to_chat_completion(raw, MODEL_ID)")
def chat_endpoint(http: Any) -> str:
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 8, "temperature": 0}
    r = http.post("/v1/chat/completions", json=body)
    if r.status_code != 200:
        raise Mismatch(f"POST /v1/chat/completions answered {r.status_code}, not 200",
                       details=[f"body: {r.text[:160]!r}"])
    out = _json(r, "POST /v1/chat/completions")
    if out is None:
        raise Mismatch("POST /v1/chat/completions answered 200 with null: the handler returned None",
                       hint="the handler must return the response dict")
    require_schema(out, "chat_completion_response", what="the body of POST /v1/chat/completions")
    details = []
    if out["model"] != MODEL_ID:
        details.append(f"model is {short(out['model'])}, not {MODEL_ID!r}")
    if out["usage"]["completion_tokens"] > 8:
        details.append(f"{out['usage']['completion_tokens']} completion tokens for max_tokens=8: pass "
                       "the request's max_tokens to llama.cpp")
    if details:
        raise Mismatch("valid, but not an answer to this request", details=details)
    return (f"POST /v1/chat/completions: 200, valid, {out['usage']['completion_tokens']} tokens, "
            f"finish_reason {out['choices'][0]['finish_reason']!r}")


@check("Stretch: GET /v1/models/{id}", section=ONE_MODEL,
       hint="a path parameter: @app.get('/v1/models/{model_id}'); for an unknown id return "
            "JSONResponse(error_envelope(...), status_code=404), as in lab 1")
def retrieve_endpoint(http: Any) -> str:
    r = http.get(f"/v1/models/{MODEL_ID}")
    if r.status_code != 200:
        raise Mismatch(f"GET /v1/models/{MODEL_ID} answered {r.status_code}, not 200")
    require_schema(_json(r, "GET /v1/models/{id}"), "model", what=f"the body of GET /v1/models/{MODEL_ID}")
    r = http.get("/v1/models/gpt-4o")
    if r.status_code != 404:
        raise Mismatch(f"GET /v1/models/gpt-4o answered {r.status_code}: an unknown model is 404")
    body = _json(r, "GET /v1/models/gpt-4o")
    require_schema(body, "error", what="the body of GET /v1/models/gpt-4o")
    if body["error"]["code"] != "model_not_found":
        raise Mismatch(f"the error code is {body['error']['code']!r}, not 'model_not_found'")
    return "Stretch: GET /v1/models/{id}: 200 for the served model, OpenAI's 404 for any other"

