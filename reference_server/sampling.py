"""Sampling parameters and stop-sequence matching: pure logic, no llama.cpp, unit-tested alone."""

from __future__ import annotations

from dataclasses import dataclass, field


# --8<-- [start:sampling_params]
@dataclass(frozen=True)
class SamplingParams:
    """One generation's knobs, already resolved from an OpenAI request to concrete values.

    OpenAI defaults (temperature 1, top_p 1) apply where the client sent nothing; top_k and
    min_p keep llama.cpp's defaults, which small models need to stay coherent.
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    grammar: str | None = None  # GBNF text; see engine.grammar_from_json_schema
    logprobs: int | None = None  # None: off; k: also return the k most likely alternatives
    n: int = 1
# --8<-- [end:sampling_params]


# --8<-- [start:stop_matcher]
class StopMatcher:
    """Finds stop sequences in streamed text without ever emitting part of one.

    Text that could be the beginning of a stop sequence is held back until the next piece
    decides: a stop sequence split across two tokens is still caught, and the client never
    sees its first half.
    """

    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop sequence that ended the text

    def feed(self, text: str) -> str:
        """Returns the text that is safe to emit now; sets ``stopped`` when a stop matched."""
        if self.stopped:
            return ""
        buf = self._held + text
        found = [(i, s) for s in self.stops if (i := buf.find(s)) >= 0]
        if found:
            cut, self.matched = min(found, key=lambda f: f[0])
            self.stopped, self._held = True, ""
            return buf[:cut]
        keep = max((k for s in self.stops for k in range(min(len(s) - 1, len(buf)), 0, -1)
                    if buf.endswith(s[:k])), default=0)
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """End of generation: held-back text was not a stop after all."""
        held, self._held = self._held, ""
        return "" if self.stopped else held
# --8<-- [end:stop_matcher]
