"""The course's pictures: every figure on the site is drawn by one function in this file.

    python course/figures/draw.py            # redraw every figure into course/figures/*.svg
    python course/figures/draw.py --check    # exit 1 and name the figures that differ

Diagrams are boxes, arrows and words declared near the top of each function (rename a module
or a step in one line); plots read the repository's own data (the measurements the chapters
quote, the benchmark run the benchmarks page includes), so a new measurement means a new
picture. The output is SVG with the text drawn as outlines (no fonts to fetch: the site works
offline) and without dates or random ids, so the same source gives the same bytes.
``tests/test_docs.py`` redraws every figure and fails if a committed file differs.

Only matplotlib is needed, which ``make setup`` installs (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

# The site's palette (mkdocs.yml: primary indigo, accent deep orange), light tints for fills.
INK = "#212121"
MUTED = "#616161"
INDIGO, INDIGO_FILL = "#3949ab", "#e8eaf6"
ORANGE, ORANGE_FILL = "#e64a19", "#fbe9e7"
GREEN, GREEN_FILL = "#2e7d32", "#e8f5e9"
GREY, GREY_FILL = "#757575", "#f5f5f5"
MONO = "DejaVu Sans Mono"

RC = {
    "svg.fonttype": "path",          # glyphs as outlines: identical everywhere, nothing to download
    "svg.hashsalt": "course-figures",  # stable ids inside the SVG
    "font.family": "DejaVu Sans",    # ships with matplotlib, so every machine draws the same glyphs
    "font.size": 10,
    "axes.edgecolor": MUTED,
    "axes.labelcolor": INK,
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "text.color": INK,
}


# ---- drawing helpers ---------------------------------------------------------------------------

def canvas(width: float, height: float) -> tuple[Figure, object]:
    """A figure whose data coordinates are inches, origin bottom left, no axes drawn."""
    fig = Figure(figsize=(width, height), facecolor="white")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_axis_off()
    return fig, ax


def box(ax, x: float, y: float, w: float, h: float, *, edge: str = INDIGO, fill: str = INDIGO_FILL,
        dashed: bool = False, radius: float = 0.06) -> None:
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle=f"round,pad=0,rounding_size={radius}",
                                linewidth=1.2, edgecolor=edge, facecolor=fill,
                                linestyle=(0, (4, 3)) if dashed else "solid"))


def arrow(ax, start: tuple[float, float], end: tuple[float, float], *, color: str = INK,
          width: float = 1.2, dashed: bool = False, both: bool = False) -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="<|-|>" if both else "-|>", mutation_scale=11,
                                 linewidth=width, color=color, shrinkA=0, shrinkB=0,
                                 linestyle=(0, (4, 3)) if dashed else "solid"))


def text(ax, x: float, y: float, s: str, *, size: float = 10, color: str = INK, mono: bool = False,
         bold: bool = False, ha: str = "center", va: str = "center", **kw) -> None:
    ax.text(x, y, s, fontsize=size, color=color, ha=ha, va=va, fontweight="bold" if bold else "normal",
            fontfamily=MONO if mono else None, **kw)


# ---- 1. a request's path through the server's modules -------------------------------------------

def request_path() -> Figure:
    """Chapter 1: which module does what. The request goes down the left column; the events come
    back up, through the serving layer on the right, which renders them for the router."""
    # (module, what it does, colours): the left column, top to bottom. Rename here when the code moves.
    column = [
        ("client", "the openai SDK, curl, a browser", GREY, GREY_FILL),
        ("reference_server/api/", "routers: parse and check the request, auth,\n"
         "the model's name; every error in OpenAI's envelope", INDIGO, INDIGO_FILL),
        ("reference_server/backends/base.py", "the seam: Backend.chat(request) returns a Run,\n"
         "a stream of events (TextDelta, ToolCallDelta, ChoiceDone)", GREEN, GREEN_FILL),
        ("reference_server/backends/local/", "the chat template, token ids; a runner (serial.py):\n"
         "a bounded queue, one worker thread, the token loop", INDIGO, INDIGO_FILL),
        ("llama.cpp", "through llama-cpp-python: tokens in, logits out", ORANGE, ORANGE_FILL),
    ]
    down = ["request (JSON)", "request model", "the request", "token ids"]
    up = ["SSE bytes or JSON", None, "events", "one token\nat a time"]
    serving = ("reference_server/serving/", "turns the events into\nchat.completion chunks\nor one response, and\n"
               "frames the chunks as\nServer-Sent Events")
    width, row, gap, left, box_w = 6.6, 0.74, 0.46, 0.15, 4.0
    height = len(column) * row + (len(column) - 1) * gap + 0.3
    fig, ax = canvas(width, height)
    tops = []
    for i, (name, what, edge, fill) in enumerate(column):
        y = height - 0.15 - (i + 1) * row - i * gap
        tops.append(y)
        box(ax, left, y, box_w, row, edge=edge, fill=fill)
        text(ax, left + 0.15, y + row - 0.17, name, size=9.5, mono=True, bold=True, ha="left", color=edge)
        text(ax, left + 0.15, y + row / 2 - 0.1, what, size=8.5, ha="left", color=INK, linespacing=1.25)
    x_in, x_out = left + box_w / 2 - 0.2, left + box_w / 2 + 0.2
    for i in range(len(column) - 1):
        upper, lower = tops[i], tops[i + 1] + row
        arrow(ax, (x_in, upper), (x_in, lower), color=INDIGO)
        text(ax, x_in - 0.12, (upper + lower) / 2, down[i], size=8, color=INDIGO, ha="right")
        if up[i]:
            arrow(ax, (x_out, lower), (x_out, upper), color=ORANGE)
            text(ax, x_out + 0.12, (upper + lower) / 2, up[i], size=8, color=ORANGE, ha="left",
                 linespacing=1.1)
    # the serving layer: beside the api and the seam; events go up through it
    sx, sw = left + box_w + 0.45, width - left - box_w - 0.45 - 0.1
    s_top, s_bottom = tops[1] + row, tops[2]
    box(ax, sx, s_bottom, sw, s_top - s_bottom, edge=INDIGO, fill=INDIGO_FILL)
    text(ax, sx + 0.12, s_top - 0.17, serving[0].replace("reference_server/", "reference_server/\n"), size=9,
         mono=True, bold=True, ha="left", va="top", color=INDIGO, linespacing=1.15)
    text(ax, sx + 0.12, s_top - 0.62, serving[1], size=8.5, ha="left", va="top", linespacing=1.25)
    y_seam, y_api = tops[2] + row / 2, tops[1] + row / 2
    arrow(ax, (left + box_w, y_seam), (sx, y_seam), color=ORANGE)
    text(ax, left + box_w + 0.22, y_seam + 0.12, "events", size=8, color=ORANGE)
    arrow(ax, (sx, y_api), (left + box_w, y_api), color=ORANGE)
    text(ax, left + box_w + 0.22, y_api + 0.12, "chunks", size=8, color=ORANGE)
    return fig


# ---- 2. a stream against a plain answer, on a time line -----------------------------------------

MEASUREMENTS = ROOT / "course" / "examples" / "measurements.json"
TIMELINE_TOKENS = 48


def stream_timeline() -> Figure:
    """Chapter 4: when the client sees what, streamed and not, with the course machine's speed."""
    runs = json.loads(MEASUREMENTS.read_text(encoding="utf-8"))["generation"]
    ttft = statistics.median(r["ttft_s"] for r in runs)
    rate = statistics.median(r["decode_tokens_per_s"] for r in runs)
    n = TIMELINE_TOKENS
    end = ttft + (n - 1) / rate

    width, height = 7.0, 3.0
    fig = Figure(figsize=(width, height), facecolor="white")
    ax = fig.add_axes((0.18, 0.2, 0.8, 0.72))
    span = end * 1.3
    ax.set_xlim(-0.02 * span, span)
    ax.set_ylim(0, 2.4)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_xlabel("seconds after the request was sent", fontsize=9)
    ax.tick_params(labelsize=8.5)

    lanes = {"streamed": 1.6, "not streamed": 0.55}
    for name, y in lanes.items():
        ax.text(-0.03 * span, y, name, ha="right", va="center", fontsize=9.5, fontweight="bold",
                clip_on=False)
        ax.add_patch(Rectangle((0, y - 0.16), ttft, 0.32, facecolor=GREY_FILL, edgecolor=GREY, linewidth=0.8))
    for y in lanes.values():
        ax.text(ttft / 2, y, "prompt evaluation", ha="center", va="center", fontsize=7.5, color=MUTED)

    y = lanes["streamed"]
    for i in range(n):
        t = ttft + i / rate
        ax.plot([t, t], [y - 0.16, y + 0.16], color=INDIGO, linewidth=1.0, solid_capstyle="butt")
    ax.annotate(f"first token, {ttft:.2f} s", xy=(ttft, y + 0.17), xytext=(ttft + 0.04 * span, y + 0.58),
                fontsize=8.5, color=INDIGO, arrowprops=dict(arrowstyle="-", color=INDIGO, linewidth=0.8))
    ax.text((ttft + end) / 2, y - 0.3, f"one data: event per token, {rate:.0f} tokens/s", ha="center",
            va="top", fontsize=8.5, color=INDIGO)
    ax.text(end + 0.012 * span, y, "[DONE]", ha="left", va="center", fontsize=8.5, color=INDIGO,
            fontfamily=MONO)

    y = lanes["not streamed"]
    ax.add_patch(Rectangle((ttft, y - 0.16), end - ttft, 0.32, facecolor=GREY_FILL, edgecolor=GREY,
                           linewidth=0.8, hatch="////"))
    ax.text((ttft + end) / 2, y + 0.3, "generating: the client sees nothing", ha="center", va="bottom",
            fontsize=8.5, color=MUTED)
    ax.add_patch(Rectangle((end, y - 0.16), 0.018 * span, 0.32, facecolor=ORANGE, edgecolor=ORANGE))
    ax.text(end + 0.03 * span, y, f"the whole\nanswer, {end:.2f} s", ha="left", va="center", fontsize=8.5,
            color=ORANGE, linespacing=1.1)
    fig.text(0.99, 0.015, f"{n} tokens; speeds measured on the course machine (course/examples/measurements.json)",
             ha="right", va="bottom", fontsize=7, color=MUTED)
    return fig


