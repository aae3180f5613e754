"""From raw samples to the Markdown report and the throughput plot.

Every figure is a median with its spread (min–max over the repeats), because a 2-core
machine shared with other work is noisy and a single number would hide it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Figure:
    samples: list[float] = field(default_factory=list)

    def add(self, value: float | None) -> None:
        if value is not None:
            self.samples.append(value)

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    def show(self, fmt: str = "{:.1f}", scale: float = 1.0) -> str:
        if not self.samples:
            return "–"
        lo, mid, hi = (v * scale for v in (min(self.samples), self.median, max(self.samples)))
        if len(self.samples) == 1:
            return fmt.format(mid)
        return f"{fmt.format(mid)} ({fmt.format(lo)}–{fmt.format(hi)})"


@dataclass
class Single:
    """One contender's single-client figures."""

    ttft: Figure = field(default_factory=Figure)          # s, streamed
    decode: Figure = field(default_factory=Figure)        # tokens/s between first and last token, streamed
    end_to_end: Figure = field(default_factory=Figure)    # N tokens / whole request, not streamed
    one_token: Figure = field(default_factory=Figure)     # s, max_tokens=1, median of each repeat
    embeddings: Figure = field(default_factory=Figure)    # inputs/s, batch of 32
    token_counts: list[int] = field(default_factory=list)  # completion tokens of every forced request
    prompt_tokens: dict[str, int] = field(default_factory=dict)  # by request tag
    pooled: bool | None = None
    errors: list[str] = field(default_factory=list)

    def merge(self, other: "Single") -> None:
        for name in ("ttft", "decode", "end_to_end", "one_token", "embeddings"):
            getattr(self, name).samples += getattr(other, name).samples
        self.token_counts += other.token_counts
        self.prompt_tokens.update(other.prompt_tokens)
        self.pooled = other.pooled if other.pooled is not None else self.pooled
        self.errors += other.errors


