"""Chapter 9: a function call through the Responses API, continued on the server with previous_response_id."""

import json
import os

from openai import OpenAI

client = OpenAI(base_url=os.environ.get("BASE_URL", "http://127.0.0.1:8000/v1"), api_key="not-needed")
MODEL = "SmolLM2-135M-Instruct"

weather = {
    "type": "function",
    "name": "get_weather",  # flat: no "function": {...} wrapper as in chat completions
    "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                   "required": ["city"], "additionalProperties": False},
    "strict": True,
}

# 1. Force the call. The output is a list of items: here one function_call item.
first = client.responses.create(model=MODEL, input="What's the weather in Paris?", tools=[weather],
                                tool_choice={"type": "function", "name": "get_weather"}, temperature=0)
call = first.output[0]
print(f"{first.id}: status={first.status}, output items: {[item.type for item in first.output]}")
print(f"  {call.type} {call.name}({call.arguments}) call_id={call.call_id}")

# 2. Run the function here; send back only its output. The server remembers the rest.
result = {"city": json.loads(call.arguments)["city"], "temperature": 21, "sky": "clear"}
second = client.responses.create(model=MODEL, previous_response_id=first.id, tools=[weather], temperature=0,
                                 max_output_tokens=32,
                                 input=[{"type": "function_call_output", "call_id": call.call_id,
                                         "output": json.dumps(result)}])
print(f"{second.id}: status={second.status}, output items: {[item.type for item in second.output]}")
print(f"  answer: {second.output_text}")
print(f"  usage: input={second.usage.input_tokens} output={second.usage.output_tokens}"
      f" total={second.usage.total_tokens}")

# 3. What the server stored: the second response's own input, and the response itself.
items = client.responses.input_items.list(second.id)
print(f"input items of {second.id}: {[(item.type, item.call_id) for item in items]}")
print(f"retrieved: {client.responses.retrieve(second.id).status}")
client.responses.delete(first.id)
client.responses.delete(second.id)
print("deleted both; retrieving one now answers 404")
