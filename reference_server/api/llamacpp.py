"""llama.cpp server's own endpoints, at the root as llama-server serves them: /tokenize, /detokenize, /props.

Tools written for llama-server call these to count tokens, see how a text splits, or read
the context size and chat template. The shapes are llama-server's (tests/fixtures/llamacpp/
holds bodies captured from a real llama-server built from the llama.cpp that
llama-cpp-python vendors), and so is the error envelope on these paths:
``{"error": {"code": 400, "message": ..., "type": ...}}``, the status repeated as a number.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Union

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from .. import errors
from ..backends.base import Backend
from ..sampling import SamplingParams
from .deps import BackendDep, introspective
from ..serving.types import LlamaCppError

router = APIRouter(tags=["llama.cpp"])

# --8<-- [start:envelope]
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 501: "not_supported_error", 503: "unavailable_error"}


def llamacpp_error(status: int, message: str, type: str, param: str | None, code: str | None) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"code": status, "message": message, "type": kind}}


for path in ("/tokenize", "/detokenize", "/props"):
    errors.register_envelope(path, llamacpp_error, LlamaCppError)
# --8<-- [end:envelope]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # as llama-server's JSON handling does


class TokenizeRequest(_Body):
    content: Union[str, list[Union[str, int]]]  # a list mixes texts and token ids, as llama-server's
    add_special: bool = False   # BOS (for models that use one)
    parse_special: bool = True  # "<|im_end|>" is one special token, not text
    with_pieces: bool = False


class DetokenizeRequest(_Body):
    tokens: list[int] = []


def _check_tokens(backend: Backend, tokens: list[int], param: str) -> None:
    n_vocab = backend.info().n_vocab
    bad = next((t for t in tokens if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise errors.invalid_request(f"Token id {bad} is not in this model's vocabulary (0 to {n_vocab - 1}).",
                                     param=param)


# --8<-- [start:tokenize]
@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, backend: BackendDep) -> dict[str, Any]:
    backend = introspective(backend, "/tokenize")
    backend.require_ready()
    parts = [body.content] if isinstance(body.content, str) else body.content
    tokens: list[int] = []
    for part in parts:  # only the first part gets the special tokens (BOS) added
        if isinstance(part, str):
            tokens += backend.tokenize(part, special=body.parse_special, add_special=body.add_special and not tokens)
        else:
            _check_tokens(backend, [part], "content")
            tokens.append(part)
    if not body.with_pieces:
        return {"tokens": tokens}
    return {"tokens": [{"id": t, "piece": _piece(backend.token_bytes(t))} for t in tokens]}


def _piece(raw: bytes) -> str | list[int]:
    """A piece that is not valid UTF-8 on its own (part of a character) is shown as its bytes."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)
# --8<-- [end:tokenize]


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, backend: BackendDep) -> dict[str, str]:
    backend = introspective(backend, "/detokenize")
    backend.require_ready()
    _check_tokens(backend, body.tokens, "tokens")
    text = b"".join(backend.token_bytes(t) for t in body.tokens)
    return {"content": text.decode("utf-8", errors="replace")}


# --8<-- [start:props]
@router.get("/props")
async def props(backend: BackendDep) -> dict[str, Any]:
    """llama-server's fields that have a meaning here; the sampling defaults are the engine's own."""
    backend.require_ready()
    info = introspective(backend, "/props").info()
    defaults = dataclasses.asdict(SamplingParams(max_tokens=-1))
    params = {"seed": 4294967295, **{k: defaults[k] for k in (  # llama.cpp's "random seed"
        "temperature", "top_k", "top_p", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty")},
              "max_tokens": -1, "n_predict": -1, "stream": False, "n_probs": 0}
    return {"default_generation_settings": {"params": params, "n_ctx": info.n_ctx},
            "total_slots": 1, "model_alias": info.id, "model_ftype": info.description.rsplit(" ", 1)[-1],
            "model_path": info.path, "modalities": {"vision": False, "video": False, "audio": False},
            "endpoint_slots": False, "endpoint_props": False, "endpoint_metrics": False,
            "chat_template": info.chat_template, "bos_token": info.bos_token, "eos_token": info.eos_token,
            "build_info": info.engine, "is_sleeping": False}
# --8<-- [end:props]