# ---- 3. one worker and a bounded queue ------------------------------------------------------------

def worker_queue() -> Figure:
    """Chapter 1: requests wait in a bounded queue for the one worker; the next one gets a 429."""
    max_queue = 16  # the default of --max-queue (reference_server/settings.py)
    width, height = 7.0, 2.75
    fig, ax = canvas(width, height)

    # clients: three that got in, and the one past the bound
    cy = [2.2, 1.7, 1.2, 0.55]
    for i, y in enumerate(cy):
        box(ax, 0.1, y - 0.17, 0.8, 0.34, edge=GREY, fill=GREY_FILL)
        text(ax, 0.5, y, f"client {i + 1}" if i < 3 else f"client {max_queue + 2}", size=8)
    text(ax, 0.5, 0.9, "⋮", size=10, color=MUTED)

    # the queue, full: max_queue requests waiting
    qx, qy, slot_w, slot_h, slots = 1.55, 1.4, 0.3, 0.5, 5
    q_right = qx + slots * slot_w + 0.45
    box(ax, qx - 0.15, qy - 0.35, q_right - qx + 0.15, slot_h + 0.95, edge=INDIGO, fill="white", dashed=True)
    text(ax, qx - 0.05, qy + slot_h + 0.33, f"queue: {max_queue} waiting\n(--max-queue {max_queue})", size=8,
         color=INDIGO, ha="left", linespacing=1.15)
    for i in range(slots):
        middle = i == slots // 2
        ax.add_patch(Rectangle((qx + i * slot_w, qy), slot_w - 0.05, slot_h, facecolor="white" if middle
                               else INDIGO_FILL, edgecolor=INDIGO, linewidth=0.9))
        if middle:
            text(ax, qx + (i + 0.5) * slot_w - 0.025, qy + slot_h / 2, "…", size=9, color=INDIGO)
    arrow(ax, (qx + slots * slot_w, qy + slot_h / 2), (q_right + 0.3, qy + slot_h / 2), color=INDIGO)
    text(ax, qx + slots * slot_w / 2, qy - 0.18, "first come, first served", size=7.5, color=MUTED)

    # the worker and the model
    wx, ww = q_right + 0.3, 1.3
    box(ax, wx, qy - 0.2, ww, 0.9, edge=INDIGO, fill=INDIGO_FILL)
    text(ax, wx + ww / 2, qy + 0.46, "one worker", size=9, bold=True, color=INDIGO)
    text(ax, wx + ww / 2, qy + 0.1, "one generation\nat a time", size=8, linespacing=1.15)
    lx, lw = wx + ww + 0.4, 1.05
    box(ax, lx, qy - 0.1, lw, 0.7, edge=ORANGE, fill=ORANGE_FILL)
    text(ax, lx + lw / 2, qy + 0.25, "llama.cpp\ncontext", size=8.5, color=ORANGE, linespacing=1.15)
    arrow(ax, (wx + ww, qy + 0.25), (lx, qy + 0.25), both=True, color=ORANGE)
    text(ax, wx + ww / 2, qy - 0.5, "stops within one token\nif its client hangs up", size=7.5, color=MUTED,
         linespacing=1.15)

    for y in cy[:3]:
        arrow(ax, (0.9, y), (qx - 0.15, qy + slot_h / 2 + (y - 1.7) * 0.3), color=INDIGO, width=1.0)
    # the one that does not fit
    arrow(ax, (0.9, cy[3] + 0.06), (qx + 0.35, cy[3] + 0.06), color=ORANGE, width=1.0)
    arrow(ax, (qx + 0.35, cy[3] - 0.06), (0.9, cy[3] - 0.06), color=ORANGE, width=1.0)
    text(ax, qx + 0.5, cy[3], "refused at once: 429 with Retry-After: 1\n(the official client retries twice)",
         size=8, color=ORANGE, ha="left", linespacing=1.15)
    return fig


