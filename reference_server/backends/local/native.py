"""What this llama.cpp build does on this CPU, and the one workaround it needs (AMX).

llama.cpp can keep a model's weights in "extra" CPU buffer types that repack them for a
faster kernel: AMX tiles on recent Intel Xeons, interleaved blocks (REPACK) on AVX2 and ARM.
The AMX path crashes on the machines this course is taught on (a general protection fault at
``ldtilecfg`` in ``ggml_backend_amx_mul_mat``, llama.cpp pull request #26954: worker threads
run tile instructions the kernel has not granted them). A wheel compiled on such a machine
(``GGML_NATIVE`` is on by default) has AMX built in, and pip reuses that wheel from its cache
whatever ``CMAKE_ARGS`` say later, so a build-time fix cannot be relied on.

The fix is therefore made where the model is loaded: when the library reports AMX
(``llama_print_system_info()`` shows ``AMX_INT8 = 1``), the model is loaded with
``use_extra_bufts = false``, and its weights stay in plain CPU buffers (AVX-512 kernels).
Any other build keeps the extra buffers: REPACK speeds up Q4_0 and Q4_K models on AVX2 and ARM,
and there is nothing to avoid there. ``--extra-buffers on|off`` overrides the choice.

``llama_cpp.Llama`` takes no argument for that field, so ``model_params`` swaps in a
``llama_model_default_params`` with the field cleared while one model loads, and records which
buffer types llama.cpp reports for the weights (what the tests check).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import platform
import re
import threading
from collections.abc import Iterator
from pathlib import Path

TROUBLESHOOTING = "course/reference/troubleshooting.md, section \"The server dies without a word\""
_BUFFER_LINE = re.compile(r"(\S+) model buffer size\s*=\s*([\d.]+) MiB")
_LOAD_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def system_info() -> str:
    """llama.cpp's own description of the build: ``CPU : SSE3 = 1 | AVX2 = 1 | ... |``."""
    import llama_cpp

    raw = llama_cpp.llama_print_system_info()
    return (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)).strip()


def build_features(info: str | None = None) -> dict[str, str]:
    """``{"AVX2": "1", "AMX_INT8": "1", ...}`` from the system info line."""
    out: dict[str, str] = {}
    for part in (info if info is not None else system_info()).split("|"):
        key, eq, value = part.rpartition(" : ")[2].partition("=")
        if eq and key.strip():
            out[key.strip()] = value.strip()
    return out


def build_has_amx(info: str | None = None) -> bool:
    return any(k.startswith("AMX") and v == "1" for k, v in build_features(info).items())


def cpu_flags() -> list[str]:
    """The CPU's AMX and AVX-512 flags as the operating system reports them (Linux only; else [])."""
    if platform.system() != "Linux":
        return []
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return []
    flags = next((line.partition(":")[2].split() for line in text.splitlines()
                  if line.startswith(("flags", "Features"))), [])
    return sorted({f for f in flags if f.startswith(("amx", "avx512"))})


def extra_buffers_on(setting: str, info: str | None = None) -> bool:
    """``auto``: on, unless the library was built with AMX (see the module docstring)."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"extra_buffers must be auto, on or off, not {setting!r}")
    return setting == "on" or (setting == "auto" and not build_has_amx(info))


# --8<-- [start:model_params]
@contextlib.contextmanager
def model_params(extra_buffers: bool) -> Iterator[dict[str, float]]:
    """While one model loads: its weights' buffer types (filled in), extra buffers on or off."""
    import llama_cpp
    import llama_cpp._logger as llama_logger
    from llama_cpp import llama_cpp as capi

    buffers: dict[str, float] = {}
    default_params = capi.llama_model_default_params

    def without_extra_buffers() -> capi.llama_model_params:
        params = default_params()
        params.use_extra_bufts = False
        return params

    @llama_cpp.llama_log_callback
    def log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        found = _BUFFER_LINE.search(text.decode("utf-8", "replace"))
        if found:
            buffers[found.group(1)] = buffers.get(found.group(1), 0.0) + float(found.group(2))
        llama_logger.llama_log_callback(level, text, user_data)  # llama-cpp-python's own handling

    with _LOAD_LOCK:
        if not extra_buffers:
            capi.llama_model_default_params = without_extra_buffers
        llama_cpp.llama_log_set(log, ctypes.c_void_p(0))
        try:
            yield buffers
        finally:
            capi.llama_model_default_params = default_params
            llama_cpp.llama_log_set(llama_logger.llama_log_callback, ctypes.c_void_p(0))
# --8<-- [end:model_params]


def crash_hint(signal_name: str) -> str:
    """The one line printed when llama.cpp kills the process: what it was, what to read."""
    amx = [f for f in cpu_flags() if f.startswith("amx")]
    try:
        build = system_info().removeprefix("CPU : ").strip(" |")
    except Exception:  # llama_cpp itself may be what is broken
        build = "unknown (llama_cpp did not import)"
    cause = (f"this CPU has AMX ({', '.join(amx)}), whose llama.cpp path crashes; start with "
             "--extra-buffers off" if amx else "a native crash inside llama.cpp")
    return (f"reference-server: the process died of {signal_name} in native code: likely {cause}. "
            f"llama.cpp build: {build}. See {TROUBLESHOOTING}.")
