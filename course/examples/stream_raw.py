"""Chapter 4: the same stream without the SDK: Server-Sent Events are just lines."""

import json
import os

import httpx

BASE_URL = os.environ.get("BASE_URL", "http://127.0.0.1:8000/v1")
body = {
    "model": "SmolLM2-135M-Instruct",
    "messages": [{"role": "user", "content": "Count from one to five."}],
    "max_tokens": 48,
    "temperature": 0,
    "stream": True,
}
with httpx.stream("POST", f"{BASE_URL}/chat/completions", json=body, timeout=60) as response:
    response.raise_for_status()
    for line in response.iter_lines():
        if not line.startswith("data: "):
            continue  # blank separator lines (and ": comments", if a server sends them)
        data = line[len("data: "):]
        if data == "[DONE]":
            break
        event = json.loads(data)
        if "error" in event:  # an error after the 200 was sent arrives as an event
            raise RuntimeError(event["error"]["message"])
        for choice in event["choices"]:
            print(choice["delta"].get("content") or "", end="", flush=True)
print()
