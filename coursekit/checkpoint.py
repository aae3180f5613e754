"""The checkpoint log: one JSON line per finished lab, describing the machine it ran on.

A record says what was run (lab, model file and its hash, context size), where (Python, OS,
CPU and its llama.cpp features, RAM, package versions), what the learner observed and how fast
the model decoded. Comparing two logs answers "why does my output differ from the course's?"
before anyone has to ask. Every record is validated against
``schemas/checkpoint_record.schema.json`` before it is written.

``machine_info()`` imports nothing heavy at module level, so other tools (the benchmark) can
reuse it on its own.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import re
import struct
import subprocess
import sys
from collections.abc import Iterable, Mapping
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

RECORD_VERSION = 1
LOG_ENV = "COURSE_CHECKPOINT_LOG"
PACKAGES = ("llama-cpp-python", "fastapi", "uvicorn", "openai", "pydantic", "jsonschema")
SCHEMA_FILE = "checkpoint_record.schema.json"

# ---- the machine ---------------------------------------------------------------------------


def _cpu_model() -> str:
    system = platform.system()
    try:
        if system == "Linux":
            fields: dict[str, str] = {}
            for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
                key, _, value = line.partition(":")
                fields.setdefault(key.strip().lower(), value.strip())
            for key in ("model name", "hardware", "cpu model", "model", "cpu"):
                if fields.get(key):
                    return fields[key]
        elif system == "Darwin":
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                 text=True, timeout=5, check=False).stdout.strip()
            if out:
                return out
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine() or "unknown"


def _ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        pass
    if sys.platform == "win32":
        import ctypes

        class MemoryStatus(ctypes.Structure):
            _fields_ = [("length", ctypes.c_ulong), ("load", ctypes.c_ulong),
                        ("total", ctypes.c_ulonglong), ("avail", ctypes.c_ulonglong),
                        ("total_page", ctypes.c_ulonglong), ("avail_page", ctypes.c_ulonglong),
                        ("total_virtual", ctypes.c_ulonglong), ("avail_virtual", ctypes.c_ulonglong),
                        ("avail_extended", ctypes.c_ulonglong)]
        status = MemoryStatus()
        status.length = ctypes.sizeof(MemoryStatus)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined]
            return int(status.total)
    return None


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def parse_system_info(text: str) -> tuple[list[str], dict[str, str]]:
    """``"CPU : SSE3 = 1 | AVX = 1 | ... |"`` -> (["CPU"], {"SSE3": "1", "AVX": "1", ...})."""
    backends: list[str] = []
    features: dict[str, str] = {}
    for part in text.split("|"):
        part = part.strip()
        if " : " in part:
            backend, _, part = part.partition(" : ")
            backends.append(backend.strip())
        key, eq, value = part.partition("=")
        if eq and key.strip():
            features[key.strip()] = value.strip()
    return backends, features


def llama_cpp_info() -> dict[str, Any]:
    """llama.cpp's own view of the build: backends (CPU, CUDA, Metal...) and CPU features."""
    try:
        import llama_cpp
    except ImportError:
        return {"system_info": None, "backends": [], "features": {}}
    raw = llama_cpp.llama_print_system_info()
    text = (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)).strip()
    backends, features = parse_system_info(text)
    return {"system_info": text, "backends": backends, "features": features}


def cpu_flags() -> list[str]:
    """AMX and AVX-512 flags the OS reports: why one machine's llama.cpp crashed and another's did not."""
    from reference_server.backends.local.native import cpu_flags as flags

    return flags()


@lru_cache(maxsize=1)
def _machine_info() -> str:
    uname = platform.uname()
    cpu, cores, ram = _cpu_model(), os.cpu_count() or 1, _ram_bytes()
    ident = hashlib.sha256("\0".join([uname.node, cpu, str(cores), str(ram), uname.system,
                                      uname.machine]).encode()).hexdigest()[:12]
    info = {
        "id": ident,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "os": platform.platform(),
        "system": uname.system,
        "arch": uname.machine,
        "cpu_model": cpu,
        "cores": cores,
        "ram_bytes": ram,
        "packages": package_versions(),
        "cpu_flags": cpu_flags(),
        "llama_cpp": llama_cpp_info(),
    }
    return json.dumps(info)


