"""Chapter 1: the official client, pointed at your server instead of OpenAI's."""

import os

from openai import OpenAI

BASE_URL = os.environ.get("BASE_URL", "http://127.0.0.1:8000/v1")

client = OpenAI(base_url=BASE_URL, api_key="not-needed")  # the SDK insists on a key, even an unused one
model = client.models.list().data[0].id  # ask the server which model it serves
reply = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Say hello in five words."}],
    max_tokens=32,
    temperature=0,
)
print(reply.choices[0].message.content)
print(reply.usage)
