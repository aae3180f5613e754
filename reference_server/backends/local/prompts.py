"""From an OpenAI request to token ids and ``SamplingParams``: what only a local model can judge.

The chat template, the context window, token ids and the vocabulary belong to the model, so
these checks live in the local backend; the request models (protocol.py) check the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ... import errors
from ...protocol import CreateChatCompletionRequest, _Sampling, content_text
from ...sampling import SamplingParams
from . import tools

if TYPE_CHECKING:
    from .backend import LocalBackend


# --8<-- [start:template_messages]
def template_messages(body: CreateChatCompletionRequest, instructions: str = "") -> list[dict[str, str]]:
    """Flattens OpenAI messages into the {role, content} pairs a chat template expects.

    The template knows nothing of tools: tools.py writes calls and results as text, and its
    ``instructions`` (the tools, a JSON format) join the system message.
    """
    out = []
    for message in body.messages:
        role = "system" if message.role == "developer" else message.role
        out.append(tools.template_message(message) if role in ("assistant", "tool")
                   else {"role": role, "content": content_text(message.content)})
    if instructions and out[0]["role"] == "system":
        out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{instructions}"}
    elif instructions:
        out.insert(0, {"role": "system", "content": instructions})
    return out
# --8<-- [end:template_messages]


UNSERVABLE = {"audio": "This model cannot produce audio; omit 'audio'.",
              "functions": "'functions' is deprecated and not supported; send 'tools' instead.",
              "function_call": "'function_call' is deprecated and not supported; send 'tool_choice' instead."}


def refuse_unservable(body: CreateChatCompletionRequest) -> None:
    for name, message in UNSERVABLE.items():
        if getattr(body, name) is not None:
            raise errors.invalid_request(message, param=name)


def chat_prompt(backend: LocalBackend, body: CreateChatCompletionRequest, instructions: str = "") -> list[int]:
    try:
        text = backend.render_chat(template_messages(body, instructions))
    except ValueError as exc:  # the model's template refused the conversation
        raise errors.invalid_request(f"The model's chat template rejected the messages: {exc}",
                                     param="messages") from exc
    return backend.tokenize(text)


def completion_prompts(backend: LocalBackend, prompt: Any) -> list[list[int]]:
    """A string, a list of strings, a token list, or a list of token lists: one prompt each."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if prompt and isinstance(prompt[0], int):
        prompt = [prompt]
    out = []
    for i, item in enumerate(prompt):
        if isinstance(item, str):
            out.append(backend.tokenize(item, special=False))
        else:
            if not item or not all(backend.valid_token(t) for t in item):
                raise errors.invalid_request("Token ids must be non-empty and within the model's vocabulary.",
                                             param=f"prompt[{i}]")
            out.append(list(item))
    if not out:
        raise errors.invalid_request("'prompt' must not be empty.", param="prompt")
    return out


# --8<-- [start:texts]
def embedding_texts(backend: LocalBackend, data: Any) -> tuple[list[str], int]:
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
            count, text = len(backend.tokenize(item, special=False)), item
        else:
            if not item or not all(backend.valid_token(t) for t in item):
                raise errors.invalid_request("Token ids must be non-empty and within the model's vocabulary.",
                                             param=param)
            count, text = len(item), backend.detokenize(item)
        if count > backend.n_ctx:
            raise errors.invalid_request(
                f"This model's maximum context length is {backend.n_ctx} tokens, however you requested "
                f"{count} tokens in {param}. Please reduce your input.", param=param,
                code="context_length_exceeded")
        texts.append(text)
        total += count
    return texts, total
# --8<-- [end:texts]


def _logit_bias(backend: LocalBackend, bias: dict[str, int] | None) -> dict[int, float]:
    out: dict[int, float] = {}
    for key, value in (bias or {}).items():
        if not key.lstrip("-").isdigit() or not backend.valid_token(int(key)):
            raise errors.invalid_request(f"Invalid key in 'logit_bias': {key!r} is not a token id of this model.",
                                         param="logit_bias")
        # -100 / 100 mean "ban" / "force" in OpenAI's API; in logit space that is infinite.
        out[int(key)] = float("-inf") if value == -100 else float(value)
    return out


# --8<-- [start:sampling_params]
def sampling_params(backend: LocalBackend, body: _Sampling, prompt_tokens: int, *, limit: int | None,
                    limit_param: str, n: int = 1, logprobs: int | None = None) -> SamplingParams:
    """Resolves defaults and refuses a request that cannot fit in the context window."""
    room = backend.n_ctx - prompt_tokens
    if room <= 0:  # the prompt alone overflows: shrinking max_tokens would not help (OpenAI says "messages")
        raise errors.context_length_exceeded(prompt_tokens, limit or 0, backend.n_ctx, "messages")
    if limit is None:
        limit = room
    elif limit > room:
        raise errors.context_length_exceeded(prompt_tokens, limit, backend.n_ctx, limit_param)
    return SamplingParams(
        max_tokens=limit,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=40 if body.top_k is None else body.top_k,
        min_p=0.05 if body.min_p is None else body.min_p,
        repeat_penalty=body.repeat_penalty or 1.0,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        seed=body.seed,
        logit_bias=_logit_bias(backend, body.logit_bias),
        stop=tuple(body.stop_list()),
        logprobs=logprobs,
        n=n,
    )
# --8<-- [end:sampling_params]
