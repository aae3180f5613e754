"""A cheaper way to apply a llama.cpp grammar, with the same result.

Given ``grammar=``, llama-cpp-python puts the grammar at the front of its sampler chain, and
llama.cpp then checks **every token of the vocabulary** (49,152 for SmolLM2) against it at
every step: 4–7 ms per token on two cores, as long as the model's own forward pass
(benchmarks/grammar_overhead.py). Yet the sampler only ever picks among the most likely
tokens. ``GrammarFilter`` is a logits processor that checks the K most likely tokens first,
and masks everything else, **only when that provably leads to the same choice**:

- temperature 0 (greedy): the most likely legal token overall is among the K, if any of the
  K is legal;
- ``top_k`` > 0 and at least ``top_k`` of the K are legal: top-k keeps exactly those;
- ``top_p`` 1 and ``min_p`` > 0: min-p would drop every token outside the K anyway, because
  none of them is within ``log(min_p)`` of the best legal logit.

Otherwise (a step where the legal tokens are rare among the likely ones) it checks the whole
vocabulary, as llama.cpp would. Penalties are applied after the processors in the chain and
can reorder tokens, so with penalties the engine leaves the grammar to llama-cpp-python.

The processor sees the logits in token-id order (it runs first in the chain). The grammar's
state advances with ``accept``, which the engine calls with every sampled token.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import numpy as np

from ...sampling import SamplingParams

K = 128  # tokens checked first; the top_k rule needs top_k <= K


def penalties_off(p: SamplingParams) -> bool:
    return p.repeat_penalty == 1.0 and p.presence_penalty == 0.0 and p.frequency_penalty == 0.0


# --8<-- [start:same_choice]
def same_choice(p: SamplingParams, logits: np.ndarray, legal: np.ndarray) -> bool:
    """Whether sampling among the ``legal`` of the K likeliest ``logits`` picks as the full check would."""
    if p.temperature == 0:
        return True
    if 0 < p.top_k <= K and int(legal.sum()) >= p.top_k:
        return True
    if p.top_p >= 1.0 and p.min_p > 0:
        # Every token outside the K has a logit <= the smallest of the K.
        return float(logits.min()) < float(logits[legal].max()) + math.log(p.min_p)
    return False
# --8<-- [end:same_choice]


class GrammarFilter:
    """One generation's grammar, as a logits processor (``__call__``) plus ``accept``."""

    def __init__(self, vocab: Any, n_vocab: int, grammar: str, params: SamplingParams) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        self._sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
        if not self._sampler:
            raise ValueError("llama.cpp could not parse the grammar")
        self._params = params
        self._small = (llama_cpp.llama_token_data * K)()
        self._full = (llama_cpp.llama_token_data * n_vocab)()
        self.steps = {"top": 0, "full": 0}  # how each step was decided (read by the benchmark)

    def __call__(self, _input_ids: Any, scores: np.ndarray) -> np.ndarray:
        top = np.argpartition(scores, -K)[-K:]
        logits = scores[top]
        legal = self._legal(self._small, top, logits)
        if legal.any() and same_choice(self._params, logits, legal):
            self.steps["top"] += 1
            out = np.full_like(scores, -np.inf)
            out[top[legal]] = logits[legal]
            return out
        self.steps["full"] += 1
        scores[~self._legal(self._full, np.arange(len(scores), dtype=np.intc), scores)] = -np.inf
        return scores

    def _legal(self, buffer: ctypes.Array, ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Which of ``ids`` the grammar allows next (llama.cpp sets the others to -inf)."""
        n = len(ids)
        view = np.ctypeslib.as_array(buffer)[:n]
        view["id"], view["logit"], view["p"] = ids, logits, 0.0
        array = self._llama_cpp.llama_token_data_array(
            data=ctypes.cast(buffer, self._llama_cpp.llama_token_data_p), size=n, selected=-1, sorted=False)
        self._llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(array))
        return np.isfinite(view["logit"])

    def accept(self, token: int) -> None:
        """Advances the grammar past ``token``, which must have been sampled under it."""
        self._llama_cpp.llama_sampler_accept(self._sampler, token)

    def close(self) -> None:
        if self._sampler:
            self._llama_cpp.llama_sampler_free(self._sampler)
            self._sampler = None

    def __del__(self) -> None:
        self.close()
