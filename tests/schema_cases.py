"""Counter-examples: valid examples of ``schemas/`` with one pitfall each.

Each case starts from an example of the schema (so the base is known to be valid) and
changes a few fields; ``path`` is where the problem must be reported. ``differs`` names the
deliberate difference (see ``DIFFERENCES`` in test_schemas.py) when OpenAI's spec would accept
what we refuse. The spec's own verdict is never written here: the test computes it.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

import schemas

DROP = object()  # as a new value: remove the field


def _keys(path: str) -> list[str | int]:
    return [int(i) if i else k for i, k in re.findall(r"\[(\d+)\]|([^.\[\]]+)", path)]


def changed(instance: Any, changes: dict[str, Any]) -> Any:
    """A copy of ``instance`` with each path set to its value; the path ``$`` replaces it all."""
    out = copy.deepcopy(instance)
    for path, value in changes.items():
        if path == "$":
            out = copy.deepcopy(value)
            continue
        *parents, last = _keys(path)
        target = out
        for key in parents:
            target = target[key]
        if value is DROP:
            del target[last]
        else:
            target[last] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class Bad:
    schema: str
    pitfall: str
    changes: dict[str, Any]
    path: str
    says: str = ""  # a phrase the problem at ``path`` must contain
    differs: str | None = None
    example: int = 0
    id: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", f"{self.schema}: {self.pitfall}")

    def instance(self) -> Any:
        return changed(schemas.load(self.schema)["examples"][self.example], self.changes)


FIVE_STOPS = ["a", "b", "c", "d", "e"]

CASES = [
    # ---- chat completion ----------------------------------------------------------------------
    Bad("chat_completion_response", "usage missing", {"usage": DROP}, "usage", differs="usage_required"),
    Bad("chat_completion_response", "finish_reason in capitals", {"choices[0].finish_reason": "STOP"},
        "choices[0].finish_reason", says="'STOP' is not one of 'stop'"),
    Bad("chat_completion_response", "finish_reason renamed finishReason",
        {"choices[0].finish_reason": DROP, "choices[0].finishReason": "stop"},
        "choices[0]", says="did you mean 'finish_reason'"),
    Bad("chat_completion_response", "optional field in camelCase", {"system_fingerprint": DROP, "systemFingerprint": "fp_2d711642b7"},
        "$", says="did you mean 'system_fingerprint'", differs="closed_objects"),
    Bad("chat_completion_response", "object of a chunk", {"object": "chat.completion.chunk"}, "object"),
    Bad("chat_completion_response", "created as a string", {"created": "1795428252"}, "created"),
    Bad("chat_completion_response", "message role user", {"choices[0].message.role": "user"}, "choices[0].message.role"),
    Bad("chat_completion_response", "content null without tool_calls", {"choices[0].message.content": None},
        "choices[0].message.content", says="only when the message carries tool_calls", differs="content_needs_tool_calls"),
    Bad("chat_completion_response", "content null with an empty tool_calls list",
        {"choices[0].message.tool_calls": []}, "choices[0].message.content", example=1,
        differs="content_needs_tool_calls"),
    Bad("chat_completion_response", "content missing", {"choices[0].message.content": DROP}, "choices[0].message.content"),
    Bad("chat_completion_response", "logprobs omitted instead of null", {"choices[0].logprobs": DROP}, "choices[0].logprobs"),
    Bad("chat_completion_response", "negative token count",
        {"usage": {"prompt_tokens": -1, "completion_tokens": 10, "total_tokens": 9}}, "usage.prompt_tokens",
        differs="usage_arithmetic"),
    Bad("chat_completion_response", "total_tokens is not the sum", {"usage.total_tokens": 40}, "usage.total_tokens",
        says="31 + 10 = 41", differs="usage_arithmetic"),
    Bad("chat_completion_response", "usage in camelCase",
        {"usage": {"promptTokens": 31, "completionTokens": 10, "totalTokens": 41}}, "usage.prompt_tokens"),
    Bad("chat_completion_response", "tool arguments as an object, not a JSON string",
        {"choices[0].message.tool_calls[0].function.arguments": {"city": "Paris"}},
        "choices[0].message.tool_calls[0].function.arguments", example=1),
    Bad("chat_completion_response", "tool call type tool", {"choices[0].message.tool_calls[0].type": "tool"},
        "choices[0].message.tool_calls[0].type", example=1),
    Bad("chat_completion_response", "stream delta instead of message",
        {"choices[0].delta": {"content": "Hi"}, "choices[0].message": DROP}, "choices[0].message"),
    # ---- chat chunks --------------------------------------------------------------------------
    Bad("chat_completion_chunk", "delta is a string", {"choices[0].delta": "Hello"}, "choices[0].delta", example=1),
    Bad("chat_completion_chunk", "delta content is a number", {"choices[0].delta.content": 42},
        "choices[0].delta.content", example=1),
    Bad("chat_completion_chunk", "message instead of delta",
        {"choices[0].message": {"role": "assistant", "content": "Hello"}, "choices[0].delta": DROP},
        "choices[0].delta", example=1),
    Bad("chat_completion_chunk", "object of a full response", {"object": "chat.completion"}, "object"),
    Bad("chat_completion_chunk", "finish_reason capitalised", {"choices[0].finish_reason": "Stop"},
        "choices[0].finish_reason", says="'Stop' is not one of", example=2),
    Bad("chat_completion_chunk", "unknown role in delta", {"choices[0].delta.role": "bot"}, "choices[0].delta.role"),
    Bad("chat_completion_chunk", "tool call piece without index",
        {"choices[0].delta.tool_calls[0].index": DROP}, "choices[0].delta.tool_calls[0].index", example=5),
    Bad("chat_completion_chunk", "usage chunk with incomplete usage", {"usage": {"prompt_tokens": 31, "total_tokens": 41}},
        "usage.completion_tokens", example=3),
    Bad("chat_completion_chunk", "usage chunk total is not the sum", {"usage.total_tokens": 42}, "usage.total_tokens",
        example=3, differs="usage_arithmetic"),
    # ---- legacy completions -------------------------------------------------------------------
    Bad("completion_response", "usage missing", {"usage": DROP}, "usage", differs="usage_required"),
    Bad("completion_response", "finish_reason tool_calls on the legacy endpoint",
        {"choices[0].finish_reason": "tool_calls"}, "choices[0].finish_reason"),
    Bad("completion_response", "chat-shaped choice", {"choices[0].text": DROP, "choices[0].message": {"role": "assistant", "content": "x"}},
        "choices[0].text"),
    Bad("completion_response", "object of the chat endpoint", {"object": "chat.completion"}, "object"),
    Bad("completion_chunk", "finish_reason in capitals", {"choices[0].finish_reason": "STOP"}, "choices[0].finish_reason",
        example=1),
    Bad("completion_chunk", "text null", {"choices[0].text": None}, "choices[0].text", example=1),
    # ---- embeddings ---------------------------------------------------------------------------
    Bad("embedding_response", "usage missing", {"usage": DROP}, "usage"),
    Bad("embedding_response", "vector of strings", {"data[0].embedding": ["0.0123", "-0.0456"]}, "data[0].embedding[0]"),
    Bad("embedding_response", "envelope object 'embedding'", {"object": "embedding"}, "object"),
    Bad("embedding_response", "embedding is a bare array, no envelope", {"$": [[0.0123, -0.0456]]}, "$"),
    # ---- models -------------------------------------------------------------------------------
    Bad("model", "owned_by missing", {"owned_by": DROP}, "owned_by"),
    Bad("model", "created as an ISO date", {"created": "2026-11-23T10:00:00Z"}, "created"),
    Bad("model_list", "object 'models'", {"object": "models"}, "object"),
    Bad("model_list", "data is an object", {"data": {"SmolLM2-135M-Instruct": {}}}, "data"),
    Bad("model_list", "a listed model without object", {"data[0].object": DROP}, "data[0].object"),
    # ---- errors -------------------------------------------------------------------------------
    Bad("error", "param missing", {"error.param": DROP}, "error.param", example=2),
    Bad("error", "FastAPI's detail instead of the envelope", {"$": {"detail": "Not Found"}}, "error"),
    Bad("error", "code as the HTTP status", {"error.code": 404}, "error.code"),
    Bad("error", "message missing", {"error.message": DROP}, "error.message"),
    # ---- request bodies -----------------------------------------------------------------------
    Bad("chat_completion_request", "temperature above 2", {"temperature": 2.5}, "temperature"),
    Bad("chat_completion_request", "top_p above 1", {"top_p": 1.5}, "top_p"),
    Bad("chat_completion_request", "n of 0", {"n": 0}, "n"),
    Bad("chat_completion_request", "presence_penalty below -2", {"presence_penalty": -3}, "presence_penalty"),
    Bad("chat_completion_request", "five stop sequences", {"stop": FIVE_STOPS}, "stop", says="at most 4"),
    Bad("chat_completion_request", "no messages", {"messages": []}, "messages"),
    Bad("chat_completion_request", "messages missing", {"messages": DROP}, "messages"),
    Bad("chat_completion_request", "unknown role", {"messages[0].role": "bot"}, "messages[0].role"),
    Bad("chat_completion_request", "user content null", {"messages[0].content": None}, "messages[0].content"),
    Bad("chat_completion_request", "tool message without tool_call_id", {"messages[2].tool_call_id": DROP},
        "messages[2].tool_call_id", example=2),
    Bad("chat_completion_request", "assistant message with neither content nor tool_calls",
        {"messages[1].tool_calls": DROP}, "messages[1].content", example=2, differs="content_needs_tool_calls"),
    Bad("chat_completion_request", "camelCase maxTokens", {"max_tokens": DROP, "maxTokens": 32}, "$",
        says="did you mean 'max_tokens'", differs="closed_objects"),
    Bad("chat_completion_request", "top_logprobs above 20", {"top_logprobs": 21}, "top_logprobs", example=3),
    Bad("completion_request", "prompt missing", {"prompt": DROP}, "prompt"),
    Bad("completion_request", "logprobs as a boolean (the chat form)", {"logprobs": True}, "logprobs", example=1),
    Bad("completion_request", "logprobs above 5", {"logprobs": 6}, "logprobs", example=1),
    Bad("completion_request", "best_of above 20", {"best_of": 21}, "best_of"),
    Bad("embedding_request", "encoding_format binary", {"encoding_format": "binary"}, "encoding_format", example=1),
    Bad("embedding_request", "empty input list", {"input": []}, "input"),
    Bad("embedding_request", "camelCase encodingFormat", {"encodingFormat": "float"}, "$", says="did you mean 'encoding_format'"),
    # ---- Responses API: requests -------------------------------------------------------------
    Bad("response_request", "max_tokens instead of max_output_tokens", {"max_output_tokens": DROP, "max_tokens": 32},
        "$", says="unexpected field 'max_tokens'", differs="closed_objects"),
    Bad("response_request", "max_output_tokens below 16", {"max_output_tokens": 8}, "max_output_tokens"),
    Bad("response_request", "input missing", {"input": DROP}, "input", differs="unserved_features"),
    Bad("response_request", "unknown role", {"input[0].role": "bot"}, "input[0].role", example=1),
    Bad("response_request", "chat-shaped tool, nested under function",
        {"tools[0]": {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}},
        "tools[0].name", example=1),
    Bad("response_request", "function call arguments as an object, not a JSON string",
        {"input[1].arguments": {"city": "Paris"}}, "input[1].arguments", example=1),
    Bad("response_request", "chat-shaped text.format, nested under json_schema",
        {"text.format": {"type": "json_schema", "json_schema": {"name": "color", "schema": {"type": "object"}}}},
        "text.format.name", example=2),
    Bad("response_request", "a built-in tool", {"tools": [{"type": "web_search"}]}, "tools[0].type",
        example=1, differs="unserved_features"),
    Bad("response_request", "an image part", {"input[1].content": [{"type": "input_image", "detail": "auto",
                                                                    "image_url": "https://example.com/a.png"}]},
        "input[1].content[0].type", example=2, differs="unserved_features"),
    Bad("response_request", "reasoning effort", {"reasoning": {"effort": "low"}}, "reasoning.effort",
        differs="unserved_features"),
    Bad("response_request", "include of encrypted reasoning", {"include": ["reasoning.encrypted_content"]},
        "include[0]", example=2, differs="unserved_features"),
    # ---- Responses API: the response object ---------------------------------------------------
    Bad("response", "usage in chat's names", {"usage": {"prompt_tokens": 31, "completion_tokens": 2, "total_tokens": 33}},
        "usage.input_tokens"),
    Bad("response", "usage null instead of absent", {"usage": None}, "usage"),
    Bad("response", "usage total is not the sum", {"usage.total_tokens": 40}, "usage.total_tokens",
        says="31 + 2 = 33", differs="usage_arithmetic"),
    Bad("response", "choices instead of output", {"output": DROP, "choices": [{"index": 0, "message": {
        "role": "assistant", "content": "Paris"}}]}, "output"),
    Bad("response", "message content as a string", {"output[0].content": "Paris"}, "output[0].content"),
    Bad("response", "output_text without annotations", {"output[0].content[0].annotations": DROP},
        "output[0].content[0].annotations"),
    Bad("response", "function call arguments as an object", {"output[0].arguments": {"city": "Paris"}},
        "output[0].arguments", example=1),
    Bad("response", "function call without call_id", {"output[0].call_id": DROP}, "output[0].call_id", example=1),
    Bad("response", "created_at as an ISO date", {"created_at": "2026-11-23T10:00:00Z"}, "created_at"),
    Bad("response", "completed without usage", {"usage": DROP}, "usage", differs="status_consistency"),
    Bad("response", "incomplete without a reason", {"incomplete_details": None}, "incomplete_details",
        example=2, differs="status_consistency"),
    # ---- Responses API: stream events ---------------------------------------------------------
    Bad("response_stream_event", "text delta without logprobs", {"logprobs": DROP}, "logprobs", example=3),
    Bad("response_stream_event", "sequence_number missing", {"sequence_number": DROP}, "sequence_number", example=3),
    Bad("response_stream_event", "an event type that does not exist", {"type": "response.output_text.added"}, "type",
        example=3),
    Bad("response_stream_event", "error event in chat's envelope", {"$": {"type": "error", "sequence_number": 5,
        "error": {"message": "boom", "type": "server_error", "param": None, "code": None}}}, "message", example=9),
    Bad("response_stream_event", "function call item without call_id", {"item.call_id": DROP}, "item.call_id",
        example=5),
    Bad("response_stream_event", "arguments done without the name", {"name": DROP}, "name", example=7),
    Bad("response_stream_event", "completed event carrying a response in progress",
        {"response.status": "in_progress", "response.usage": DROP, "response.completed_at": None}, "response.status",
        example=8, differs="status_consistency"),
    # ---- Responses API: stored responses ------------------------------------------------------
    Bad("response_input_item_list", "item without id", {"data[0].id": DROP}, "data[0].id"),
    Bad("response_input_item_list", "message content as a string", {"data[2].content": "What is the weather?"},
        "data[2].content"),
    Bad("response_input_item_list", "has_more missing", {"has_more": DROP}, "has_more"),
    Bad("response_deleted", "deleted false", {"deleted": False}, "deleted"),
    Bad("response_deleted", "object response.deleted", {"object": "response.deleted"}, "object"),
    # ---- the other protocols: each one's own pitfalls (their examples are not OpenAI's to judge) ----
    Bad("ollama_chat_response", "the last line without its counts", {"eval_count": DROP}, "eval_count", example=2),
    Bad("ollama_chat_response", "done_reason on a line that is not the last", {"done_reason": "stop"}, "done_reason",
        says="belongs to the last line"),
    Bad("ollama_chat_response", "durations in milliseconds, as floats", {"total_duration": 556.8}, "total_duration",
        example=2),
    Bad("ollama_chat_response", "tool arguments as a JSON string (OpenAI's form)",
        {"message.tool_calls[0].function.arguments": '{"city": "Paris"}'}, "message.tool_calls[0].function.arguments",
        example=1),
    Bad("ollama_chat_response", "created_at in Unix seconds (OpenAI's created)", {"created_at": 1795428252}, "created_at"),
    Bad("ollama_embed_response", "OpenAI's data list instead of embeddings",
        {"embeddings": DROP, "data": [{"embedding": [0.1], "index": 0}]}, "embeddings"),
    Bad("ollama_error", "OpenAI's nested envelope", {"error": {"message": "x", "type": "invalid_request_error"}}, "error"),
    Bad("ollama_show", "model_info missing (the ollama client requires it)", {"model_info": DROP}, "model_info"),
    Bad("anthropic_message", "content as a string", {"content": "Hello"}, "content"),
    Bad("anthropic_message", "OpenAI's finish_reason value", {"stop_reason": "stop"}, "stop_reason"),
    Bad("anthropic_message", "OpenAI's usage names", {"usage": {"prompt_tokens": 19, "completion_tokens": 8}},
        "usage.input_tokens"),
    Bad("anthropic_message", "tool input as a JSON string", {"content[0].input": '{"city": "Paris"}'},
        "content[0].input", example=1),
    Bad("anthropic_stream_event", "a text delta without its text", {"delta": {"type": "text_delta"}}, "delta.text",
        example=3),
    Bad("anthropic_stream_event", "an unknown event type", {"type": "content_block_deltas"}, "type", example=3),
    Bad("anthropic_stream_event", "message_start with content already in it",
        {"message.content": [{"type": "text", "text": "Hi"}]}, "message.content"),
    Bad("anthropic_error", "OpenAI's envelope", {"$": {"error": {"message": "x", "type": "invalid_request_error",
                                                                  "param": None, "code": None}}}, "type"),
    Bad("anthropic_error", "an error type Anthropic does not have", {"error.type": "server_error"}, "error.type"),
    Bad("llamacpp_tokenize", "a piece as a lossy string where bytes belong", {"tokens[0].piece": 195}, "tokens[0].piece",
        example=2),
    Bad("llamacpp_detokenize", "text instead of content", {"content": DROP, "text": "Hello world"}, "$"),
    Bad("llamacpp_props", "n_ctx missing from the generation settings", {"default_generation_settings.n_ctx": DROP},
        "default_generation_settings.n_ctx"),
    Bad("llamacpp_error", "code as a string (OpenAI's form)", {"error.code": "invalid_api_key"}, "error.code"),
]


# ---- what this server refuses or accepts beyond the spec -------------------------------------------
# Request bodies judged by the server itself (tests/test_openapi.py): its declared OpenAPI schema must
# give the verdict the server gives. They are not counter-examples of schemas/ (which follow OpenAI's
# spec): each is a rule of this server, its limits, or a rule between fields.

@dataclass(frozen=True)
class Served:
    schema: str
    pitfall: str
    changes: dict[str, Any]
    accepted: bool
    example: int = 0
    id: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", f"{self.schema}: {self.pitfall}")

    def instance(self) -> Any:
        return changed(schemas.load(self.schema)["examples"][self.example], self.changes)


USER, ASSISTANT_EMPTY = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}

SERVED = [
    Served("chat_completion_request", "stream_options without stream", {"stream_options": {"include_usage": True}}, False),
    Served("chat_completion_request", "top_logprobs without logprobs", {"top_logprobs": 2}, False),
    Served("chat_completion_request", "top_logprobs with logprobs", {"top_logprobs": 2, "logprobs": True}, True),
    Served("chat_completion_request", "audio asked of a text model", {"audio": {"voice": "alloy", "format": "mp3"}}, False),
    Served("chat_completion_request", "deprecated functions", {"functions": [{"name": "get_weather"}]}, False),
    Served("chat_completion_request", "tool_choice without tools", {"tool_choice": "auto"}, False),
    Served("chat_completion_request", "tool_choice none without tools", {"tool_choice": "none"}, True),
    Served("chat_completion_request", "custom tool choice", {"tool_choice": {"type": "custom", "custom": {"name": "x"}}},
           False, example=4),
    Served("chat_completion_request", "tool parameters not an object schema",
           {"tools[0].function.parameters": {"type": "string"}}, False, example=4),
    Served("chat_completion_request", "tool parameters without a type", {"tools[0].function.parameters": {}}, False,
           example=4),
    Served("chat_completion_request", "temperature as a string", {"temperature": "0.5"}, False),
    Served("chat_completion_request", "stream as 1", {"stream": 1}, False),
    Served("chat_completion_request", "max_tokens beyond any context window", {"max_tokens": 10**9}, False),
    Served("chat_completion_request", "logit_bias key in superscript digits", {"logit_bias": {"²": 5}}, False),
    Served("chat_completion_request", "n above the server's limit", {"n": 17}, False),
    Served("chat_completion_request", "n within the server's limit", {"n": 2}, True),
    Served("chat_completion_request", "unknown model", {"model": "gpt-4o"}, False),
    Served("chat_completion_request", "assistant message with an empty tool_calls list", {"messages[1].tool_calls": []},
           False, example=2),
    Served("chat_completion_request", "assistant message with empty content",
           {"messages": [USER, ASSISTANT_EMPTY, USER]}, True),
    Served("completion_request", "suffix (fill-in-the-middle)", {"suffix": " end."}, False),
    Served("completion_request", "empty suffix", {"suffix": ""}, True),
    Served("completion_request", "best_of other than n", {"best_of": 2}, False),
    Served("completion_request", "best_of equal to n", {"best_of": 2, "n": 2}, True),
    Served("completion_request", "stream with two prompts", {"stream": True}, False, example=1),
    Served("completion_request", "stream with one prompt in a list", {"stream": True, "prompt": ["Once upon a time"]},
           True, example=1),
    Served("completion_request", "empty prompt", {"prompt": ""}, False),
    Served("completion_request", "empty prompt list", {"prompt": []}, False),
    Served("completion_request", "negative token id", {"prompt": [-1, 504]}, False, example=2),
    Served("embedding_request", "empty input", {"input": ""}, False),
    Served("embedding_request", "an empty string among the inputs", {"input": ["first text", ""]}, False, example=1),
    Served("embedding_request", "an empty token list among the inputs", {"input[1]": []}, False, example=2),
    Served("response_request", "allowed tool without a name (was a 500)",
           {"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function"}]}}, False, example=4),
    Served("response_request", "allowed tool named", {"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [
        {"type": "function", "name": "get_weather"}]}}, True, example=4),
    Served("response_request", "background response", {"background": True}, False),
    Served("response_request", "truncation auto", {"truncation": "auto"}, False),
    Served("response_request", "top_logprobs without the logprobs include", {"top_logprobs": 2}, False),
    Served("response_request", "an image part", {"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "https://example.com/cat.png"}]}]}, False),
    Served("response_request", "output_text in a user message", {"input": [{"role": "user", "content": [
        {"type": "output_text", "text": "Paris"}]}]}, False),
    Served("response_request", "a built-in tool", {"tools": [{"type": "web_search"}]}, False),
    Served("response_request", "max_output_tokens as a string", {"max_output_tokens": "32"}, False),
    Served("response_request", "max_output_tokens as 32.0", {"max_output_tokens": 32.0}, True),
]
