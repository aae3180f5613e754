"""Chapter 7: a tool call, forced, run locally, and its result sent back for the final answer."""

import json
import os

from openai import OpenAI

client = OpenAI(base_url=os.environ.get("BASE_URL", "http://127.0.0.1:8000/v1"), api_key="not-needed")
MODEL = "SmolLM2-135M-Instruct"


def get_weather(city: str, unit: str) -> dict:
    """A stand-in for a real weather service."""
    return {"city": city, "temperature": 21 if unit == "celsius" else 70, "unit": unit, "sky": "clear"}


tools = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}]
messages = [{"role": "user", "content": "What's the weather in Paris?"}]

# 1. Force the call: the grammar guarantees a call to get_weather with valid arguments.
first = client.chat.completions.create(
    model=MODEL, messages=messages, tools=tools, temperature=0,
    tool_choice={"type": "function", "function": {"name": "get_weather"}},
)
call = first.choices[0].message.tool_calls[0]
arguments = json.loads(call.function.arguments)  # a JSON string, not an object
print(f"finish_reason={first.choices[0].finish_reason}  call: {call.function.name}({arguments})")

# 2. Run it here, on the client: the server never runs tools.
result = get_weather(**arguments)

# 3. Send the call and its result back; the model answers in words.
messages += [first.choices[0].message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)}]
final = client.chat.completions.create(model=MODEL, messages=messages, tools=tools, tool_choice="none",
                                       temperature=0, max_tokens=48)
print(f"finish_reason={final.choices[0].finish_reason}  answer: {final.choices[0].message.content}")
