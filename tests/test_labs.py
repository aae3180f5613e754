"""The labs, validated both ways (as nbgrader advises), and in both modes.

* labs/ is exactly what the generator makes of solutions/ (regenerate, then diff);
* an unsolved lab, run top to bottom, fails in every check cell and nowhere else;
* a solution runs without any error and appends a valid checkpoint record;
* each lab starts from the package the earlier labs' solutions export (as a learner who did
  them would have), exports into a temporary folder, and leaves there exactly what exporting
  its cells without running them gives (``coursekit export``);
* in remote mode (``COURSE_BASE_URL``), with llama_cpp impossible to import, every solution that
  takes a path of its own there (``REMOTE_LABS``) still passes, its server forwarding to a
  reference server started here as a real process.

* a solution's cells marked ``# NBVAL_CHECK_OUTPUT`` print what the committed notebook shows (nbval's
  convention: ``pytest --nbval-lax solutions/`` checks the same on its own; the suite compares them
  in the solved run instead of executing every solution a fourth time).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from coursekit import checkpoint, export
from coursekit.generate import CHECK_TAG, generate

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
CELL_TIMEOUT = 120  # seconds; the slowest cell (first model call on a busy machine) takes a few


def _id(path: Path) -> str:
    return path.stem


def execute(path: Path, package: Path, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    """Runs a notebook as Jupyter would, in its own folder, keeping going after errors, with
    ``package`` holding what the solutions of the earlier labs export."""
    export.reset(package)
    export.export_notebooks(export.labs_before(path.stem, ROOT / "solutions"), package)
    monkeypatch.setenv(export.PACKAGE_DIR_ENV, str(package))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", allow_errors=True, record_timing=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def errors(nb: nbformat.NotebookNode) -> dict[str, dict]:
    """cell id -> its error output."""
    return {cell.get("id", str(i)): out for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
            for out in cell.outputs if out.output_type == "error"}


def check_cells(nb: nbformat.NotebookNode) -> list[str]:
    return [cell.get("id") for cell in nb.cells
            if cell.cell_type == "code" and CHECK_TAG in cell.metadata.get("tags", [])]


def stderr_outputs(nb: nbformat.NotebookNode) -> list[str]:
    return [f"{cell.get('id')}: {out.text[:300]!r}" for cell in nb.cells if cell.cell_type == "code"
            for out in cell.outputs if out.output_type == "stream" and out.name == "stderr"]


def records(log: Path) -> list[dict]:
    assert log.exists(), f"no checkpoint log was written at {log}"
    found, problems = checkpoint.read_log(log)
    assert not problems, problems
    return found


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("labs")
    generate(ROOT / "solutions", out, root=ROOT)
    return out


def test_there_are_solutions() -> None:
    assert len(SOLUTIONS) >= 3, "solutions/ lost its notebooks"


def test_labs_and_solutions_pair_up() -> None:
    labs = {p.name for p in (ROOT / "labs").glob("*.ipynb")}
    assert labs == {p.name for p in SOLUTIONS}, "every solution needs its generated lab, and nothing else"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=_id)
def test_lab_is_generated_from_its_solution(solution: Path, generated: Path) -> None:
    committed = (ROOT / "labs" / solution.name).read_bytes()
    assert (generated / solution.name).read_bytes() == committed, (
        f"labs/{solution.name} is not what solutions/{solution.name} generates: "
        "run `python -m coursekit labs` and commit the result")


@pytest.mark.parametrize("solution", SOLUTIONS, ids=_id)
def test_solution_follows_the_lab_conventions(solution: Path) -> None:
    nb = nbformat.read(solution, as_version=4)
    number = solution.stem[:2]
    first = nb.cells[0]
    assert first.cell_type == "markdown" and re.search(rf"\]\(\.\./course/{number}-[a-z0-9-]+\.md\)", first.source), \
        "the first cell must link to the lab's chapter: ](../course/NN-name.md)"
    assert check_cells(nb), "a lab needs check cells (tag 'check')"
    sources = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    assert f'checkpoint.record(lab="{solution.stem}"' in sources, "the lab must end with its checkpoint cell"
    assert "### BEGIN SOLUTION" in sources, "a solution without solution regions gives a lab with nothing to do"
    assert "# NBVAL_CHECK_OUTPUT" not in (ROOT / "labs" / solution.name).read_text(encoding="utf-8")
    for cell in nb.cells:
        if cell.cell_type == "code" and "# NBVAL_CHECK_OUTPUT" in cell.source:
            assert cell.execution_count is not None and cell.outputs, \
                f"cell {cell.get('id')} is compared with its stored output, so the solution must store it"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=_id)
def test_unsolved_lab_fails_only_in_its_checks(solution: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "checkpoints.jsonl"
    monkeypatch.setenv(checkpoint.LOG_ENV, str(log))
    nb = execute(ROOT / "labs" / solution.name, tmp_path / "package", monkeypatch)
    failed, checks = errors(nb), check_cells(nb)
    unexpected = {cid: f"{e.ename}: {e.evalue[:200]}" for cid, e in failed.items() if cid not in checks}
    assert not unexpected, f"cells that are not checks raised in the unsolved lab: {unexpected}"
    passing = [cid for cid in checks if cid not in failed]
    assert not passing, f"check cells that pass on the unsolved lab (they check nothing): {passing}"
    for cid in checks:
        error = failed[cid]
        assert error.ename == "LabCheckFailed", f"{cid} crashed instead of giving feedback: {error.ename}: {error.evalue}"
        assert error.traceback[0].startswith("❌") and not any("Traceback" in line for line in error.traceback), \
            f"{cid} shows a traceback instead of the short message"
        assert any(line.startswith("📖 Reread: course/") for line in error.traceback)
    assert not stderr_outputs(nb), stderr_outputs(nb)
    (rec,) = records(log)
    assert rec["lab"] == solution.stem
    assert rec["checks"]["passed"] == [] and len(rec["checks"]["failed"]) == len(checks)


def assert_passes(solution: Path, nb: nbformat.NotebookNode, log: Path) -> None:
    failed = {cid: f"{e.ename}: {e.evalue[:300]}" for cid, e in errors(nb).items()}
    assert not failed, f"the solution raised: {failed}"
    assert not stderr_outputs(nb), f"something wrote to stderr (llama.cpp logs?): {stderr_outputs(nb)}"
    (rec,) = records(log)
    assert checkpoint.validate_record(rec) == []
    assert rec["lab"] == solution.stem
    assert rec["checks"]["failed"] == []
    assert len(rec["checks"]["passed"]) == len(check_cells(nb)), \
        "each check cell should run one named check, and all of them should pass"
    assert json.dumps(rec["observed"]) not in ("null", "{}", "[]"), "the checkpoint recorded nothing observed"


def shown(cell: nbformat.NotebookNode) -> list[str]:
    """What a cell printed or returned, as nbval compares it (text only; images and ids aside)."""
    found = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            found.append(f"{out.name}: {out.text}")
        elif out.output_type in ("execute_result", "display_data") and "text/plain" in out.get("data", {}):
            found.append(f"{out.output_type}: {out.data['text/plain']}")
        elif out.output_type == "error":
            found.append(f"error: {out.ename}: {out.evalue}")
    return found


def assert_outputs_as_committed(solution: Path, nb: nbformat.NotebookNode) -> None:
    committed = nbformat.read(solution, as_version=4)
    compared = [(old, new) for old, new in zip(committed.cells, nb.cells)
                if old.cell_type == "code" and "# NBVAL_CHECK_OUTPUT" in old.source]
    assert compared or "# NBVAL_CHECK_OUTPUT" not in solution.read_text(encoding="utf-8")
    for old, new in compared:
        assert shown(new) == shown(old), (
            f"cell {old.get('id')} of {solution.name} prints something else than the committed notebook "
            "shows (# NBVAL_CHECK_OUTPUT): re-run the solution and save it, or fix the code")


def package_files(root: Path) -> dict[str, str]:
    folder = export.package_dir(root)
    return {p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8") for p in sorted(folder.rglob("*.py"))}


@pytest.mark.parametrize("solution", SOLUTIONS, ids=_id)
def test_solution_passes_and_records_a_checkpoint(solution: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "checkpoints.jsonl"
    monkeypatch.setenv(checkpoint.LOG_ENV, str(log))
    nb = execute(solution, tmp_path / "package", monkeypatch)
    assert_passes(solution, nb, log)
    assert_outputs_as_committed(solution, nb)
    if export.export_cells(solution):
        exported = tmp_path / "exported"
        export.export_notebooks([*export.labs_before(solution.stem, ROOT / "solutions"), solution], exported)
        assert package_files(tmp_path / "package") == package_files(exported), \
            "running the lab's %%export cells should write what exporting them without running does"


# ---- remote mode ---------------------------------------------------------------------------------

UPSTREAM_KEY = "sk-upstream"
NO_MODEL_LABS = {"02_openai_format"}  # nothing in it runs a model, in either mode
# The labs that take a path of their own in remote mode: lab 1's reference client, lab 3's
# RemoteEngine, pooled vectors (6), grammars built upstream (7), the batching room (8), /api/tags
# without a model file (10), the gateway's upstreams (11). The others reach the model only through
# lab 3's engine interface and lab.serve(), which these runs prove remote; running them remote
# too would cost the suite about 25 s. The guard below keeps the list honest.
REMOTE_LABS = {"01_api_design", "03_fastapi_basics", "06_embeddings", "07_tools", "08_batching",
               "10_providers", "11_scaling_out"}
REMOTE_MARKS = re.compile(r"lab\.REMOTE|remote_url\(|reference_client\(|upstream_url|RemoteEngine|lab\.upstreams\(")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The shared server a room of laptops would point at: the reference server, as a real process."""
    log = tmp_path_factory.mktemp("upstream") / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "reference_server", "--port", "0", "--threads", "1", "--n-ctx", "1024",
             "--api-key", UPSTREAM_KEY], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(r"Ready: \S+ at (http://\S+/v1)", log.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, f"the upstream did not start:\n{log.read_text()}"
            time.sleep(0.1)
        yield found.group(1)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize("solution", [s for s in SOLUTIONS if s.stem not in NO_MODEL_LABS | REMOTE_LABS], ids=_id)
def test_labs_run_only_locally_take_no_remote_path_of_their_own(solution: Path) -> None:
    code = "\n".join(cell.source for cell in nbformat.read(solution, as_version=4).cells if cell.cell_type == "code")
    assert not REMOTE_MARKS.search(code), (f"{solution.name} branches on remote mode: add it to REMOTE_LABS so that "
                                           "the suite runs it in remote mode")


@pytest.mark.parametrize("solution", [s for s in SOLUTIONS if s.stem in REMOTE_LABS], ids=_id)
def test_solution_passes_in_remote_mode(solution: Path, upstream: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A laptop that cannot run llama.cpp: llama_cpp cannot even be imported, in the kernel or in the
    learner's server; the server's engine forwards to the upstream through the same seam."""
    blocker = tmp_path / "no-llama-cpp" / "llama_cpp"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ImportError("llama_cpp is not installed (remote-mode test)")\n')
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(blocker.parent), str(ROOT),
                                                                  os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("COURSE_BASE_URL", upstream)
    monkeypatch.setenv("COURSE_API_KEY", UPSTREAM_KEY)
    log = tmp_path / "checkpoints.jsonl"
    monkeypatch.setenv(checkpoint.LOG_ENV, str(log))
    nb = execute(solution, tmp_path / "package", monkeypatch)
    assert_passes(solution, nb, log)
