"""Chapter 5: what the official client raises, and what it reads from the error envelope."""

import os

import openai
from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("BASE_URL", "http://127.0.0.1:8000/v1"),
    api_key="not-needed",
    max_retries=0,  # the default (2) silently retries 408/409/429/5xx; see the chapter
)
attempts = {
    "unknown model": dict(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]),
    "temperature out of range": dict(model="SmolLM2-135M-Instruct", temperature=3,
                                     messages=[{"role": "user", "content": "Hi"}]),
    "asks for more than the context": dict(model="SmolLM2-135M-Instruct", max_tokens=100_000,
                                           messages=[{"role": "user", "content": "Hi"}]),
}
for label, request in attempts.items():
    try:
        client.chat.completions.create(**request)
    except openai.APIStatusError as exc:
        error = exc.body  # the "error" object of the envelope, already unwrapped by the SDK
        print(f"{label}: {type(exc).__name__} {exc.status_code} code={error['code']} param={error['param']}")
        print(f"    {error['message']}")
