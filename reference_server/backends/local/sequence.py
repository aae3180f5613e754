"""One choice being generated: sampled tokens in, events out.

Both runners (serial and batching) sample tokens their own way and hand each one to a
``Sequence``, which does the rest the same way for both: end-of-generation tokens, the token
budget, UTF-8 decoding across token boundaries, stop strings, and log-probabilities.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable

import numpy as np

from ...sampling import SamplingParams, StopMatcher
from ..base import ChoiceDone, Event, TextDelta, TokenLogprob


# --8<-- [start:sequence]
class Sequence:
    """Choice ``index`` of a generation; ``done`` once it has stopped for any reason."""

    def __init__(self, index: int, params: SamplingParams, budget: int, eog: frozenset[int],
                 piece: Callable[[int], bytes]) -> None:
        self.index, self.params, self.budget = index, params, budget
        self._eog, self._piece = eog, piece
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = StopMatcher(params.stop)
        self._logprobs: list[TokenLogprob] = []
        self.count, self.finish_reason, self.done = 0, "length", budget <= 0

    def push(self, token: int, logits: np.ndarray | None = None) -> list[Event]:
        """Takes the next sampled token (and, for logprobs, the logits it was sampled from)."""
        if token in self._eog:
            self.finish_reason, self.done = "stop", True
            return []
        self.count += 1
        piece = self._piece(token)
        if self.params.logprobs is not None and logits is not None:
            self._logprobs.append(logprob(logits, token, piece, self.params.logprobs, self._piece))
        text = self._stops.feed(self._decoder.decode(piece))
        out: list[Event] = []
        if text or (self._logprobs and self._stops.stopped):
            out.append(TextDelta(self.index, text, self._logprobs))
            self._logprobs = []
        if self._stops.stopped:
            self.finish_reason, self.done = "stop", True
        elif self.count >= self.budget:
            self.done = True
        return out

    def finish(self) -> list[Event]:
        """The text still held back (a partial character, a possible stop string) and the end."""
        tail = self._stops.feed(self._decoder.decode(b"", final=True)) + self._stops.flush()
        out: list[Event] = [TextDelta(self.index, tail, self._logprobs)] if tail or self._logprobs else []
        self._logprobs = []
        return [*out, ChoiceDone(self.index, self.finish_reason, self.count, self._stops.matched)]
# --8<-- [end:sequence]


# --8<-- [start:logprob]
def logprob(logits: np.ndarray, token: int, piece: bytes, top: int,
            detokenize: Callable[[int], bytes]) -> TokenLogprob:
    """Log-probabilities from the logits the token was sampled from (before sampling filters)."""
    shifted = logits - logits.max()
    logp = shifted - np.log(np.exp(shifted).sum())

    def entry(tok: int, raw: bytes) -> TokenLogprob:
        return TokenLogprob(raw.decode("utf-8", errors="replace"), float(logp[tok]), list(raw))

    best = np.argpartition(-logp, top)[:top] if top else []
    alternatives = [entry(int(t), detokenize(int(t))) for t in sorted(best, key=lambda t: -logp[t])]
    return TokenLogprob(**{**entry(token, piece).__dict__, "top_logprobs": alternatives})
# --8<-- [end:logprob]
