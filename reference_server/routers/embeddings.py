"""POST /v1/embeddings: one mean-pooled vector per input."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from .. import errors
from ..engine import Engine, encode_base64
from ..protocol import CreateEmbeddingRequest
from .deps import get_engine
from .models import require_model

router = APIRouter()


# --8<-- [start:texts]
def _texts(engine: Engine, data: Any) -> tuple[list[str], int]:
    """Inputs as text plus their token count; token-id inputs are decoded back to text.

    Each input must fit in the context window: OpenAI refuses long inputs rather than
    silently embedding a truncated text, and so do we.
    """
    items = [data] if isinstance(data, str) or (data and isinstance(data[0], int)) else list(data)
    if not items:
        raise errors.invalid_request("'input' must not be empty.", param="input")
    texts, total = [], 0
    for i, item in enumerate(items):
        param = "input" if len(items) == 1 else f"input[{i}]"
        if isinstance(item, str):
            if not item:
                raise errors.invalid_request("'input' cannot contain an empty string.", param=param)
            count, text = len(engine.tokenize(item, special=False)), item
        else:
            if not item or not all(engine.valid_token(t) for t in item):
                raise errors.invalid_request("Token ids must be non-empty and within the model's vocabulary.",
                                             param=param)
            count, text = len(item), engine.detokenize(item)
        if count > engine.n_ctx:
            raise errors.invalid_request(
                f"This model's maximum context length is {engine.n_ctx} tokens, however you requested "
                f"{count} tokens in {param}. Please reduce your input.", param=param,
                code="context_length_exceeded")
        texts.append(text)
        total += count
    return texts, total
# --8<-- [end:texts]


# --8<-- [start:create_embedding]
@router.post("/embeddings")
async def create_embedding(body: CreateEmbeddingRequest, engine: Engine = Depends(get_engine)) -> dict[str, Any]:
    engine.require_ready()
    require_model(engine, body.model)
    texts, tokens = _texts(engine, body.input)
    if body.dimensions is not None and body.dimensions != engine.embedding_dimensions:
        raise errors.invalid_request(
            f"This model produces {engine.embedding_dimensions}-dimensional embeddings; "
            f"'dimensions' must be {engine.embedding_dimensions} or omitted.", param="dimensions")
    engine.reserve_embeddings()
    vectors = await engine.embed(texts)
    encode = encode_base64 if body.encoding_format == "base64" else list
    return {"object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "model": engine.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
# --8<-- [end:create_embedding]
