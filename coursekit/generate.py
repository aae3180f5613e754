"""Labs are generated from solutions: one source, two notebooks, as nbgrader does it.

In a solution's code cell, the lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION``
are the answer. In the lab they become a stub that runs without raising, so an unsolved lab
executed top to bottom fails only in its check cells:

* lines ``# STUB: <code>`` inside the region become ``<code>`` (at the indentation of the ``#``);
* a region without STUB lines becomes ``...  # TODO: your code here``.

In a markdown cell, a region becomes ``*Your answer here.*``. Lab cells lose their outputs,
execution counts and ``# NBVAL_...`` directives; cells tagged ``check`` are made read-only.
The JSON is written deterministically, so generating twice gives identical bytes and
``coursekit labs --check`` can diff the committed labs against a fresh generation.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
DEFAULT_CODE_STUB = "...  # TODO: your code here"
DEFAULT_MARKDOWN_STUB = "*Your answer here.*"
CHECK_TAG = "check"

_BEGIN_RE = re.compile(r"^(\s*)### BEGIN SOLUTION\b")
_END_RE = re.compile(r"^(\s*)### END SOLUTION\b")
_STUB_RE = re.compile(r"^(\s*)# STUB:(?: (.*)|)$")
_NBVAL_RE = re.compile(r"^\s*# NBVAL_[A-Z_]+\s*$")
_KEPT_CELL_METADATA = ("tags", "jupyter")  # jupyter: a given cell shown collapsed


class GenerationError(ValueError):
    """A solution notebook the generator cannot turn into a lab (it names the cell and line)."""


@dataclass(frozen=True)
class Where:
    notebook: str
    cell: int
    cell_id: str | None

    def __str__(self) -> str:
        name = f" (id {self.cell_id!r})" if self.cell_id else ""
        return f"{self.notebook}, cell {self.cell}{name}"


def _source(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def strip_solutions(source: str, *, markdown: bool = False, where: Where | str = "<source>") -> str:
    """The lab version of one cell's source."""
    out: list[str] = []
    region: list[str] | None = None  # stub lines collected inside the current region
    indent = ""
    begin_line = 0
    for number, line in enumerate(source.split("\n"), start=1):
        if (m := _BEGIN_RE.match(line)) is not None:
            if region is not None:
                raise GenerationError(f"{where}, line {number}: '{BEGIN}' inside another solution region "
                                      f"(opened on line {begin_line}); close it with '{END}' first")
            region, indent, begin_line = [], m.group(1), number
        elif (m := _END_RE.match(line)) is not None:
            if region is None:
                raise GenerationError(f"{where}, line {number}: '{END}' without a matching '{BEGIN}'")
            if markdown:
                out.append(indent + DEFAULT_MARKDOWN_STUB)
            else:
                out.extend(region or [indent + DEFAULT_CODE_STUB])
            region = None
        elif (m := _STUB_RE.match(line)) is not None and not markdown:
            if region is None:
                raise GenerationError(f"{where}, line {number}: '# STUB:' outside a solution region "
                                      "(it would be lost; put it between the markers)")
            region.append((m.group(1) + (m.group(2) or "")).rstrip())
        elif region is None and not (not markdown and _NBVAL_RE.match(line)):
            out.append(line)
    if region is not None:
        raise GenerationError(f"{where}, line {begin_line}: '{BEGIN}' is never closed with '{END}'")
    return "\n".join(out).strip("\n")


def _lines(text: str) -> list[str]:
    """Jupyter's on-disk form of a source: a list of lines that keep their newlines."""
    return text.splitlines(keepends=True)


