"""Your server package: ``%%export`` cells of the labs write ``myserver/``, part by part.

A code cell that starts with ``%%export MODULE [PART]`` is saved as part ``PART`` (default
``main``) of ``myserver/MODULE.py`` (a dot is a folder: ``routers.chat`` is
``myserver/routers/chat.py``). The cell then runs *as that module*: the package is imported and
the names the cell defines are bound in the notebook from it, so what the lab's checks call is
exactly what your server runs. d2l.ai's ``#@save`` and nbdev's ``#| export`` do the same for
their books.

* **Idempotent.** Running a cell again replaces its part in place; nothing is appended twice.
* **Later labs extend, and may upgrade.** A lab adds parts, and a later lab may replace a part
  of an earlier one under the same name (lab 4's ``routers.chat route`` streams; lab 3's did
  not). Re-running the earlier lab then leaves the later version in place, and says so.
* **Yours.** The package is not committed (``.gitignore``), and ``coursekit labs`` never
  touches it. ``$COURSE_PACKAGE_DIR`` moves it (tests export into a temporary folder).
* **Rebuildable.** ``coursekit export NOTEBOOK...`` writes the parts of notebooks without
  running them, as nbdev_export does: the same files, byte for byte, as running their cells.

A module file is a header the exporter writes, then the parts in lab order, each between
two marker lines. Edit the cells, not the files: the next export rewrites them.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGE = "myserver"
PACKAGE_DIR_ENV = "COURSE_PACKAGE_DIR"  # the folder that holds myserver/ (default: the repository root)
DEFAULT_PART = "main"

_MODULE_RE = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$")
_PART_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_BEGIN = re.compile(r"^# >>> part (?P<part>\S+) · lab (?P<lab>\S+)\b.*$")
_END = re.compile(r"^# <<< part (?P<part>\S+)\s*$")
# Lines that belong to the course's sources, not to the code: solution markers, stub lines, nbval.
_AUTHORING = re.compile(r"^\s*(### (BEGIN|END) SOLUTION\b.*|# STUB:.*|# NBVAL_[A-Z_]+)\s*$")


class ExportError(ValueError):
    """A cell or a command the exporter cannot follow; the message says why and what to do."""


# ---- where the package lives -------------------------------------------------------------------

def package_root() -> Path:
    """The folder that holds ``myserver/``: ``$COURSE_PACKAGE_DIR``, else the repository root."""
    if os.environ.get(PACKAGE_DIR_ENV):
        return Path(os.environ[PACKAGE_DIR_ENV]).expanduser().resolve()
    from .checkpoint import repository_root

    return repository_root()


def package_dir(root: Path | None = None) -> Path:
    return (root or package_root()) / PACKAGE


def module_path(module: str, root: Path | None = None) -> Path:
    return package_dir(root).joinpath(*module.split(".")).with_suffix(".py")


# ---- a module file as parts ----------------------------------------------------------------------

@dataclass
class Part:
    name: str
    lab: str
    code: str


def _header(module: str) -> str:
    return (f'"""{PACKAGE}.{module}: written by you, in the labs.\n\n'
            "Each part below comes from an `%%export` cell; running the cell again replaces its part.\n"
            'Edit the cells in the labs, not this file: the next export rewrites it."""\n')


def read_parts(path: Path) -> list[Part]:
    """The parts of a module file, in file order (text outside the markers is the header)."""
    if not path.exists():
        return []
    parts: list[Part] = []
    current: Part | None = None
    lines: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if current is None:
            if (m := _BEGIN.match(line)) is not None:
                current, lines = Part(m["part"], m["lab"], ""), []
        elif (m := _END.match(line)) is not None and m["part"] == current.name:
            current.code = "\n".join(lines).strip("\n")
            parts.append(current)
            current = None
        else:
            lines.append(line)
    if current is not None:
        raise ExportError(f"{path}: part {current.name!r} has no end marker; delete the file and "
                          "run the labs' %%export cells again (or `coursekit export`)")
    return parts


def render_module(module: str, parts: list[Part]) -> str:
    chunks = [_header(module)]
    for part in parts:
        chunks.append(f"# >>> part {part.name} · lab {part.lab} (%%export {module}"
                      f"{'' if part.name == DEFAULT_PART else ' ' + part.name})\n"
                      f"{part.code}\n# <<< part {part.name}\n")
    return "\n\n".join(chunks)


