"""Checks that speak to the learner.

A check cell calls a function decorated with :func:`check`. On success it prints one ``✅``
line; on failure it raises :class:`LabCheckFailed`, whose message says what is wrong, gives a
hint and names the chapter section to reread. In Jupyter the exception renders as that
message alone (IPython's ``_render_traceback_`` protocol), yet the cell still counts as
failed, so "Run all" stops there and nbclient/nbval see the error.

Every result is remembered for the session; the checkpoint record reports which checks
passed and which failed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: name -> passed? (the latest run of each check in this kernel)
RESULTS: dict[str, bool] = {}

#: name -> how many times the check failed in this kernel: graded hints give the nudge first
FAILURES: dict[str, int] = {}

#: name -> the concrete hint of its latest failure (what ``hint()`` shows)
CONCRETE: dict[str, str] = {}


@dataclass(frozen=True)
class Section:
    """A section of a chapter in ``course/``; feedback sends the learner there."""

    chapter: str  # file stem, e.g. "01-api-design"
    title: str    # heading text, e.g. "Status codes"

    @property
    def path(self) -> str:
        return f"course/{self.chapter}.md"

    @property
    def anchor(self) -> str:
        return slugify(self.title)

    @property
    def link(self) -> str:
        """Relative to ``labs/``, where the notebooks run."""
        return f"../{self.path}#{self.anchor}"

    def __str__(self) -> str:
        return f'{self.path}, section "{self.title}" ({self.link})'


def slugify(title: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc) gives a heading."""
    title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", title).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


class LabCheckFailed(Exception):
    """A check did not pass. ``str()`` is the whole learner-facing message."""

    def __init__(self, check: str, what: str, *, hint: str, section: Section,
                 details: Sequence[str] = ()) -> None:
        self.check, self.what, self.hint, self.section = check, what, hint, section
        self.details = list(details)
        super().__init__(self.message)

    @property
    def message(self) -> str:
        lines = [f"❌ {self.check}: {self.what}"]
        lines += [f"   • {detail}" for detail in self.details]
        lines.append(f"💡 Hint: {self.hint}")
        lines.append(f"📖 Reread: {self.section}")
        return "\n".join(lines)

    def _render_traceback_(self) -> list[str]:
        """IPython shows these lines instead of a traceback."""
        return self.message.split("\n")


class Mismatch(Exception):
    """Raised inside a check function; :func:`check` turns it into :class:`LabCheckFailed`."""

    def __init__(self, what: str, *, hint: str | None = None, details: Sequence[str] = (),
                 section: Section | None = None) -> None:
        super().__init__(what)
        self.what, self.hint, self.details, self.section = what, hint, list(details), section


def passed(name: str, message: str) -> None:
    RESULTS[name] = True
    print(f"✅ {message}")


def _failed(error: LabCheckFailed) -> LabCheckFailed:
    RESULTS[error.check] = False
    return error


def describe(exc: BaseException) -> str:
    text = str(exc).strip().split("\n")[0]
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _graded(name: str, nudge: str | None, concrete: str, call: str) -> str:
    """The hint a failure shows: with a nudge, the nudge the first time, the concrete shape after.

    A learner who reads the shape at once copies it without meeting the idea; the nudge names the
    idea (the section to reread is printed under it), and the shape waits for a second try or
    for ``hint(check)``.
    """
    CONCRETE[name] = concrete
    FAILURES[name] = FAILURES.get(name, 0) + 1
    if nudge is None or FAILURES[name] > 1:
        return concrete
    return f"{nudge}\n   (stuck? run the check again after a try, or check.hint({call}), for a more concrete hint)"


def hint(which: Any) -> None:
    """Prints the concrete hint of a check (the function, or its name): the second grade, on request."""
    name = getattr(which, "check_name", which)
    text = CONCRETE.get(name) or getattr(which, "concrete_hint", None)
    FAILURES[name] = max(FAILURES.get(name, 0), 1)
    print(f"💡 {name}: {text}" if text else f"no hint for {which!r}: pass one of the lab's checks")


