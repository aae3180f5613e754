"""The export mechanism (``%%export`` cells into the learner's package), and the checks that plug
a scripted engine into that package: each must fail on a plausible wrong answer."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from coursekit import export
from coursekit.__main__ import main
from coursekit.checks import LabCheckFailed
from coursekit.labchecks import errors as errors_check
from coursekit.labchecks import fastapi_basics, streaming
from coursekit.labchecks.fakes import FakeEngine, package_module

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "solutions"


@pytest.fixture
def clean_imports() -> Iterator[None]:
    """Each test imports its own ``myserver``; none leaks into the next."""
    path = list(sys.path)
    yield
    sys.path[:] = path
    export.forget_package()


# ---- module files and parts ---------------------------------------------------------------------

def test_parts_are_replaced_in_place_and_kept_in_lab_order(tmp_path: Path) -> None:
    export.write_part("routers.chat", "collect", "03_x", "def collect(): return 1", tmp_path)
    export.write_part("routers.chat", "route", "03_x", "ROUTE = 3", tmp_path)
    first = export.write_part("routers.chat", "early", "01_x", "EARLY = 1", tmp_path)
    assert (first.written, first.replaced) == (True, False)
    path = tmp_path / "myserver" / "routers" / "chat.py"
    assert [p.name for p in export.read_parts(path)] == ["early", "collect", "route"], "parts follow the labs"
    assert (tmp_path / "myserver" / "__init__.py").exists() and (tmp_path / "myserver" / "routers" / "__init__.py").exists()

    again = export.write_part("routers.chat", "collect", "03_x", "def collect(): return 2", tmp_path)
    assert again.replaced and path.read_text().count("def collect") == 1, "re-running a cell replaces its part"
    before = path.read_text()
    export.write_part("routers.chat", "collect", "03_x", "def collect(): return 2", tmp_path)
    assert path.read_text() == before, "the same cell twice: the same file"

    upgraded = export.write_part("routers.chat", "route", "04_y", "ROUTE = 4", tmp_path)
    assert upgraded.replaced and [p.lab for p in export.read_parts(path)] == ["01_x", "03_x", "04_y"]
    kept = export.write_part("routers.chat", "route", "03_x", "ROUTE = 3", tmp_path)
    assert (kept.written, kept.owner) == (False, "04_y"), "an earlier lab never undoes a later lab's upgrade"
    assert "ROUTE = 4" in path.read_text() and "ROUTE = 3" not in path.read_text()
    namespace: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    assert (namespace["collect"](), namespace["ROUTE"], namespace["EARLY"]) == (2, 4, 1)


def test_authoring_lines_never_reach_the_package() -> None:
    source = ("def f():\n    ### BEGIN SOLUTION\n    # STUB: return None\n    return 1\n    ### END SOLUTION\n"
              "# NBVAL_CHECK_OUTPUT\n")
    assert export.clean_code(source) == "def f():\n    return 1"


def test_names_a_cell_defines() -> None:
    code = ("import json\nfrom x import y as z\nA, (B, *C) = 1, (2, 3)\nclass K: pass\nasync def g(): pass\n"
            "if True:\n    D = 1\ntry:\n    E = 1\nexcept Exception:\n    F = 1\nx: int = 3\n")
    assert export.defined_names(code) == ["json", "z", "A", "B", "C", "K", "g", "D", "E", "F", "x"]


@pytest.mark.parametrize("line, message", [
    ("", "usage: %%export MODULE"), ("a b c", "usage: %%export MODULE"),
])
def test_a_bad_magic_line_says_how_to_write_it(line: str, message: str) -> None:
    with pytest.raises(export.ExportError, match=message):
        export.parse_magic_line(line)


@pytest.mark.parametrize("module, part", [("Engine", "main"), ("myserver.engine", "main"), ("engine", "a b")])
def test_bad_names_are_refused(tmp_path: Path, module: str, part: str) -> None:
    with pytest.raises(export.ExportError):
        export.write_part(module, part, "03_x", "X = 1", tmp_path)


# ---- the magic, in a real IPython shell -----------------------------------------------------------

def test_the_magic_exports_runs_from_the_package_and_rebinds(tmp_path: Path, clean_imports: None,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        export.start_session("03_demo", tmp_path)
        assert shell.run_cell("%%export helpers\nVALUE = 1\ndef double(x):\n    return 2 * x\n").success
        assert "myserver/helpers.py: part 'main' added" in capsys.readouterr().out
        assert shell.user_ns["double"](4) == 8
        assert shell.user_ns["double"].__module__ == "myserver.helpers", "the notebook calls the package's code"
        assert shell.run_cell("%%export helpers\nVALUE = 2\ndef double(x):\n    return x + x\n").success
        assert "part 'main' updated" in capsys.readouterr().out
        text = (tmp_path / "myserver" / "helpers.py").read_text()
        assert text.count("def double") == 1 and "VALUE = 2" in text
        assert shell.run_cell("%%export other\nfrom .helpers import VALUE as SEEN\n").success
        assert shell.user_ns["SEEN"] == 2
        before = (tmp_path / "myserver" / "helpers.py").read_text()
        result = shell.run_cell("%%export helpers\ndef broken(:\n")
        assert not result.success and isinstance(result.error_in_exec, SyntaxError)
        assert (tmp_path / "myserver" / "helpers.py").read_text() == before, "a syntax error writes nothing"
        export.start_session("02_earlier", tmp_path)
        assert shell.run_cell("%%export helpers\nVALUE = 0\n").success
        assert "kept as lab 03_demo rewrote it" in capsys.readouterr().out
        assert shell.user_ns["VALUE"] == 2, "the notebook sees what the server runs"
    finally:
        InteractiveShell.clear_instance()


def test_exporting_notebooks_is_what_running_them_writes_and_is_idempotent(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--solutions", "03", "--to", str(tmp_path)]) == 0
    assert "modules from 3 notebooks" in capsys.readouterr().out
    files = {p: p.read_bytes() for p in (tmp_path / "myserver").rglob("*.py")}
    assert {p.name for p in files} >= {"app.py", "engine.py", "errors.py", "worker.py", "__main__.py", "models.py"}
    assert main(["export", "--solutions", "03", "--to", str(tmp_path)]) == 0
    assert {p: p.read_bytes() for p in (tmp_path / "myserver").rglob("*.py")} == files
    assert main(["export"]) == 2


# ---- checks that plug a scripted engine into the learner's package -----------------------------------

def package(root: Path, upto: str, patch: tuple[str, str, str] | None = None) -> None:
    """The solutions' package up to lab ``upto``, importable; ``patch`` (file, old, new) breaks it."""
    export.export_notebooks([p for p in sorted(SOLUTIONS.glob("*.ipynb")) if p.stem[:2] <= upto], root)
    if patch:
        path = export.package_dir(root) / patch[0]
        text = path.read_text()
        assert patch[1] in text, f"the solution changed: {patch[1]!r} is not in {patch[0]}"
        path.write_text(text.replace(patch[1], patch[2]))
    export.start_session("99_test", root)