def machine_info() -> dict[str, Any]:
    """Everything about this machine that can change a lab's output or speed.

    ``id`` is an anonymous, stable fingerprint (a hash, not the host name), so an instructor
    can tell machines apart in merged logs.
    """
    return json.loads(_machine_info())


# ---- the model file ------------------------------------------------------------------------

_HASHES: dict[tuple[str, int, int], str] = {}

GGUF_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
    38: "MXFP4_MOE",
}
_QUANT_IN_NAME = re.compile(r"(?:^|[.\-_])((?:I?Q\d+(?:_[A-Z0-9]+)*)|F16|F32|BF16)(?=\.gguf$)", re.I)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, computed once per (path, mtime, size) in this process."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_mtime_ns, st.st_size)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def gguf_file_type(path: str | os.PathLike[str]) -> int | None:
    """``general.file_type`` from a GGUF header, read without loading the model (None if absent)."""
    scalar = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
              10: "<Q", 11: "<q", 12: "<d"}
    with open(path, "rb") as f:
        def read(fmt: str) -> Any:
            size = struct.calcsize(fmt)
            data = f.read(size)
            if len(data) != size:
                raise ValueError("truncated GGUF header")
            return struct.unpack(fmt, data)[0]

        def string() -> str:
            return f.read(read("<Q")).decode("utf-8", "replace")

        def skip(kind: int) -> None:
            if kind in scalar:
                f.seek(struct.calcsize(scalar[kind]), 1)
            elif kind == 8:
                f.seek(read("<Q"), 1)
            elif kind == 9:
                inner, count = read("<I"), read("<Q")
                if inner in scalar:
                    f.seek(struct.calcsize(scalar[inner]) * count, 1)
                else:
                    for _ in range(count):
                        skip(inner)
            else:
                raise ValueError(f"unknown GGUF value type {kind}")

        if f.read(4) != b"GGUF":
            return None
        version = read("<I")
        if version < 2:
            return None
        read("<Q")  # tensor count
        for _ in range(read("<Q")):
            key, kind = string(), read("<I")
            if key == "general.file_type" and kind in scalar:
                return int(read(scalar[kind]))
            skip(kind)
    return None