# ---- 4. batching: slots and a step loop -------------------------------------------------------------

def batching_slots() -> Figure:
    """The next step after one worker: every step decodes one batch that serves every slot."""
    steps, n_batch = 9, 128
    # per slot: (first step, last step, kind, tokens); kinds: prompt (a chunk), decode, free.
    # Slot 2's 300-token prompt is cut into chunks that fill what the decoding slots leave of n_batch.
    slots = [
        [(1, 1, "prompt", 40), (2, 9, "decode", 1)],
        [(1, 3, "decode", 1), (4, 4, "free", 0)],
        [(2, 2, "prompt", 126), (3, 3, "prompt", 126), (4, 4, "prompt", 48), (5, 9, "decode", 1)],
        [(6, 6, "prompt", 25), (7, 9, "decode", 1)],
    ]
    colours = {"prompt": (ORANGE, ORANGE_FILL), "decode": (INDIGO, INDIGO_FILL)}
    width, height = 7.0, 3.35
    fig, ax = canvas(width, height)
    left, top, cell_w, cell_h = 0.75, 2.75, 0.55, 0.38
    for s in range(steps):
        text(ax, left + (s + 0.5) * cell_w, top + 0.22, f"step {s + 1}", size=7.5, color=MUTED)
    per_step = [0] * steps
    for r, spans in enumerate(slots):
        y = top - (r + 1) * (cell_h + 0.1)
        text(ax, left - 0.12, y + cell_h / 2, f"slot {r}", size=8.5, ha="right")
        for s in range(steps):
            ax.add_patch(Rectangle((left + s * cell_w, y), cell_w - 0.05, cell_h, facecolor="white",
                                   edgecolor="#e0e0e0", linewidth=0.6))
        for first, last, kind, tokens in spans:
            for s in range(first - 1, last):
                x = left + s * cell_w
                if kind == "free":
                    text(ax, x + cell_w / 2, y + cell_h / 2, "free", size=7, color=MUTED)
                    continue
                edge, fill = colours[kind]
                ax.add_patch(Rectangle((x, y), cell_w - 0.05, cell_h, facecolor=fill, edgecolor=edge,
                                       linewidth=0.9))
                text(ax, x + cell_w / 2 - 0.02, y + cell_h / 2, str(tokens), size=7.5, color=edge)
                per_step[s] += tokens
    assert max(per_step) <= n_batch, "a step cannot hold more than n_batch tokens"
    y = top - len(slots) * (cell_h + 0.1) - 0.32
    text(ax, left - 0.12, y, "batch", size=8.5, ha="right", bold=True)
    text(ax, left + steps * cell_w + 0.1, y, f"tokens (at most {n_batch})", size=7.5, ha="left", color=MUTED)
    for s, n in enumerate(per_step):
        text(ax, left + (s + 0.5) * cell_w - 0.02, y, str(n), size=8, bold=True)
    legend_x = left + steps * cell_w + 0.12
    ax.add_patch(Rectangle((legend_x, 2.3), 0.25, 0.2, facecolor=ORANGE_FILL, edgecolor=ORANGE))
    text(ax, legend_x + 0.32, 2.4, "prompt chunk\n(tokens)", size=7.5, ha="left", linespacing=1.1)
    ax.add_patch(Rectangle((legend_x, 1.75), 0.25, 0.2, facecolor=INDIGO_FILL, edgecolor=INDIGO))
    text(ax, legend_x + 0.32, 1.85, "next token\nof an answer", size=7.5, ha="left", linespacing=1.1)
    text(ax, width / 2, 0.2, "Each step: one llama_decode over one batch: the next token of every generating slot,\n"
         "plus chunks of new prompts to fill the batch; then one token is sampled for each slot.",
         size=8, color=MUTED, linespacing=1.2)
    return fig