def test_the_worker_check_refuses_a_call_on_the_event_loop(tmp_path: Path, clean_imports: None) -> None:
    package(tmp_path, "03")
    fastapi_basics.worker(package_module("worker").Worker)
    export.forget_package()
    package(tmp_path / "wrong", "03", ("worker.py", "return await asyncio.wrap_future(self.pool.submit(fn, *args))",
                                        "return fn(*args)"))
    with pytest.raises(LabCheckFailed, match="ran on the event loop's own thread"):
        fastapi_basics.worker(package_module("worker").Worker)


def test_the_startup_check_refuses_a_lifespan_that_waits_for_the_model(tmp_path: Path, clean_imports: None) -> None:
    package(tmp_path, "03", ("app.py", "loading = asyncio.create_task(app.state.worker.run(app.state.engine.load))",
                             "loading = asyncio.create_task(asyncio.sleep(0))\n"
                             "    await app.state.worker.run(app.state.engine.load)"))
    app = package_module("app").create_app(package_module("settings").Settings(), engine=FakeEngine())
    with TestClient(app) as http, pytest.raises(LabCheckFailed, match="waited for the load before its yield"):
        fastapi_basics.startup(http)


def test_the_cancellation_check_sees_a_worker_that_ignores_the_flag(tmp_path: Path, clean_imports: None) -> None:
    package(tmp_path, "04")
    streaming.cancellation()
    export.forget_package()
    package(tmp_path / "wrong", "04", ("worker.py", "if generation.cancelled.is_set():", "if False:"))
    with pytest.raises(LabCheckFailed, match="went on generating for nobody"):
        streaming.cancellation()


def test_the_overload_check_sees_an_unbounded_queue(tmp_path: Path, clean_imports: None) -> None:
    package(tmp_path, "05", ("worker.py", "if self.jobs > self.max_queue:", "if False:"))
    with pytest.raises(LabCheckFailed, match="was queued anyway"):
        errors_check.overload()