def clean_code(source: str) -> str:
    """The cell's code as it goes into the module: no authoring lines, no trailing blanks."""
    lines = [line.rstrip() for line in source.splitlines() if not _AUTHORING.match(line)]
    return "\n".join(lines).strip("\n")


def _lab_key(lab: str) -> tuple[str, ...]:
    return (lab,)


@dataclass
class Outcome:
    path: Path
    written: bool        # False: a later lab owns this part, the file was left as it is
    owner: str           # the lab whose version is in the file now
    replaced: bool       # an existing part was replaced (not added)


def write_part(module: str, part: str, lab: str, code: str, root: Path | None = None) -> Outcome:
    """Puts ``code`` into ``myserver/MODULE.py`` as part ``part`` of ``lab``.

    Same part again: replaced in place. A part a *later* lab wrote is kept (the earlier lab's
    cell must not undo the upgrade). A new part goes after the parts of its lab and of earlier
    labs, so a module reads in lab order whatever order the cells ran in.
    """
    if not _MODULE_RE.match(module) or module.split(".")[0] in ("", PACKAGE):
        raise ExportError(f"%%export {module}: a module name is lowercase words joined by dots, "
                          f"inside {PACKAGE}/ (e.g. `engine` or `routers.chat`)")
    if not _PART_RE.match(part):
        raise ExportError(f"%%export {module} {part}: a part name is one word (letters, digits, _ or -)")
    path = module_path(module, root)
    parts = read_parts(path)
    replaced = False
    for existing in parts:
        if existing.name == part:
            if existing.lab > lab:
                return Outcome(path, written=False, owner=existing.lab, replaced=False)
            existing.lab, existing.code, replaced = lab, code, True
            break
    else:
        position = sum(1 for p in parts if p.lab <= lab)
        parts.insert(position, Part(part, lab, code))
    _ensure_packages(path.parent, package_dir(root))
    text = render_module(module, parts)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        tmp = path.with_suffix(".py.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        _drop_bytecode(path)
    return Outcome(path, written=True, owner=lab, replaced=replaced)


def _ensure_packages(folder: Path, top: Path) -> None:
    """Every folder from ``myserver/`` down to ``folder`` is a package (has an ``__init__.py``)."""
    folder.mkdir(parents=True, exist_ok=True)
    current = folder
    while True:
        init = current / "__init__.py"
        if not init.exists():
            name = ".".join([PACKAGE, *current.relative_to(top).parts])
            init.write_text(f'"""{name}: your OpenAI-compatible server, written in the labs '
                            '(`%%export` cells)."""\n', encoding="utf-8")
        if current == top:
            break
        current = current.parent


def _drop_bytecode(path: Path) -> None:
    """A file rewritten within the same second and at the same size would look unchanged to
    Python's bytecode cache (it compares mtime and size), so the cached copy goes."""
    cache = path.parent / "__pycache__"
    for pyc in cache.glob(f"{path.stem}.*.pyc"):
        pyc.unlink(missing_ok=True)


# ---- the cell magic --------------------------------------------------------------------------------

def parse_magic_line(line: str) -> tuple[str, str]:
    words = line.split()
    if not 1 <= len(words) <= 2:
        raise ExportError("usage: %%export MODULE [PART], e.g. `%%export streaming` or `%%export routers.chat route`")
    return words[0], words[1] if len(words) == 2 else DEFAULT_PART


def defined_names(code: str) -> list[str]:
    """Top-level names a cell binds (defs, classes, assignments, imports), in order."""
    names: list[str] = []

    def targets(node: ast.AST) -> Iterable[str]:
        if isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, (ast.Tuple, ast.List)):
            for item in node.elts:
                yield from targets(item)
        elif isinstance(node, ast.Starred):
            yield from targets(node.value)

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.append(node.name)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    names.extend(targets(target))
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                names.extend(targets(node.target))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    if alias.name != "*":
                        names.append(alias.asname or alias.name.split(".")[0])
            elif isinstance(node, ast.If):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.With):
                visit(node.body)

    visit(ast.parse(code).body)
    return list(dict.fromkeys(n for n in names if n != "__future__" and n != "annotations"))


