"""Process lifetime: long-running stage processes and their pool workers end with whoever
started them.

``kill -9`` of ``dvc repro`` (or of a stage's main process) cannot be caught, and Linux does
not end the children with it: the stage's python and its pool workers would run on as
orphans, writing outputs nobody waits for. ``exit_with_parent()`` starts a daemon thread that
watches the parent pid and exits the process once the parent is gone (re-parented to init or
a subreaper). Polling, not ``prctl(PR_SET_PDEATHSIG)``: that fires when the parent *thread*
that forked us exits, which is not the parent process dying.
"""

from __future__ import annotations

import os
import sys
import threading
import time

ORPHANED = 70  # exit status of a process whose parent died


def exit_with_parent(poll_s: float = 2.0, what: str = "") -> threading.Thread:
    """Exit this process (status ``ORPHANED``) within ``poll_s`` seconds of its parent's
    death. Call once, early; pool workers call it from their initializer."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                print(f"{what or sys.argv[0]}: parent process {parent} ended; exiting",
                      file=sys.stderr, flush=True)  # fmt: skip
                os._exit(ORPHANED)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def end_with_dvc(what: str) -> None:
    """A stage's main process: under ``dvc repro`` (which sets ``DVC_STAGE``), end with dvc.
    Run by hand (say under ``nohup``), the stage outlives its shell as usual."""
    if os.environ.get("DVC_STAGE"):
        exit_with_parent(what=what)
