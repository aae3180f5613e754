"""Chapter 10: one conversation, streamed in three wire formats by one server, and read back by three SDKs."""

import json
import os

import anthropic
import httpx
import ollama
import openai

BASE_URL = os.environ.get("BASE_URL", "http://127.0.0.1:8000/v1")
ROOT = BASE_URL.removesuffix("/v1")  # Anthropic's and Ollama's clients want the server's root
MODEL = "SmolLM2-135M-Instruct"
SYSTEM, QUESTION = "You are terse.", "Name a colour."
FORMATS = [  # (what, path, request body)
    ("OpenAI: data-only SSE, ends with [DONE]", "/v1/chat/completions",
     {"model": MODEL, "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
      "max_tokens": 3, "temperature": 0, "stream": True}),
    ("Anthropic: named SSE events", "/v1/messages",
     {"model": MODEL, "system": SYSTEM, "messages": [{"role": "user", "content": QUESTION}],
      "max_tokens": 3, "temperature": 0, "stream": True}),
    ("Ollama: NDJSON, streamed unless told not to", "/api/chat",
     {"model": MODEL, "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
      "options": {"num_predict": 3, "temperature": 0}}),
]


REPEATED = {"id", "created", "created_at", "model", "system_fingerprint"}  # the same on every line: shown as "…"


def short(line: str) -> str:
    """A line of the stream, its JSON with the fields that repeat on every line elided."""
    prefix, _, data = line.rpartition("data: ") if line.startswith("data: ") else ("", "", line)
    try:
        value = json.loads(data)
    except ValueError:
        return line

    def elide(v):
        if isinstance(v, dict):
            return {k: "…" if k in REPEATED else elide(x) for k, x in v.items()}
        return [elide(x) for x in v] if isinstance(v, list) else v
    return ("data: " if line.startswith("data: ") else "") + json.dumps(elide(value), ensure_ascii=False,
                                                                        separators=(",", ":"))


with httpx.Client(base_url=ROOT, timeout=120) as http:
    for what, path, body in FORMATS:
        print(f"== {what}: POST {path}")
        with http.stream("POST", path, json=body) as r:
            print(f"   Content-Type: {r.headers['content-type']}")
            for line in r.iter_lines():
                if line:
                    print("   " + short(line))
        print()

# The same question through each official SDK: where the text, the stop reason and the counts are.
messages = [{"role": "user", "content": QUESTION}]
o = openai.OpenAI(base_url=BASE_URL, api_key="not-needed").chat.completions.create(
    model=MODEL, messages=[{"role": "system", "content": SYSTEM}, *messages], max_tokens=3, temperature=0)
a = anthropic.Anthropic(base_url=ROOT, api_key="not-needed").messages.create(
    model=MODEL, system=SYSTEM, messages=messages, max_tokens=3, extra_body={"temperature": 0})
l = ollama.Client(host=ROOT).chat(
    model=MODEL, messages=[{"role": "system", "content": SYSTEM}, *messages], options={"num_predict": 3, "temperature": 0})
rows = [("OpenAI", "choices[0].message.content", o.choices[0].message.content,
         f"finish_reason={o.choices[0].finish_reason}", f"prompt_tokens={o.usage.prompt_tokens} completion_tokens={o.usage.completion_tokens}"),
        ("Anthropic", "content[0].text", a.content[0].text,
         f"stop_reason={a.stop_reason}", f"input_tokens={a.usage.input_tokens} output_tokens={a.usage.output_tokens}"),
        ("Ollama", "message.content", l.message.content,
         f"done_reason={l.done_reason}", f"prompt_eval_count={l.prompt_eval_count} eval_count={l.eval_count}")]
for row in rows:
    print(f"{row[0]:<10} {row[1]:<27} {json.dumps(row[2]):<14} {row[3]:<23} {row[4]}")