def check(name: str, *, section: Section, hint: str, nudge: str | None = None) -> Callable[[F], F]:
    """Makes a function a learner-facing check.

    The function raises :class:`Mismatch` for a wrong answer and returns the success line.
    If the learner's code raises while being checked, that becomes the feedback too. With a
    ``nudge`` (the concept, in a sentence, never code) the hints are graded: see :func:`_graded`.
    """
    def decorate(fn: F) -> F:
        call = f"check.{fn.__name__}"

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> None:
            try:
                message = fn(*args, **kwargs)
            except Mismatch as m:
                raise _failed(LabCheckFailed(name, m.what, hint=_graded(name, nudge, m.hint or hint, call),
                                             section=m.section or section, details=m.details)) from None
            except LabCheckFailed as error:
                raise _failed(error) from None
            except Exception as exc:  # the learner's code broke while we ran it
                raise _failed(LabCheckFailed(name, f"your code raised {describe(exc)}",
                                             hint=_graded(name, nudge, hint, call), section=section)) from exc
            passed(name, message or name)
        run.concrete_hint, run.nudge = hint, nudge  # type: ignore[attr-defined]
        run.check_name = name  # type: ignore[attr-defined]
        run.section = section  # type: ignore[attr-defined]
        return run  # type: ignore[return-value]
    return decorate


@contextlib.contextmanager
def expecting(name: str, *, section: Section, hint: str, success: str | None = None) -> Iterator[None]:
    """For a check written in the cell itself: any exception (an ``assert`` too) becomes feedback."""
    try:
        yield
    except LabCheckFailed as error:
        raise _failed(error) from None
    except Mismatch as m:
        raise _failed(LabCheckFailed(name, m.what, hint=m.hint or hint, section=m.section or section,
                                     details=m.details)) from None
    except AssertionError as exc:
        raise _failed(LabCheckFailed(name, str(exc) or "an assertion failed", hint=hint,
                                     section=section)) from None
    except Exception as exc:
        raise _failed(LabCheckFailed(name, describe(exc), hint=hint, section=section)) from exc
    passed(name, success or name)


# ---- JSON Schemas ----------------------------------------------------------------------------

def json_path(path: Any) -> str:
    """``['choices', 0, 'message']`` -> ``choices[0].message`` (the ``schemas`` package's style;
    ``$`` is the root); a string is kept as it is."""
    if isinstance(path, str):
        return path or "$"
    out = ""
    for part in path or ():
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "$"


def schema_problems(instance: Any, name: str) -> list[str]:
    """Every way ``instance`` breaks ``schemas/<name>``, one line each, starting with its JSON path.

    The order is the ``schemas`` package's (by path), so the output is deterministic.
    """
    import schemas

    out = []
    for p in schemas.validate(instance, name):
        path = p.path or "$"
        line = p.message if p.message.startswith(path) else f"{path}: {p.message}"
        if line not in out:
            out.append(line)
    return out


def verdict(instance: Any, name: str) -> None:
    """Prints whether ``instance`` is a valid ``name``, then each problem (deterministic output).

    It prints rather than returns, so a notebook cell shows the verdict and nothing else;
    ``schema_problems`` gives the list.
    """
    problems = schema_problems(instance, name)
    if not problems:
        print(f"✅ valid {name}")
        return
    print(f"❌ not a valid {name}: {len(problems)} problem{'s' if len(problems) > 1 else ''}")
    for line in problems:
        print(f"   • {line}")


def require_schema(instance: Any, name: str, *, what: str | None = None, hint: str | None = None) -> None:
    """Raises :class:`Mismatch` listing each schema problem with its JSON path."""
    if not isinstance(instance, dict):
        raise Mismatch(f"{what or 'it'} should be a dict (a JSON object), got {type_name(instance)}",
                       hint=hint)
    problems = schema_problems(instance, name)
    if problems:
        raise Mismatch(f"{what or 'it'} is not a valid {name} ({len(problems)} "
                       f"problem{'s' if len(problems) > 1 else ''})", details=problems, hint=hint)


def type_name(value: Any) -> str:
    if value is None:
        return "None (did the function forget to return?)"
    return type(value).__name__


def short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, default=repr, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit - 3] + "..."