# ---- 5. the tool-call loop ------------------------------------------------------------------------

TOOL_CALL = ROOT / "course" / "examples" / "tools_forced_response.json"


def tool_loop() -> Figure:
    """Chapter 7: the client runs the tool; the server only writes the call and then the answer."""
    call = json.loads(TOOL_CALL.read_text(encoding="utf-8"))["choices"][0]["message"]["tool_calls"][0]["function"]
    args = json.loads(call["arguments"])
    shown_args = ", ".join(f"{k}={v!r}" for k, v in args.items()).replace("'", '"')
    width, height = 7.0, 4.7
    fig, ax = canvas(width, height)
    fn, you, srv = 0.8, 2.75, 6.2
    lanes = [("get_weather()", fn, GREEN, GREEN_FILL), ("your code", you, GREY, GREY_FILL),
             ("server", srv, INDIGO, INDIGO_FILL)]
    top = height - 0.15
    for name, x, edge, fill in lanes:
        box(ax, x - 0.62, top - 0.38, 1.24, 0.38, edge=edge, fill=fill)
        text(ax, x, top - 0.19, name, size=8.5, bold=True, color=edge, mono=name.endswith("()"))
        ax.plot([x, x], [0.32, top - 0.38], color="#bdbdbd", linewidth=1.0, linestyle=(0, (3, 3)))
    text(ax, fn, 0.16, "a function in your program", size=7, color=MUTED)
    text(ax, srv, 0.16, "never runs the tool", size=7, color=MUTED)

    messages = [  # (from, to, colour, label, note under the arrow)
        (you, srv, INDIGO, "1  POST messages, tools", None),
        (srv, you, INDIGO, "2  tool_calls: [get_weather]", 'content: null, finish_reason: "tool_calls"'),
        (you, fn, GREEN, "3  call it", shown_args),
        (fn, you, GREEN, "4  the result", "a dict; you send it as JSON"),
        (you, srv, INDIGO, "5  POST messages + the call", '+ {"role": "tool", "tool_call_id", "content"}'),
        (srv, you, INDIGO, "6  content: the answer", 'finish_reason: "stop"'),
    ]
    y = top - 0.85
    for start, end, colour, label, note in messages:
        arrow(ax, (start, y), (end, y), color=colour)
        mid = (start + end) / 2
        text(ax, mid, y + 0.14, label, size=8.5, color=colour)
        if note:
            text(ax, mid, y - 0.16, note, size=7, color=MUTED, mono=True)
        y -= 0.64
    return fig