def lab_notebook(solution: dict[str, Any], *, name: str = "<notebook>",
                 source_path: str | None = None) -> dict[str, Any]:
    """The lab generated from a solution notebook (both as plain JSON dicts)."""
    if solution.get("nbformat") != 4:
        raise GenerationError(f"{name}: only nbformat 4 notebooks are supported")
    cells = []
    for index, cell in enumerate(solution.get("cells", [])):
        kind = cell.get("cell_type")
        where = Where(name, index, cell.get("id"))
        new: dict[str, Any] = {"cell_type": kind}
        if "id" in cell:
            new["id"] = cell["id"]
        tags = list(cell.get("metadata", {}).get("tags", []))
        metadata = {key: copy.deepcopy(value) for key, value in cell.get("metadata", {}).items()
                    if key in _KEPT_CELL_METADATA}
        if kind == "code":
            new["source"] = _lines(strip_solutions(_source(cell), where=where))
            new["outputs"] = []
            new["execution_count"] = None
            if CHECK_TAG in tags:  # checks are the course's, not the learner's (nbgrader locks them too)
                metadata.update(editable=False, deletable=False)
        elif kind == "markdown":
            new["source"] = _lines(strip_solutions(_source(cell), markdown=True, where=where))
            if "attachments" in cell:
                new["attachments"] = copy.deepcopy(cell["attachments"])
        elif kind == "raw":
            new["source"] = _lines(_source(cell))
        else:
            raise GenerationError(f"{where}: unknown cell type {kind!r}")
        new["metadata"] = metadata
        cells.append(new)
    meta = solution.get("metadata", {})
    metadata: dict[str, Any] = {
        "kernelspec": copy.deepcopy(meta.get("kernelspec", {"display_name": "Python 3 (ipykernel)",
                                                               "language": "python", "name": "python3"})),
        "language_info": {"name": meta.get("language_info", {}).get("name", "python")},
        "coursekit": {"generated_from": source_path or name,
                      "note": "Generated by `python -m coursekit labs`: edit the solution, not this file."},
    }
    return {"cells": cells, "metadata": metadata, "nbformat": 4,
            "nbformat_minor": max(5, solution.get("nbformat_minor", 5))}


def dumps(notebook: dict[str, Any]) -> str:
    """Deterministic JSON in the layout Jupyter itself writes (indent 1, sorted keys)."""
    return json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def render_lab(solution_path: Path, *, relative_to: Path | None = None) -> str:
    """The exact text of the lab generated from ``solution_path``."""
    shown = solution_path.relative_to(relative_to).as_posix() if relative_to else solution_path.name
    try:
        solution = json.loads(solution_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise GenerationError(f"{shown}: not valid notebook JSON: {exc}") from exc
    lab = lab_notebook(solution, name=shown, source_path=shown)
    _validate(lab, shown)
    return dumps(lab)


def _validate(lab: dict[str, Any], name: str) -> None:
    import nbformat  # installed with the labs and test extras; the generator can run without it

    try:
        nbformat.validate(nbformat.from_dict(copy.deepcopy(lab)))
    except nbformat.ValidationError as exc:
        raise GenerationError(f"{name}: the generated lab is not a valid notebook: {exc.message}") from exc


@dataclass
class Result:
    written: list[Path]
    unchanged: list[Path]
    stale: list[tuple[Path, str]]  # (lab, short diff)
    orphans: list[Path]            # labs without a solution

    @property
    def ok(self) -> bool:
        return not self.stale and not self.orphans


def generate(solutions: Path, labs: Path, *, check: bool = False, root: Path | None = None) -> Result:
    """Writes ``labs/<name>.ipynb`` for every ``solutions/<name>.ipynb`` (or, with ``check``,
    only compares)."""
    result = Result([], [], [], [])
    sources = sorted(solutions.glob("*.ipynb"))
    if not sources:
        raise GenerationError(f"no solution notebooks in {solutions}")
    if not check:
        labs.mkdir(parents=True, exist_ok=True)
    for source in sources:
        text = render_lab(source, relative_to=root)
        target = labs / source.name
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current == text:
            result.unchanged.append(target)
        elif check:
            result.stale.append((target, _diff(current or "", text, target)))
        else:
            target.write_text(text, encoding="utf-8")
            result.written.append(target)
    names = {source.name for source in sources}
    result.orphans = sorted(lab for lab in labs.glob("*.ipynb") if lab.name not in names)
    return result


def _diff(current: str, expected: str, target: Path, limit: int = 40) -> str:
    lines = list(difflib.unified_diff(current.splitlines(), expected.splitlines(),
                                      f"{target} (committed)", f"{target} (generated)", lineterm="", n=1))
    if len(lines) > limit:
        lines = lines[:limit] + [f"... ({len(lines) - limit} more diff lines)"]
    return "\n".join(lines)
