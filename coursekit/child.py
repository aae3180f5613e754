"""``python -m coursekit.child PACKAGE ARGS...``: runs ``python -m PACKAGE ARGS...`` for a notebook,
and exits when the notebook's kernel is gone.

A server a lab starts must not outlive the lab: if the kernel dies without stopping it (a
restart, a crash), this watchdog sees the parent process change and ends the server.
"""

from __future__ import annotations

import os
import runpy
import sys
import threading
import time


def _watch(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)


def main() -> None:
    package, *args = sys.argv[1:]
    parent = int(os.environ.get("COURSE_PARENT_PID") or os.getppid())
    threading.Thread(target=_watch, args=(parent,), daemon=True, name="parent-watch").start()
    sys.argv = [f"python -m {package}", *args]
    runpy.run_module(package, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
