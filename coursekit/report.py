"""Reading checkpoint logs back: a table, a comparison with a reference, a room's merge."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

Record = dict[str, Any]


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table (columns padded, a rule under the header)."""
    body = [["" if cell is None else str(cell) for cell in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in body)])


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def observed_text(value: Any, width: int = 48) -> str:
    if value is None:
        return "-"
    return clip(json.dumps(value, ensure_ascii=False, sort_keys=True), width)


def gib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.1f} GiB"


def speed(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def checks_text(rec: Record) -> str:
    ok, bad = len(rec["checks"]["passed"]), len(rec["checks"]["failed"])
    return f"{ok}/{ok + bad}" + (" ✗" if bad else "")


def machine_line(m: Record) -> str:
    pk = m["packages"]
    backends = ",".join(m["llama_cpp"]["backends"]) or "?"
    return (f"machine {m['id']}: {m['cpu_model']}, {m['cores']} cores, {gib(m['ram_bytes'])} RAM, {m['os']}, "
            f"Python {m['python']}, llama-cpp-python {pk.get('llama-cpp-python')} ({backends})")


def latest_per_lab(records: Iterable[Record]) -> dict[str, Record]:
    out: dict[str, Record] = {}
    for rec in sorted(records, key=lambda r: r["time"]):
        out[rec["lab"]] = rec
    return dict(sorted(out.items()))


def by_machine(records: Iterable[Record]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {}
    for rec in records:
        out.setdefault(rec["machine"]["id"], []).append(rec)
    return out


# ---- show --------------------------------------------------------------------------------------

def show(records: Sequence[Record]) -> str:
    if not records:
        return "(no checkpoint records)"
    machines = by_machine(records)
    lines = [machine_line(recs[-1]["machine"]) for recs in machines.values()]
    rows = [(r["time"].replace("T", " ").removesuffix("Z"), r["lab"], r["machine"]["id"],
             (r["model"] or {}).get("quantization", "-"), ((r["model"] or {}).get("sha256") or "-")[:10],
             speed(r["tokens_per_s"]), checks_text(r), observed_text(r["observed"]))
            for r in sorted(records, key=lambda r: r["time"])]
    lines += ["", table(["time (UTC)", "lab", "machine", "quant", "model sha256", "tok/s", "checks",
                         "observed"], rows)]
    return "\n".join(lines)


# ---- compare -----------------------------------------------------------------------------------

def _flat(m: Record, model: Record | None) -> dict[str, str]:
    out = {"python": f"{m['python']} ({m['python_implementation']})", "os": m["os"], "arch": m["arch"],
           "cpu": m["cpu_model"], "cores": str(m["cores"]), "ram": gib(m["ram_bytes"]),
           "llama.cpp backends": ",".join(m["llama_cpp"]["backends"]) or "?"}
    for name, version in sorted(m["packages"].items()):
        out[name] = version or "not installed"
    if model:
        out.update({"model file": model["file"], "model sha256": model["sha256"][:16],
                    "quantization": model["quantization"], "n_ctx": str(model["n_ctx"]),
                    "n_threads": str(model["n_threads"])})
    return out


def _enabled(m: Record) -> set[str]:
    return {k for k, v in m["llama_cpp"]["features"].items() if v not in ("0", "", "false")}


def observed_diff(mine: Any, ref: Any, width: int = 60) -> list[str]:
    """Where two observed values differ, key by key for objects."""
    if mine == ref:
        return []
    if isinstance(mine, dict) and isinstance(ref, dict):
        out = []
        for key in sorted(set(mine) | set(ref)):
            if mine.get(key, ...) != ref.get(key, ...):
                a = observed_text(mine[key], width) if key in mine else "(missing)"
                b = observed_text(ref[key], width) if key in ref else "(missing)"
                out.append(f"{key}: {a}  vs reference  {b}")
        return out
    return [f"{observed_text(mine, width)}  vs reference  {observed_text(ref, width)}"]


def compare(mine: Sequence[Record], ref: Sequence[Record], *, mine_name: str = "yours",
            ref_name: str = "reference") -> str:
    if not mine or not ref:
        return f"nothing to compare: {mine_name if not mine else ref_name} has no records"
    a, b = max(mine, key=lambda r: r["time"]), max(ref, key=lambda r: r["time"])
    lines = [f"yours:     {mine_name} ({len(mine)} records, {machine_line(a['machine'])})",
             f"reference: {ref_name} ({len(ref)} records, {machine_line(b['machine'])})", ""]
    fa, fb = _flat(a["machine"], a["model"]), _flat(b["machine"], b["model"])
    rows = [(key, fa.get(key, "-"), fb.get(key, "-"), "" if fa.get(key) == fb.get(key) else "≠")
            for key in dict.fromkeys([*fa, *fb])]
    lines += ["Environment", table(["", "yours", "reference", ""], rows), ""]
    ea, eb = _enabled(a["machine"]), _enabled(b["machine"])
    if ea == eb:
        lines.append(f"llama.cpp CPU features: identical ({len(ea)} enabled)")
    else:
        if ea - eb:
            lines.append("llama.cpp CPU features only yours:     " + " ".join(sorted(ea - eb)))
        if eb - ea:
            lines.append("llama.cpp CPU features only reference: " + " ".join(sorted(eb - ea)))
    la, lb = latest_per_lab(mine), latest_per_lab(ref)
    rows, diffs = [], []
    for lab in sorted(set(la) | set(lb)):
        ra, rb = la.get(lab), lb.get(lab)
        ratio = "-"
        if ra and rb and ra["tokens_per_s"] and rb["tokens_per_s"]:
            ratio = f"{ra['tokens_per_s'] / rb['tokens_per_s']:.2f}×"
        if ra and rb:
            d = observed_diff(ra["observed"], rb["observed"])
            state = "same" if not d else f"differs ({len(d)})"
            diffs += [f"  {lab}: {line}" for line in d]
        else:
            state = "only yours" if ra else "only reference"
        rows.append((lab, speed(ra["tokens_per_s"]) if ra else "-", speed(rb["tokens_per_s"]) if rb else "-",
                     ratio, checks_text(ra) if ra else "-", state))
    lines += ["", "Labs (latest record of each)",
              table(["lab", "tok/s yours", "tok/s ref", "ratio", "checks", "observed"], rows)]
    if diffs:
        lines += ["", "Observed outputs that differ:", *diffs]
    return "\n".join(lines)


# ---- merge -------------------------------------------------------------------------------------

def merge(sources: Sequence[tuple[str, Sequence[Record]]]) -> tuple[str, list[Record]]:
    """(report, merged records): a table per machine, then one line per lab across the room."""
    seen: set[str] = set()
    merged: list[Record] = []
    origin: dict[str, set[str]] = {}
    for name, records in sources:
        for rec in records:
            key = json.dumps(rec, sort_keys=True)
            origin.setdefault(rec["machine"]["id"], set()).add(name)
            if key not in seen:
                seen.add(key)
                merged.append(rec)
    merged.sort(key=lambda r: (r["time"], r["machine"]["id"], r["lab"]))
    if not merged:
        return "(no checkpoint records)", merged
    machines = by_machine(merged)
    lines = [f"{len(merged)} records from {len(sources)} logs, {len(machines)} machines", ""]
    for ident, recs in sorted(machines.items()):
        lines.append(machine_line(recs[-1]["machine"]))
        lines.append("  from " + ", ".join(sorted(origin[ident])))
        rows = [(lab, r["time"].replace("T", " ").removesuffix("Z"), speed(r["tokens_per_s"]), checks_text(r),
                 observed_text(r["observed"], 56)) for lab, r in latest_per_lab(recs).items()]
        lines += ["  " + row for row in table(["lab", "time (UTC)", "tok/s", "checks", "observed"], rows).split("\n")]
        lines.append("")
    rows = []
    per_lab: dict[str, list[Record]] = {}
    for recs in machines.values():
        for lab, rec in latest_per_lab(recs).items():
            per_lab.setdefault(lab, []).append(rec)
    for lab, recs in sorted(per_lab.items()):
        speeds = [r["tokens_per_s"] for r in recs if r["tokens_per_s"]]
        failing = sum(1 for r in recs if r["checks"]["failed"])
        variants = len({json.dumps(r["observed"], sort_keys=True) for r in recs})
        rows.append((lab, len(recs), failing, f"{statistics.median(speeds):.1f}" if speeds else "-",
                     f"{min(speeds):.1f}–{max(speeds):.1f}" if speeds else "-", variants))
    lines += ["Room", table(["lab", "machines", "with failed checks", "median tok/s", "range",
                             "distinct outputs"], rows)]
    return "\n".join(lines), merged
