"""Checks for lab 06: mean pooling, base64 vectors, POST /v1/embeddings, a small semantic search."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..checks import Mismatch, Section, check, require_schema, short, type_name
from ..checks import hint as hint  # check.hint(check.NAME): the concrete hint, on request
from ..model import MODEL_ID

REQUEST = Section("06-embeddings", "A request and its response")
POOLING = Section("06-embeddings", "Mean pooling and normalisation")
MEANING = Section("06-embeddings", "What the numbers mean")
BASE64 = Section("06-embeddings", "The base64 surprise")
ENDPOINT = Section("06-embeddings", "The endpoint")
PITFALLS = Section("06-embeddings", "Pitfalls that break real clients")
SECTIONS = (REQUEST, POOLING, MEANING, BASE64, ENDPOINT, PITFALLS)

DIMENSIONS = 576

#: queries whose best document the lab's corpus and SmolLM2's mean-pooled vectors agree on, each by a
#: margin of at least 0.03 in cosine on the course's machine (far above the noise between CPUs)
KNOWN_QUERIES = {
    "What are the symptoms of a cold?": "cold",
    "Why did the stock market fall?": "stocks",
    "How long does the Moon take to orbit the Earth?": "moon",
    "Why is Mars red?": "mars",
    "How do I save money every month?": "savings",
}


def corpus_path() -> Path:
    from ..checkpoint import repository_root

    return repository_root() / "labs" / "data" / "corpus.jsonl"


def load_corpus(path: str | Path | None = None) -> list[dict[str, str]]:
    """The documents of ``labs/data/corpus.jsonl``: one {"id", "topic", "text"} per line."""
    lines = Path(path or corpus_path()).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _array(value: Any, what: str) -> Any:
    import numpy as np

    if value is None:
        raise Mismatch(f"{what} returned None (did the function forget to return?)")
    try:
        out = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise Mismatch(f"{what} returned {type_name(value)}, not a vector of numbers") from None
    return out


@check("Mean pooling and normalisation", section=POOLING,
       nudge="one vector per text from one vector per token: average them; then compare directions, not "
             "lengths",
       hint="mean_pool: the average over the token axis; normalize: divide by the vector's length; cosine: "
            "the dot product divided by both lengths")
def pooling(mean_pool: Callable[[Any], Any], normalize: Callable[[Any], Any], cosine: Callable[[Any, Any], Any],
            token_vectors: Any, pooled: Any) -> str:
    import numpy as np

    tiny = _array(mean_pool([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]]), "mean_pool([[1, 2], [3, 4], [5, 9]])")
    if tiny.shape != (2,):
        raise Mismatch(f"mean_pool of 3 vectors of 2 numbers has shape {tiny.shape}: expected one vector of 2",
                       hint="average over the tokens (axis=0), not over the dimensions (axis=1)")
    if not np.allclose(tiny, [3.0, 5.0]):
        raise Mismatch(f"mean_pool([[1, 2], [3, 4], [5, 9]]) is {tiny.tolist()}, not [3.0, 5.0]")
    unit = _array(normalize([3.0, 4.0]), "normalize([3, 4])")
    if not np.allclose(unit, [0.6, 0.8]):
        raise Mismatch(f"normalize([3, 4]) is {unit.tolist()}, not [0.6, 0.8]: divide by the length, 5")
    for a, b, want in (([1, 0], [0, 1], 0.0), ([1, 1], [2, 2], 1.0), ([3, 4], [-3, -4], -1.0)):
        got = cosine(a, b)
        if not isinstance(got, (int, float, np.floating)) or abs(float(got) - want) > 1e-9:
            raise Mismatch(f"cosine({a}, {b}) is {got!r}, not {want}",
                           hint="a · b / (|a| |b|): vectors that are not unit length must still work")
    if token_vectors is None:  # remote mode: no per-token vectors to compare with llama.cpp's
        return "Mean pooling and normalisation: right on made-up vectors (remote mode: no per-token vectors)"
    mine = _array(normalize(mean_pool(token_vectors)), "normalize(mean_pool(token_vectors))")
    reference = np.asarray(pooled, dtype=np.float64)
    if mine.shape != reference.shape:
        raise Mismatch(f"your vector has shape {mine.shape}, llama.cpp's has {reference.shape}")
    error = float(np.abs(mine - reference).max())
    if error > 1e-4:
        rows = np.asarray(token_vectors, dtype=np.float64)
        details = [f"largest difference {error:.3g}"]
        for name, row in (("first", rows[0]), ("last", rows[-1])):
            if np.allclose(mine, row / np.linalg.norm(row), atol=1e-4):
                details.append(f"your vector is the {name} token's: average all of them")
        raise Mismatch("normalize(mean_pool(...)) differs from llama.cpp's mean-pooled vector", details=details)
    return (f"Mean pooling and normalisation: {len(token_vectors)} token vectors -> one unit vector, "
            f"equal to llama.cpp's (largest difference {error:.1e})")


@check("base64 vectors", section=BASE64,
       nudge="base64 carries the vector's raw bytes, in the one float layout every client expects",
       hint="the floats as little-endian 32-bit bytes (numpy's '<f4'), those bytes base64-encoded, the "
            "result as ASCII text")
def base64_vectors(to_base64: Callable[[Any], Any]) -> str:
    import numpy as np

    vector = [1.0, -2.5, 0.1]
    want = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    got = to_base64(vector)
    if isinstance(got, bytes):
        raise Mismatch("to_base64 returned bytes: JSON needs a str (.decode('ascii'))")
    if not isinstance(got, str):
        raise Mismatch(f"to_base64 returned {type_name(got)}, not a str")
    if got == want:
        return f"base64 vectors: {vector} is {got!r}, 12 bytes for 3 float32s"
    details = [f"yours: {got!r}", f"want:  {want!r}"]
    try:
        raw = base64.b64decode(got, validate=True)
    except ValueError:
        raise Mismatch("that is not valid base64", details=details) from None
    for dtype, mistake in ((">f4", "big-endian: use '<f4' (little-endian), as OpenAI does"),
                           ("<f8", "float64 (8 bytes per number): OpenAI sends float32 (4 bytes)"),
                           (">f8", "big-endian float64: use '<f4'")):
        if raw == np.asarray(vector, dtype=dtype).tobytes():
            details.append(mistake)
    raise Mismatch("to_base64([1.0, -2.5, 0.1]) is not OpenAI's encoding", details=details)


def _vectors(body: Any, what: str, count: int) -> Any:
    import numpy as np

    require_schema(body, "embedding_response", what=what)
    data = body["data"]
    if [d["index"] for d in data] != list(range(count)):
        raise Mismatch(f"{what}: the indexes are {[d['index'] for d in data]}, expected 0..{count - 1} in order",
                       hint="one item per input, index = the input's position", section=REQUEST)
    out = []
    for d in data:
        e = d["embedding"]
        if isinstance(e, str):
            out.append(np.frombuffer(base64.b64decode(e), dtype="<f4").astype(np.float64))
        else:
            out.append(np.asarray(e, dtype=np.float64))
    return np.array(out)


@check("POST /v1/embeddings", section=ENDPOINT,
       nudge="the embeddings response is a list object: one item per input, in order, plus the model and "
             "the tokens it cost; encoding_format decides how each vector is written",
       hint="object 'list'; data with one 'embedding' item per input (its index, its vector as a list of "
            "floats or your base64 text); model; usage with prompt_tokens and total_tokens")
def endpoint(http: Any) -> str:
    import numpy as np

    texts = ["The cat sat on the mat.", "The stock market fell sharply today."]
    r = http.post("/v1/embeddings", json={"model": MODEL_ID, "input": texts, "encoding_format": "float"})
    if r.status_code != 200:
        raise Mismatch(f"POST /v1/embeddings answered {r.status_code}", details=[f"body: {r.text[:160]!r}"])
    body = r.json()
    floats = _vectors(body, "the float response", 2)
    if floats.shape != (2, DIMENSIONS):
        raise Mismatch(f"the vectors have shape {floats.shape[1:]}: SmolLM2-135M gives {DIMENSIONS} numbers per text")
    norms = np.linalg.norm(floats, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise Mismatch(f"the vectors' lengths are {norms.round(3).tolist()}, not 1: normalize them",
                       section=PITFALLS)
    if body["model"] != MODEL_ID:
        raise Mismatch(f"model is {short(body['model'])}, not {MODEL_ID!r}")
    if body["usage"]["prompt_tokens"] < 10 or body["usage"]["total_tokens"] != body["usage"]["prompt_tokens"]:
        raise Mismatch(f"usage is {short(body['usage'])}: count the tokens of all inputs, in both fields",
                       section=REQUEST)
    alone = http.post("/v1/embeddings", json={"model": MODEL_ID, "input": texts[1], "encoding_format": "float"})
    single = _vectors(alone.json(), "the response for one string", 1)
    if not np.allclose(single[0], floats[1], atol=1e-3):
        raise Mismatch("the second text's vector differs when it is sent alone: keep data in input order",
                       section=PITFALLS)
    r = http.post("/v1/embeddings", json={"model": MODEL_ID, "input": texts, "encoding_format": "base64"})
    coded = r.json()
    if not all(isinstance(d["embedding"], str) for d in coded.get("data", [])):
        raise Mismatch("with encoding_format 'base64' each embedding should be a base64 string",
                       section=BASE64, hint="encode each vector with your to_base64")
    decoded = _vectors(coded, "the base64 response", 2)
    if not np.allclose(decoded, floats, atol=1e-6):
        raise Mismatch("the base64 vectors decode to other numbers than the float ones", section=BASE64)
    return "POST /v1/embeddings: 576 numbers per input, unit length, in order, as floats or base64"


@check("Semantic search", section=MEANING,
       nudge="search by meaning is ranking: the query becomes a vector like the documents, and the "
             "closest directions win",
       hint="embed the query, score every document with the dot product (the vectors are unit length), "
            "return the k best as (score, doc), best first")
def search(search_fn: Callable[..., Any], corpus: list[dict[str, str]]) -> str:
    ids = {d["id"] for d in corpus}
    if not set(KNOWN_QUERIES.values()) <= ids:
        raise Mismatch("the corpus is not labs/data/corpus.jsonl: reload it with check.load_corpus()")
    wrong = []
    for query, want in KNOWN_QUERIES.items():
        hits = search_fn(query, k=3)
        if hits is None:
            raise Mismatch("search returned None: return a list of (score, doc) pairs")
        hits = list(hits)
        if len(hits) != 3:
            raise Mismatch(f"search({query!r}, k=3) returned {len(hits)} results, not 3")
        try:
            scores = [float(s) for s, _ in hits]
            found = [d["id"] for _, d in hits]
        except (TypeError, ValueError, KeyError):
            raise Mismatch(f"each result should be a (score, doc) pair, got {short(hits[0], 80)}") from None
        if scores != sorted(scores, reverse=True):
            raise Mismatch(f"the scores are not best first: {[round(s, 3) for s in scores]}")
        if not all(-1.0001 <= s <= 1.0001 for s in scores):
            raise Mismatch(f"scores {[round(s, 3) for s in scores]} are not cosines (between -1 and 1): are the "
                           "vectors unit length?")
        if found[0] != want:
            wrong.append(f"{query!r}: best is {found[0]!r}, expected {want!r}")
    if wrong:
        raise Mismatch(f"{len(wrong)} of {len(KNOWN_QUERIES)} known queries find the wrong document", details=wrong)
    return f"Semantic search: all {len(KNOWN_QUERIES)} known queries find their document first"
