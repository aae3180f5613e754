"""What turning llama.cpp's extra weight buffers off costs (the AMX workaround, reference_server/backends/local/native.py).

Loads the model twice in this process, once with extra buffers (AMX/REPACK where the build has
them) and once without, and times prompt evaluation and decoding on both, alternating the two
in every round so that a busy machine slows both alike. Reports medians and the ratio.

    .venv/bin/python benchmarks/extra_buffers.py [--rounds 5] [--prompt-tokens 480] [--tokens 128]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import llama_cpp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from reference_server.backends.local import native  # noqa: E402
from reference_server.settings import embedded_model_path  # noqa: E402


def load(extra: bool, threads: int) -> tuple[llama_cpp.Llama, dict[str, float]]:
    with native.model_params(extra) as buffers:
        llm = llama_cpp.Llama(str(embedded_model_path()), n_ctx=1024, n_batch=512, n_threads=threads,
                              n_threads_batch=threads, verbose=False)
    return llm, dict(buffers)


def measure(llm: llama_cpp.Llama, prompt: list[int], tokens: int) -> tuple[float, float]:
    """(prompt tokens/s, decode tokens/s), greedy, end-of-generation never reached (fixed count)."""
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    prompt_s = time.perf_counter() - start
    start = time.perf_counter()
    n_vocab = llm.n_vocab()
    for _ in range(tokens):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
        llm.eval([int(logits.argmax())])
    decode_s = time.perf_counter() - start
    return len(prompt) / prompt_s, tokens / decode_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=480)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    models = {extra: load(extra, args.threads) for extra in (True, False)}
    text = "The history of the city begins with a small market by the river. " * 60
    prompt = models[True][0].tokenize(text.encode())[: args.prompt_tokens]
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(args.rounds):
        for extra in (True, False):
            results[extra].append(measure(models[extra][0], prompt, args.tokens))
    print(f"llama.cpp: {native.system_info()}")
    print(f"CPU flags (AMX/AVX-512): {' '.join(native.cpu_flags()) or 'none'}")
    print(f"{args.rounds} rounds, {len(prompt)}-token prompt, {args.tokens} decoded tokens, "
          f"{args.threads} threads, medians:\n")
    print("| extra buffers | weights in | prompt tok/s | decode tok/s |")
    print("| --- | --- | --- | --- |")
    med = {}
    for extra in (True, False):
        p = statistics.median(r[0] for r in results[extra])
        d = statistics.median(r[1] for r in results[extra])
        med[extra] = (p, d)
        where = ", ".join(f"{k} {v:.0f} MiB" for k, v in models[extra][1].items())
        print(f"| {'on' if extra else 'off'} | {where} | {p:.0f} | {d:.1f} |")
    print(f"\noff / on: prompt {med[False][0] / med[True][0]:.3f}, decode {med[False][1] / med[True][1]:.3f}")


if __name__ == "__main__":
    main()
