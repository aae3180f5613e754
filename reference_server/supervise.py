"""A parent process that outlives a native crash long enough to say what happened.

When llama.cpp faults (SIGSEGV, SIGILL, ...) the Python process dies at once: no exception, no
log line, and the client only sees a dropped connection. ``faulthandler`` (enabled in the
server) still prints the Python stack, but nothing inside a dying process can reliably print
more. So on POSIX the ``reference-server`` command runs the server as a child and waits; if the
child dies of a signal, the parent prints one line naming the likely cause and the
troubleshooting section, and exits with 128 + the signal number, as a shell would.

The parent forwards SIGTERM and SIGHUP to the child and ignores SIGINT (Ctrl-C reaches the
whole process group, so the child already has it). The child asks the kernel to send it
SIGTERM if the parent dies (Linux), so it is never left behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

CHILD_ENV = "REFERENCE_SERVER_SUPERVISED"
FATAL = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT}


def is_child() -> bool:
    return os.environ.get(CHILD_ENV) == str(os.getppid())


def run(command: Sequence[str]) -> int:
    """Runs ``command`` as the supervised child; returns the exit status to exit with."""
    from .backends.local.native import crash_hint

    env = {**os.environ, CHILD_ENV: str(os.getpid())}
    child = subprocess.Popen(list(command), env=env)
    forward = lambda signum, _frame: child.send_signal(signum)  # noqa: E731
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    code = child.wait()
    if code < 0 and -code in FATAL:
        print(crash_hint(signal.Signals(-code).name), file=sys.stderr, flush=True)
    return 128 - code if code < 0 else code


def die_with_parent() -> None:
    """In the child: SIGTERM when the supervisor goes away (Linux's PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
    if not is_child():  # the parent died before prctl
        os.kill(os.getpid(), signal.SIGTERM)
