"""Chapter 2: read finish_reason before you trust the text."""

import os

from openai import OpenAI

client = OpenAI(base_url=os.environ.get("BASE_URL", "http://127.0.0.1:8000/v1"), api_key="not-needed")

for budget in (4, 64):
    reply = client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=[{"role": "user", "content": "Say hello in five words."}],
        max_tokens=budget,
        temperature=0,
    )
    choice = reply.choices[0]
    if choice.finish_reason == "length":
        print(f"max_tokens={budget}: cut off after {reply.usage.completion_tokens} tokens: {choice.message.content!r}")
    else:
        print(f"max_tokens={budget}: complete ({choice.finish_reason}): {choice.message.content!r}")