@dataclass
class Level:
    """One contender at one concurrency level, over all repeats."""

    throughput: Figure = field(default_factory=Figure)    # completion tokens/s, all clients together
    latency: list[float] = field(default_factory=list)    # s, whole request
    ttft: list[float] = field(default_factory=list)
    ok: int = 0
    cut: int = 0      # the stream ended early without an error: the server interrupted it
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def merge(self, other: "Level") -> None:
        self.throughput.samples += other.throughput.samples
        self.latency += other.latency
        self.ttft += other.ttft
        self.ok, self.cut, self.failed = self.ok + other.ok, self.cut + other.cut, self.failed + other.failed
        self.errors += other.errors


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _fmt(value: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if value is None else fmt.format(value)


def _ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or not b else f"{a / b:.2f}×"


@dataclass
class Limits:
    """The C-API limit and the batching runner, both in ``benchmarks/lowlevel.py``'s process (no HTTP)."""

    limit1_decode: Figure = field(default_factory=Figure)     # tok/s, one sequence, after its first token
    limit1_first: Figure = field(default_factory=Figure)      # s, prompt + first token
    limit8_aggregate: Figure = field(default_factory=Figure)  # tok/s, 8 sequences, prompts included
    limit8_decode: Figure = field(default_factory=Figure)     # tok/s, 8 sequences, after their prompts
    runner1_decode: Figure = field(default_factory=Figure)
    runner1_ttft: Figure = field(default_factory=Figure)
    runner8_aggregate: Figure = field(default_factory=Figure)
    memory: str = ""
    errors: list[str] = field(default_factory=list)

    def merge(self, other: "Limits") -> None:
        for name in ("limit1_decode", "limit1_first", "limit8_aggregate", "limit8_decode", "runner1_decode",
                     "runner1_ttft", "runner8_aggregate"):
            getattr(self, name).samples += getattr(other, name).samples
        self.errors += other.errors


@dataclass
class Chat:
    """Time to first token of a short prompt, and of a chat's fifth turn with and without a cached history."""

    ttft10: Figure = field(default_factory=Figure)   # s, a ~10-token legacy completion prompt
    cold: Figure = field(default_factory=Figure)     # s, turn 5 of a history no one has seen
    cached: Figure = field(default_factory=Figure)   # s, turn 5 right after turn 4
    prompt_tokens: int | None = None                 # turn 5's
    short_tokens: int | None = None                  # the short prompt's
    errors: list[str] = field(default_factory=list)


# ---- the report ----------------------------------------------------------------------------

@dataclass
class Run:
    """Everything ``bench.py`` measured, plus what it needs to say how."""

    labels: dict[str, str]
    single: dict[str, Single]
    levels: dict[str, dict[int, Level]]
    tokens: int
    concurrent_tokens: int
    repeats: int
    concurrency_repeats: int
    requests_per_client: int
    one_token_requests: int
    batch: int
    started: str
    seconds: float
    command: str
    notes: list[str] = field(default_factory=list)
    machine: list[str] = field(default_factory=list)
    quiet: list[str] = field(default_factory=list)  # how busy the neighbours kept the machine
    limits: Limits | None = None
    chat: dict[str, Chat] = field(default_factory=dict)
    chat_repeats: int = 0
    disturbed: str = ""  # said at the top when the neighbours made the figures unreliable


def _forced(s: Single, n: int) -> str:
    if not s.token_counts:
        return "–"
    bad = [c for c in s.token_counts if c != n]
    return f"yes ({len(s.token_counts)}/{len(s.token_counts)})" if not bad else \
        f"**no**: {len(bad)}/{len(s.token_counts)} ≠ {n} (e.g. {bad[0]})"


def markdown(run: Run) -> str:
    L = run.labels
    out: list[str] = []
    out.append(f"### Benchmark run of {run.started}\n")
    out.append(f"`{run.command}` — {run.seconds / 60:.1f} min. Figures are **median (min–max)** over "
               f"{run.repeats} repeats (concurrency: {run.concurrency_repeats}), the contenders taking "
               "turns within every repeat. Every generation is forced to its full length by banning the "
               "end-of-generation tokens with `logit_bias`.\n")
    if run.disturbed:
        out.append(f"!!! warning \"A busy machine\"\n    {run.disturbed}\n")

    out.append("#### One client\n")
    out.append(f"| contender | TTFT ms (streamed) | decode tok/s (streamed, {run.tokens} tokens) "
               f"| tok/s end to end (not streamed) | 1-token request ms | embeddings/s (batch of {run.batch}) "
               f"| forced to {run.tokens} tokens |")
    out.append("|---|---:|---:|---:|---:|---:|---|")
    for key, s in run.single.items():
        emb = s.embeddings.show("{:.0f}")
        if s.pooled is False and s.embeddings.samples:
            emb += " ⚠ per-token vectors"
        out.append(f"| {L[key]} | {s.ttft.show('{:.1f}', 1000)} | {s.decode.show()} | {s.end_to_end.show()} "
                   f"| {s.one_token.show('{:.1f}', 1000)} | {emb} | {_forced(s, run.tokens)} |")
    out.append("")

    ref, inproc = run.single.get("reference"), run.single.get("inproc")
    peers = [k for k in run.single if k.startswith("peer") and run.single[k].decode.samples]
    if ref and (inproc or peers):
        out.append("#### Ratios (medians)\n")
        others = ([("inproc", "in-process")] if inproc else []) + [(k, L[k]) for k in peers]
        out.append("| figure | " + " | ".join(f"reference / {name}" for _, name in others) + " |")
        out.append("|---|" + "---:|" * len(others))
        rows = [
            ("decode tok/s (streamed)", lambda s: s.decode.median, "ratio"),
            ("tok/s end to end (not streamed)", lambda s: s.end_to_end.median, "ratio"),
            ("TTFT", lambda s: s.ttft.median, "delta"),
            ("1-token request", lambda s: s.one_token.median, "delta"),
            ("embeddings/s", lambda s: s.embeddings.median, "ratio"),
        ]
        for name, get, kind in rows:
            cells = []
            for key, _ in others:
                a, b = get(ref), get(run.single[key])
                if kind == "ratio":
                    cells.append(_ratio(a, b))
                else:
                    cells.append("–" if a is None or b is None else f"{_ratio(a, b)} ({(a - b) * 1000:+.1f} ms)")
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        top = max((n for lv in run.levels.values() for n in lv), default=None)
        if top is not None and top in run.levels.get("reference", {}):
            mine = run.levels["reference"][top].throughput.median
            cells = [_ratio(mine, run.levels[key][top].throughput.median)
                     if top in run.levels.get(key, {}) else "–" for key, _ in others]
            out.append(f"| aggregate tok/s, {top} clients | " + " | ".join(cells) + " |")
        out.append("")

    if run.levels:
        out.append(f"#### Concurrent clients (streamed, {run.concurrent_tokens} tokens per request, "
                   f"{run.requests_per_client} request{'s' if run.requests_per_client > 1 else ''} "
                   "per client, all clients start together)\n")
        out.append("| contender | clients | aggregate tok/s | latency p50 s | latency p95 s | TTFT p95 s "
                   "| ok / cut short / failed |")
        out.append("|---|---:|---:|---:|---:|---:|---|")
        for key, levels in run.levels.items():
            for n, lv in sorted(levels.items()):
                status = f"{lv.ok} / {lv.cut} / {lv.failed}"
                if lv.cut or lv.failed:
                    status = f"**{status}**"
                out.append(f"| {L[key]} | {n} | {lv.throughput.show()} | {_fmt(percentile(lv.latency, 0.5))} "
                           f"| {_fmt(percentile(lv.latency, 0.95))} | {_fmt(percentile(lv.ttft, 0.95))} | {status} |")
        out.append("")

    if run.limits and (run.limits.limit1_decode.samples or run.limits.errors):
        lim = run.limits
        out.append("#### The limit of this build, and the batching runner without HTTP\n")
        out.append("The C API column is `llama_decode` and llama.cpp's own greedy sampler and nothing else "
                   "(benchmarks/lowlevel.py), with the runner's context settings (a KV stream per sequence, flash "
                   "attention); the runner column is reference_server/backends/local/batching.py driven "
                   "in the same process, events and all.\n")
        out.append("| figure | C API | batching runner | runner / C API |")
        out.append("|---|---:|---:|---:|")
        rows = [(f"one sequence: decode tok/s ({run.tokens} tokens)", lim.limit1_decode, lim.runner1_decode, "{:.1f}", 1),
                ("one sequence: prompt + first token ms", lim.limit1_first, lim.runner1_ttft, "{:.1f}", 1000),
                (f"8 sequences: aggregate tok/s ({run.concurrent_tokens} tokens each, prompts included)",
                 lim.limit8_aggregate, lim.runner8_aggregate, "{:.1f}", 1),
                ("8 sequences: decode tok/s after the prompts", lim.limit8_decode, Figure(), "{:.1f}", 1)]
        for name, a, b, fmt, scale in rows:
            out.append(f"| {name} | {a.show(fmt, scale)} | {b.show(fmt, scale)} | {_ratio(b.median, a.median)} |")
        out.append("")
        if lim.memory:
            out.append(f"The runner's start-up report: {lim.memory}.\n")

    if run.chat:
        tokens = next((c.prompt_tokens for c in run.chat.values() if c.prompt_tokens), None)
        short = next((c.short_tokens for c in run.chat.values() if c.short_tokens), None)
        out.append(f"#### A chat's fifth turn ({tokens or '~1,000'} prompt tokens), {run.chat_repeats} repeats\n")
        out.append(f"Streamed; TTFT in ms. *Short prompt*: a legacy completion of {short or 'about 10'} tokens. "
                   "*Without cache*: turn 5 of a history the server has not seen. *With cache*: turn 5 right "
                   "after turn 4 was answered (the client sends back the answer it got).\n")
        out.append("| contender | short prompt | turn 5 without cache | turn 5 with cache | with cache / short prompt |")
        out.append("|---|---:|---:|---:|---:|")
        for key, c in run.chat.items():
            out.append(f"| {L[key]} | {c.ttft10.show('{:.0f}', 1000)} | {c.cold.show('{:.0f}', 1000)} "
                       f"| {c.cached.show('{:.0f}', 1000)} | {_ratio(c.cached.median, c.ttft10.median)} |")
        out.append("")

    targets = _targets(run)
    if targets:
        out.append("#### Targets (reported, not asserted)\n")
        out.append("| target | measured | met |")
        out.append("|---|---|:-:|")
        for name, measured, met in targets:
            out.append(f"| {name} | {measured} | {'yes' if met else '**no**'} |")
        out.append("")

    if run.notes:
        out.append("#### Notes\n")
        out.extend(f"- {n}" for n in run.notes)
        out.append("")
    out.append("#### Machine\n")
    out.extend(run.machine)
    out.extend(run.quiet)
    out.append("")
    return "\n".join(out)


def _targets(run: Run) -> list[tuple[str, str, bool]]:
    ref, inproc = run.single.get("reference"), run.single.get("inproc")
    out: list[tuple[str, str, bool]] = []

    def share(target: str, part: float | None, whole: float | None, floor: float) -> None:
        """A ratio target, reported only when both figures were measured."""
        if part and whole:
            out.append((target, f"{part / whole:.1%}", part / whole >= floor))

    def median(stat: Any) -> float | None:
        return stat.median if stat is not None else None

    lim, top_ref = run.limits, run.levels.get("reference", {}).get(8)
    share("single-stream decode over HTTP ≥ 97% of in-process", median(ref and ref.decode),
          median(inproc and inproc.decode), 0.97)
    if ref and inproc and ref.ttft.median is not None and inproc.ttft.median is not None:
        d = (ref.ttft.median - inproc.ttft.median) * 1000
        out.append(("TTFT overhead over in-process ≤ 10 ms", f"{d:+.1f} ms", d <= 10))
    share("single stream over HTTP ≥ 95% of the C-API limit (decode tok/s)", median(ref and ref.decode),
          median(lim and lim.limit1_decode), 0.95)
    share("single stream, runner in-process ≥ 95% of the C-API limit", median(lim and lim.runner1_decode),
          median(lim and lim.limit1_decode), 0.95)
    share("8 clients over HTTP: aggregate ≥ 90% of the 8-sequence limit", median(top_ref and top_ref.throughput),
          median(lim and lim.limit8_aggregate), 0.90)
    share("8 clients, runner in-process: aggregate ≥ 90% of the 8-sequence limit",
          median(lim and lim.runner8_aggregate), median(lim and lim.limit8_aggregate), 0.90)
    top_ls = run.levels.get("llama-server", {}).get(8)
    if top_ref and top_ls and top_ref.throughput.median and top_ls.throughput.median:
        a, b = top_ref.throughput.median, top_ls.throughput.median
        out.append(("8 clients: aggregate tok/s ≥ llama-server's", f"{a:.1f} vs {b:.1f} ({a / b:.2f}×)", a >= b))
    chat = run.chat.get("reference")
    if chat and chat.cached.median and chat.ttft10.median:
        r = chat.cached.median / chat.ttft10.median
        out.append(("turn-5 TTFT with the cache ≤ 2× the TTFT of a short prompt",
                    f"{chat.cached.median * 1000:.0f} vs {chat.ttft10.median * 1000:.0f} ms ({r:.2f}×)", r <= 2))
    levels = run.levels.get("reference", {})
    if levels:
        top = max(levels)
        lv = levels[top]
        out.append((f"{top} concurrent clients: no request fails", f"{lv.failed} failed", lv.failed == 0))
        out.append((f"{top} concurrent clients: none cut short or cancelled", f"{lv.cut} cut", lv.cut == 0))
        p95 = percentile(lv.latency, 0.95)
        out.append((f"{top} concurrent clients: p95 latency reported", f"{_fmt(p95)} s", p95 is not None))
        for key, peer in run.levels.items():
            if key.startswith("peer") and top in peer and peer[top].throughput.median:
                a, b = lv.throughput.median or 0.0, peer[top].throughput.median
                out.append((f"{top} clients: aggregate tok/s ≥ {run.labels[key]}",
                            f"{a:.1f} vs {b:.1f} ({a / b:.2f}×)", a >= b))
    return out


def plot(run: Run, path: Path) -> bool:
    """Aggregate throughput against concurrency, one line per contender; False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for key, levels in run.levels.items():
        xs = sorted(levels)
        mids = [levels[x].throughput.median or 0.0 for x in xs]
        lows = [m - min(levels[x].throughput.samples, default=m) for x, m in zip(xs, mids)]
        highs = [max(levels[x].throughput.samples, default=m) - m for x, m in zip(xs, mids)]
        ax.errorbar(xs, mids, yerr=[lows, highs], marker="o", capsize=3, label=run.labels[key])
    if run.limits and run.limits.limit8_aggregate.median:
        ax.axhline(run.limits.limit8_aggregate.median, linestyle="--", color="grey", linewidth=1,
                   label="C API limit, 8 sequences in one batch")
    ax.set_xscale("log", base=2)
    levels_all = sorted({x for lv in run.levels.values() for x in lv})
    ax.set_xticks(levels_all, [str(x) for x in levels_all])
    ax.set_xlabel("concurrent streaming clients")
    ax.set_ylabel("aggregate completion tokens/s")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Throughput under concurrency ({run.concurrent_tokens} tokens per request)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True
