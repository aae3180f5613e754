"""Loaded for ``tests/`` and ``solutions/`` alike: no test writes into the learner's files.

Every notebook kernel a test starts records into a temporary checkpoint log and exports its
``%%export`` cells into a temporary package (``$COURSE_PACKAGE_DIR``), never into the
repository's ``myserver/``. nbval runs each solution in a kernel of its own: before that kernel
starts, the package holds exactly what the earlier labs' solutions export, as if the learner had
done them, so a notebook can run alone (``pytest solutions/05_errors.ipynb``) as well as in order.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("COURSE_CHECKPOINT_LOG", str(Path(tempfile.mkdtemp()) / "checkpoints.jsonl"))
    os.environ.setdefault("COURSE_PACKAGE_DIR", tempfile.mkdtemp(prefix="course-package-"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    notebook = item.parent
    if type(notebook).__name__ != "IPyNbFile" or getattr(notebook, "kernel", None) is not None:
        return  # not nbval, or its kernel is already running
    from coursekit import export

    path = Path(str(notebook.fspath))
    root = Path(tempfile.mkdtemp(prefix=f"course-package-{path.stem}-"))
    export.export_notebooks(export.labs_before(path.stem, path.parent), root)
    os.environ["COURSE_PACKAGE_DIR"] = str(root)