class Session:
    """The notebook side: which lab is running, what the notebook took from the package."""

    def __init__(self, lab: str, root: Path | None = None) -> None:
        self.lab = lab
        self.root = root or package_root()
        self.bound: dict[str, str] = {}  # notebook name -> module it came from

    @property
    def package(self) -> Path:
        return package_dir(self.root)

    def activate(self) -> None:
        """``import myserver`` finds this package, not another one."""
        root = str(self.root)
        if sys.path[:1] != [root]:
            if root in sys.path:
                sys.path.remove(root)
            sys.path.insert(0, root)
        forget_package()
        importlib.invalidate_caches()

    def export(self, module: str, part: str, source: str, namespace: dict[str, Any]) -> Outcome:
        code = clean_code(source)
        if not code:
            raise ExportError(f"%%export {module}: the cell has no code to export")
        try:
            compile(code, f"{PACKAGE}/{module.replace('.', '/')}.py", "exec")
        except SyntaxError as exc:
            exc.filename = f"%%export {module} {part}"  # nothing was written: the cell is at fault
            raise
        outcome = write_part(module, part, self.lab, code, self.root)
        self.activate()
        loaded = importlib.import_module(f"{PACKAGE}.{module}")
        for name in defined_names(code):
            if hasattr(loaded, name):
                namespace[name] = getattr(loaded, name)
                self.bound[name] = module
        self.refresh(namespace)
        return outcome

    def refresh(self, namespace: dict[str, Any]) -> None:
        """Rebinds what earlier cells took from the package to the fresh modules."""
        for name, module in list(self.bound.items()):
            try:
                loaded = importlib.import_module(f"{PACKAGE}.{module}")
            except Exception:  # noqa: BLE001 - a broken module shows up in its own cell
                continue
            if hasattr(loaded, name):
                namespace[name] = getattr(loaded, name)


def forget_package() -> None:
    """Drops every ``myserver`` module from ``sys.modules``: the next import reads the files."""
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
        del sys.modules[name]


_SESSION: Session | None = None


def session() -> Session:
    if _SESSION is None:
        raise ExportError("%%export needs the lab's first code cell: run it (it calls lab.start(...))")
    return _SESSION


def start_session(lab_name: str, root: Path | None = None) -> Session:
    """Starts exporting for ``lab_name`` and registers the ``%%export`` magic in IPython."""
    global _SESSION
    _SESSION = Session(lab_name, root)
    _SESSION.activate()
    _register_magic()
    return _SESSION


def _register_magic() -> None:
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return

    def export(line: str, cell: str) -> None:
        module, part = parse_magic_line(line)
        outcome = session().export(module, part, cell, shell.user_ns)
        shown = outcome.path.relative_to(session().root).as_posix()
        if outcome.written:
            print(f"📦 {shown}: part {part!r} {'updated' if outcome.replaced else 'added'}")
        else:
            print(f"📦 {shown}: part {part!r} kept as lab {outcome.owner} rewrote it; this cell ran, "
                  f"but your server uses lab {outcome.owner}'s version (change it there)")

    export.__doc__ = "%%export MODULE [PART]: save this cell into your server package and run it from there."
    shell.register_magic_function(export, magic_kind="cell", magic_name="export")


# ---- exporting notebooks without running them (nbdev_export) ----------------------------------------

def export_cells(notebook: Path) -> list[tuple[str, str, str]]:
    """(module, part, source) of every ``%%export`` cell of a notebook, in order."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    out = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell.get("source"), list) else cell.get("source", "")
        first, _, rest = source.partition("\n")
        if first.startswith("%%export"):
            module, part = parse_magic_line(first[len("%%export"):])
            out.append((module, part, rest))
    return out


def export_notebooks(notebooks: Iterable[Path], root: Path) -> list[Path]:
    """Writes the parts of ``notebooks`` (lab = file stem) into ``root/myserver/``; the files touched."""
    touched: list[Path] = []
    for notebook in notebooks:
        for module, part, source in export_cells(Path(notebook)):
            code = clean_code(source)
            if code:
                outcome = write_part(module, part, Path(notebook).stem, code, root)
                if outcome.path not in touched:
                    touched.append(outcome.path)
    return touched


def labs_before(lab: str, folder: Path) -> list[Path]:
    """The notebooks of ``folder`` that come before ``lab`` (by name: 01_..., 02_...)."""
    return sorted(p for p in folder.glob("*.ipynb") if p.stem < lab)


def reset(root: Path) -> None:
    """Removes ``root/myserver`` (tests start each lab from a known package)."""
    shutil.rmtree(package_dir(root), ignore_errors=True)
