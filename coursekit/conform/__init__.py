"""``coursekit conform``: does a server speak OpenAI's API? Real requests, one table row per feature.

    coursekit conform --base-url http://127.0.0.1:8000/v1 [--api-key KEY] [--model ID] [--json FILE]
                      [--group responses]   only the rows of one group (repeatable)
    coursekit exam ...                 the same (the course's final exam)
    coursekit conform --compare A.json B.json ...   saved results side by side (a room, two servers)

Point it at any OpenAI-compatible server. It sends a battery of real HTTP requests — every
endpoint, streamed and not, errors, authentication, the optional features — and checks every
body and every server-sent event against the repository's JSON Schemas (``schemas/``) and
against the components of OpenAI's official spec (``schemas/openai_spec_subset.json``). It
prints one row per feature: pass, fail, not offered (an optional feature the server refuses in
words) or skipped (auth rows without ``--api-key``), with the reason for anything but a pass.
It exits 0 only when every required row passes; ``--strict`` also fails on a broken optional
feature. Which rows are required, and why: ``coursekit.conform.openai_api``.

The Python entry point, stable for notebooks and scripts (the last lab grades the learner's
server with it)::

    from coursekit.conform import run
    report = run("http://127.0.0.1:8000/v1", api_key=None, model=None)
    report.ok            # True when every required row passes
    report.statuses()    # {"models.list": "pass", "chat.stream": "fail", ...}
    report.row("chat.stream").reason
    print(report.table())
    report.write_json("conform.json")

``run(base_url, api_key=None, model=None, *, timeout=60.0, groups=None, on_row=None) -> Report``:
``model=None`` uses the first model the server lists; ``on_row`` is called with each ``Row`` as
it completes. A protocol is a module with a ``Group`` of checks, registered in ``GROUPS``:
``openai`` (models, chat, completions, embeddings: ``openai_api``) and ``responses`` (the
Responses API, every row optional: ``responses_api``); ``groups`` picks which to run (default:
all), e.g. ``run(url, groups=["responses"])``. Ollama's and Anthropic's would be new modules.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import openai_api, responses_api
from .core import (FAIL, NOT_OFFERED, PASS, SKIPPED, Group, Report, Row, Session, format_row, markdown,
                   now_iso, run_group, table_head)

__all__ = ["FAIL", "GROUPS", "NOT_OFFERED", "PASS", "SKIPPED", "Report", "Row", "main", "markdown", "run"]

GROUPS: dict[str, Group] = {group.name: group for group in (openai_api.GROUP, responses_api.GROUP)}


def all_rows(groups: Sequence[str] | None = None) -> list[tuple[str, str, str, bool]]:
    """(group, row id, feature, required) of every row, in table order, without running anything."""
    return [(g.name, c.id, c.feature, c.required) for g in _groups(groups) for c in g.checks]


def _groups(names: Sequence[str] | None) -> list[Group]:
    unknown = [n for n in names or () if n not in GROUPS]
    if unknown:
        raise ValueError(f"unknown group {unknown[0]!r}; the groups are: {', '.join(GROUPS)}")
    return [GROUPS[n] for n in names] if names else list(GROUPS.values())


def run(base_url: str, api_key: str | None = None, model: str | None = None, *, timeout: float = 60.0,
        groups: Sequence[str] | None = None, on_row: Callable[[Row], None] | None = None) -> Report:
    """Runs every check of ``groups`` against the server at ``base_url`` (``http://host:port/v1``)."""
    chosen = _groups(groups)
    session = Session(base_url, api_key, model, timeout)
    started, t0 = now_iso(), time.perf_counter()
    rows: list[Row] = []
    try:
        for group in chosen:
            for row in run_group(group, session):
                rows.append(row)
                if on_row is not None:
                    on_row(row)
    finally:
        session.close()
    return Report(session.base_url, session.model_used or model, rows, started, time.perf_counter() - t0,
                  bool(api_key), session.notes)


# ---- the command line -------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", metavar="URL", help="the server's base URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", metavar="KEY", help="the server's API key (also checks that it refuses "
                        "requests without it)")
    parser.add_argument("--model", metavar="ID", help="the model id to use (default: the first one listed)")
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE, as JSON")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S", help="seconds per request (default 60)")
    parser.add_argument("--strict", action="store_true", help="exit 1 also when an optional feature is broken "
                        "(not offered is fine)")
    parser.add_argument("--group", action="append", choices=list(GROUPS), metavar="NAME",
                        help=f"run only this group of rows (repeatable; the groups: {', '.join(GROUPS)})")
    parser.add_argument("--compare", nargs="+", metavar="FILE", help="run nothing: show saved --json results side "
                        "by side (one column per file)")
    parser.add_argument("--markdown", action="store_true", help="with --compare: a Markdown table")