# ---- 6. the committed benchmark run ---------------------------------------------------------------

BENCHMARKS_PAGE = ROOT / "course" / "benchmarks.md"
_INCLUDE = re.compile(r'^--8<--\s+"(benchmarks/results/[^"]+\.md)"\s*$', re.M)
_LEVEL_ROW = re.compile(r"^\|\s*(?P<who>[^|]+?)\s*\|\s*(?P<n>\d+)\s*\|\s*(?P<mid>[\d.]+)"
                        r"(?:\s*\((?P<lo>[\d.]+)–(?P<hi>[\d.]+)\))?\s*\|")


def benchmark_report() -> Path:
    """The run the benchmarks page includes: the first included report with a concurrency table."""
    for name in _INCLUDE.findall(BENCHMARKS_PAGE.read_text(encoding="utf-8")):
        path = ROOT / name
        if "#### Concurrent clients" in path.read_text(encoding="utf-8"):
            return path
    raise SystemExit(f"{BENCHMARKS_PAGE.relative_to(ROOT)} includes no benchmark report with a concurrency table")


def concurrency_levels(report: str) -> tuple[str, dict[str, list[tuple[int, float, float, float]]]]:
    """The heading and the rows of a report's concurrency table: contender -> (clients, median, lo, hi)."""
    section = report.split("#### Concurrent clients", 1)[1].split("\n#### ", 1)[0]
    heading = section.splitlines()[0].strip()
    series: dict[str, list[tuple[int, float, float, float]]] = {}
    for line in section.splitlines():
        m = _LEVEL_ROW.match(line)
        if m and m["who"] != "contender":
            mid = float(m["mid"])
            lo, hi = float(m["lo"] or mid), float(m["hi"] or mid)
            series.setdefault(m["who"], []).append((int(m["n"]), mid, lo, hi))
    if not series:
        raise ValueError("no rows in the concurrency table")
    return heading, series


