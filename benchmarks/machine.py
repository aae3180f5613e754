"""The machine a run happened on, and how busy other processes kept it meanwhile.

A benchmark on a shared 2-core machine measures the neighbours as much as the code: a test
suite starting next door halves a 2-thread decode. ``LoadMeter`` tells how much CPU time
processes outside the benchmark took during a measurement, so a disturbed one can be retried
and the report can say how quiet the run was.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def _own_machine_info() -> dict[str, Any]:
    """Used only when coursekit's ``machine_info()`` is not there."""
    import llama_cpp

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = None
    raw = llama_cpp.llama_print_system_info()
    return {"cpu_model": cpu, "cores": os.cpu_count(), "ram_bytes": ram, "os": platform.platform(),
            "python": platform.python_version(),
            "packages": {"llama-cpp-python": llama_cpp.__version__},
            "llama_cpp": {"system_info": (raw.decode() if isinstance(raw, bytes) else str(raw)).strip()}}


def machine_info() -> dict[str, Any]:
    """The course's own description of a machine (the checkpoint log's), else a small one of ours."""
    try:
        from coursekit.checkpoint import machine_info as course_machine_info
    except ImportError:
        return _own_machine_info()
    return course_machine_info()


def machine_lines(info: dict[str, Any], model: Path, n_ctx: int, threads: int) -> list[str]:
    packages = info.get("packages", {})
    ram = info.get("ram_bytes")
    return [
        f"- CPU: {info.get('cpu_model')}, {info.get('cores')} cores"
        + (f", {ram / 2**30:.0f} GiB RAM" if ram else ""),
        f"- OS: {info.get('os', platform.platform())}; Python {info.get('python', platform.python_version())}",
        f"- llama-cpp-python {packages.get('llama-cpp-python')}"
        + "".join(f", {k} {v}" for k, v in packages.items() if k != "llama-cpp-python" and v),
        f"- llama.cpp system_info: `{(info.get('llama_cpp') or {}).get('system_info')}`",
        f"- model: {model.name} ({model.stat().st_size / 1e6:.1f} MB), n_ctx {n_ctx}, "
        f"{threads} thread{'s' if threads != 1 else ''} for in-process and the reference server",
    ]


def _family(pids: list[int]) -> set[int]:
    """``pids`` and all their descendants: a server started through a supervisor works in a child."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    family = set(pids)
    while True:
        children = {pid for pid, parent in parents.items() if parent in family} - family
        if not children:
            return family
        family |= children


def _jiffies(pids: set[int]) -> tuple[int, int, dict[int, int]] | None:
    """(all CPU time, busy CPU time, CPU time of each of ``pids``), in clock ticks; Linux only."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return None
    idle = values[3] + values[4]  # idle, iowait
    ours: dict[int, int] = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            ours[pid] = int(fields[11]) + int(fields[12])  # utime, stime (all threads)
        except (OSError, ValueError, IndexError):
            continue  # gone
    return sum(values), sum(values) - idle, ours


class LoadMeter:
    """``with meter.measure() as m: ...`` then ``m.other``: the share of the machine's CPU time
    that processes other than ``pids`` used meanwhile (None where it cannot be known)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    def measure(self) -> "_Window":
        return _Window(self.pids)


class _Window:
    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.other: float | None = None

    def __enter__(self) -> "_Window":
        try:
            self._family = _family(self.pids)
        except OSError:
            self._family = set(self.pids)
        self._start = _jiffies(self._family)
        return self

    def __exit__(self, *exc: object) -> None:
        end = _jiffies(self._family)
        if self._start is None or end is None:
            return
        total, busy = end[0] - self._start[0], end[1] - self._start[1]
        ours = sum(end[2][pid] - self._start[2][pid] for pid in end[2] if pid in self._start[2])
        if total > 0:
            self.other = max(0.0, (busy - ours) / total)