def quantization(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(name, source): from the GGUF metadata if it says, else from the file name."""
    try:
        code = gguf_file_type(path)
    except (OSError, ValueError):
        code = None
    if code is not None:
        return GGUF_FILE_TYPES.get(code, f"file_type {code}"), "gguf"
    m = _QUANT_IN_NAME.search(Path(path).name)
    if m:
        return m.group(1).upper(), "filename"
    return "unknown", "unknown"


def private_path(path: Path) -> str:
    """A path that names no user: under a site-packages folder or the home folder, or the name alone.

    Records get handed in and shared; an absolute path carries a user name and a folder layout.
    """
    parts = path.resolve().parts
    if "site-packages" in parts:
        return "/".join(("<site-packages>", *parts[parts.index("site-packages") + 1:]))
    home = Path.home().resolve().parts
    if len(home) > 1 and parts[:len(home)] == home:
        return "/".join(("~", *parts[len(home):]))
    return path.name


def model_info(path: str | os.PathLike[str], *, n_ctx: int | None = None,
               n_threads: int | None = None) -> dict[str, Any]:
    p = Path(path)
    quant, source = quantization(p)
    shown = private_path(p)
    return {"file": p.name, "path": shown, "size_bytes": p.stat().st_size, "sha256": sha256_file(p),
            "quantization": quant, "quantization_source": source, "n_ctx": n_ctx, "n_threads": n_threads}


# ---- records ---------------------------------------------------------------------------------


def default_log() -> Path:
    """``$COURSE_CHECKPOINT_LOG``, else ``checkpoints/checkpoints.jsonl`` at the repository root."""
    if os.environ.get(LOG_ENV):
        return Path(os.environ[LOG_ENV]).expanduser()
    return repository_root() / "checkpoints" / "checkpoints.jsonl"


def repository_root() -> Path:
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists():
        return here
    for folder in [Path.cwd(), *Path.cwd().parents]:  # a non-editable install: find the checkout
        if (folder / "solutions").is_dir() and (folder / "labs").is_dir():
            return folder
    return Path.cwd()


def schema_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("schemas")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / SCHEMA_FILE
        if candidate.exists():
            return candidate
    return repository_root() / "schemas" / SCHEMA_FILE


@lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema

    schema = json.loads(schema_path().read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def validate_record(record: Any) -> list[str]:
    """Problems with a record, as ``"$.path: message"`` lines (empty when valid)."""
    from .checks import json_path

    errors = sorted(_validator().iter_errors(record), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{json_path(list(e.absolute_path))}: {e.message}" for e in errors]


class InvalidRecord(ValueError):
    pass


def make_record(lab: str, observed: Any = None, tokens_per_s: float | None = None, *,
                llm: Any = None, model_path: str | os.PathLike[str] | None = None,
                n_ctx: int | None = None, n_threads: int | None = None,
                checks: Mapping[str, bool] | None = None,
                now: _dt.datetime | None = None) -> dict[str, Any]:
    """A validated record (nothing written). With ``llm`` (a ``llama_cpp.Llama``) the model
    path, context size and threads are read from it; without, the embedded model is described."""
    if llm is not None:
        model_path = model_path or llm.model_path
        n_ctx = n_ctx if n_ctx is not None else llm.n_ctx()
        n_threads = n_threads if n_threads is not None else getattr(llm, "n_threads", None)
    if model_path is None:
        from .model import embedded_model_path

        model_path = embedded_model_path()
    if checks is None:
        from .checks import RESULTS as checks
    when = (now or _dt.datetime.now(_dt.timezone.utc)).astimezone(_dt.timezone.utc)
    record = {
        "record_version": RECORD_VERSION,
        "lab": lab,
        "time": when.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "machine": machine_info(),
        "model": model_info(model_path, n_ctx=n_ctx, n_threads=n_threads)
                 if model_path and Path(model_path).exists() else None,
        "observed": json.loads(json.dumps(observed, default=repr)),
        "tokens_per_s": round(float(tokens_per_s), 2) if tokens_per_s is not None else None,
        "checks": {"passed": sorted(k for k, ok in checks.items() if ok),
                   "failed": sorted(k for k, ok in checks.items() if not ok)},
    }
    problems = validate_record(record)
    if problems:
        raise InvalidRecord("checkpoint record does not match its schema:\n" + "\n".join(problems))
    return record


def record(lab: str, observed: Any = None, tokens_per_s: float | None = None, *,
           log: str | os.PathLike[str] | None = None, quiet: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Appends one validated record for ``lab`` to the checkpoint log and returns it."""
    rec = make_record(lab, observed, tokens_per_s, **kwargs)
    path = Path(log) if log is not None else default_log()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    if not quiet:
        speed = f", {rec['tokens_per_s']} tokens/s" if rec["tokens_per_s"] is not None else ""
        failed = rec["checks"]["failed"]
        state = f"{len(rec['checks']['passed'])} checks passed" + (f", {len(failed)} failed" if failed else "")
        print(f"📝 checkpoint {lab} recorded ({state}{speed}) in {path}")
    return rec


def read_log(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """(valid records, problems): a broken line is reported, never fatal."""
    records, problems = [], []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{number}: not JSON ({exc.msg})")
            continue
        errors = validate_record(item)
        if errors:
            problems.append(f"{path}:{number}: not a checkpoint record ({errors[0]})")
            continue
        records.append(item)
    return records, problems