def throughput() -> Figure:
    """Benchmarks: aggregate tokens/s against concurrent clients, from the committed report."""
    path = benchmark_report()
    heading, series = concurrency_levels(path.read_text(encoding="utf-8"))
    tokens = re.search(r"(\d+) tokens per request", heading)
    fig = Figure(figsize=(7.0, 4.3), facecolor="white")
    ax = fig.add_axes((0.1, 0.3, 0.86, 0.55))
    styles = ["o", "s", "^", "D", "v", "P"]
    colours = [INDIGO, ORANGE, GREEN, "#8e24aa", "#00838f", GREY]
    levels = sorted({n for rows in series.values() for n, *_ in rows})
    for i, (who, rows) in enumerate(series.items()):
        rows.sort()
        xs = [n for n, *_ in rows]
        mids = [m for _, m, _, _ in rows]
        err = [[m - lo for _, m, lo, _ in rows], [hi - m for _, m, _, hi in rows]]
        ax.errorbar(xs, mids, yerr=err, marker=styles[i % len(styles)], markersize=4.5, capsize=3,
                    linewidth=1.4, color=colours[i % len(colours)], label=who)
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(x) for x in levels])
    ax.minorticks_off()
    ax.set_ylim(bottom=0)
    ax.set_xlabel("concurrent streaming clients", fontsize=9)
    ax.set_ylabel("aggregate completion tokens/s", fontsize=9)
    ax.tick_params(labelsize=8.5)
    ax.grid(True, color="#eeeeee")
    ax.set_axisbelow(True)
    for side in ("right", "top"):
        ax.spines[side].set_visible(False)
    title = "Throughput under concurrency"
    if tokens:
        title += f" ({tokens.group(1)} tokens per request)"
    fig.text(0.1, 0.97, title, fontsize=10.5, ha="left", va="top")
    fig.text(0.1, 0.915, f"median and min–max over the repeats, from {path.relative_to(ROOT).as_posix()}",
             fontsize=7.5, ha="left", va="top", color=MUTED)
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.45, -0.15), ncol=2, frameon=False)
    return fig


# ---- rendering --------------------------------------------------------------------------------------

FIGURES: dict[str, Callable[[], Figure]] = {
    "request-path": request_path,
    "stream-timeline": stream_timeline,
    "worker-queue": worker_queue,
    "batching-slots": batching_slots,
    "tool-loop": tool_loop,
    "throughput": throughput,
}


def render(name: str) -> bytes:
    """One figure as SVG bytes: the same source gives the same bytes (no date, salted ids)."""
    with matplotlib.rc_context(RC):
        fig = FIGURES[name]()
        out = io.BytesIO()
        fig.savefig(out, format="svg", metadata={"Date": None})
    return out.getvalue()


def stale(directory: Path = HERE, names: list[str] | None = None) -> list[str]:
    """Figures whose file in ``directory`` differs from what their source draws now, or is missing,
    and SVG files no source draws."""
    problems = []
    for name in FIGURES if names is None else names:
        path = directory / f"{name}.svg"
        if not path.is_file():
            problems.append(f"{name}.svg is missing")
        elif path.read_bytes() != render(name):
            problems.append(f"{name}.svg differs from what course/figures/draw.py draws")
    problems += [f"{p.name} is drawn by nothing in course/figures/draw.py"
                 for p in sorted(directory.glob("*.svg")) if p.stem not in FIGURES]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    parser.add_argument("names", nargs="*", choices=[[], *FIGURES], help="only these figures")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale()
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print("redraw with: python course/figures/draw.py", file=sys.stderr)
        return 1 if problems else 0
    for name in args.names or FIGURES:
        path = HERE / f"{name}.svg"
        path.write_bytes(render(name))
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