def main(args: argparse.Namespace) -> int:
    if args.compare:
        return _compare(args.compare, args.markdown)
    if not args.base_url:
        print("coursekit conform: give --base-url URL (or --compare FILE...)", file=sys.stderr)
        return 2
    width = max(80, min(shutil.get_terminal_size((110, 24)).columns, 140))
    groups = getattr(args, "group", None)
    columns = [Row(row_id, "", "", False) for _, row_id, _, _ in all_rows(groups)]  # the widths, before any row ran
    print(f"coursekit conform {args.base_url}" + (f"  model: {args.model}" if args.model else "")
          + f"  API key: {'given' if args.api_key else 'none'}\n", flush=True)
    print(table_head(columns), flush=True)
    report = run(args.base_url, args.api_key, args.model, timeout=args.timeout, groups=groups,
                 on_row=lambda row: print(format_row(row, columns, width), flush=True))
    for note in report.notes:
        print(f"note: {note}")
    print(f"\nmodel: {report.model or '(none)'}\n{report.summary()}")
    if args.json:
        report.write_json(args.json)
        print(f"wrote {args.json}")
    return 0 if (report.ok_strict if args.strict else report.ok) else 1


def _compare(files: list[str], as_markdown: bool) -> int:
    reports: dict[str, Report] = {}
    for name in files:
        try:
            reports[Path(name).stem if Path(name).stem not in reports else name] = Report.from_json(
                json.loads(Path(name).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"coursekit conform: cannot read {name}: {exc}", file=sys.stderr)
            return 2
    if as_markdown:
        print(markdown(reports))
        return 0
    print(compare_text(reports))
    return 0


def compare_text(reports: dict[str, Report]) -> str:
    """Rows down, servers across: a letter per cell, then every server's non-passing reasons."""
    letters = {PASS: ".", FAIL: "F", NOT_OFFERED: "-", SKIPPED: "s"}
    ids = list(dict.fromkeys(r.id for rep in reports.values() for r in rep.rows))
    names = list(reports)
    idw = max(len(i) for i in ids)
    lines = ["   ".join(f"{n_}" for n_ in [" " * idw] + [f"[{k + 1}]" for k in range(len(names))])]
    for i in ids:
        need = next((r.required for rep in reports.values() for r in rep.rows if r.id == i), False)
        cells = []
        for rep in reports.values():
            found = next((r for r in rep.rows if r.id == i), None)
            cells.append(letters[found.status] if found else "?")
        lines.append(f"{i:<{idw}}" + "".join(f"   {c:^{len(str(k + 1)) + 2}}" for k, c in enumerate(cells))
                     + ("" if need else "   (optional)"))
    lines.append("")
    lines.append(". pass   F fail   - not offered   s skipped")
    lines.append("")
    for k, (name, rep) in enumerate(reports.items()):
        verdict = "conforms" if rep.ok else f"does not conform ({rep.blocking_count()})"
        lines.append(f"[{k + 1}] {name}  {rep.base_url}  {verdict}")
        for r in rep.rows:
            if r.status in (FAIL,):
                lines.append(f"      {r.id}: {r.reason}")
    return "\n".join(lines)
