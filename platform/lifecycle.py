"""Process lifetime: long-running stage processes and their pool workers end with whoever
started them.

``kill -9`` of ``dvc repro`` (or of a stage's main process) cannot be caught, and Linux does
not end the children with it: the stage's python and its pool workers would run on as
orphans, writing outputs nobody waits for. ``exit_with_parent()`` starts a daemon thread that
watches the parent and exits the process once the parent is gone. Polling, not
``prctl(PR_SET_PDEATHSIG)``: that fires when the parent *thread* that forked us exits, which
is not the parent process dying.

dvc runs a stage's ``cmd`` through ``$SHELL -c`` (``/bin/sh`` when ``SHELL`` is unset, as
under CI). bash execs a single command, but dash stays as the stage's parent and survives
dvc's death, so a stage watches its first ancestor that is not a shell: dvc itself.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path


def detlab_home() -> Path:
    """detlab's own files on this machine (job list, spilled tracking records):
    ``$DETLAB_HOME``, default ``~/.detlab``."""
    return Path(os.environ.get("DETLAB_HOME", Path.home() / ".detlab"))


ORPHANED = 70  # exit status of a process whose parent died
SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "mksh", "busybox"})


def _stat(pid: int) -> tuple[str, str, int, int] | None:
    """(command name, state, parent pid, start time) of ``pid``; None once it has ended."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return name, fields[0], int(fields[1]), int(fields[19])


def _watched(through_shells: bool) -> tuple[int, int | None]:
    """The pid to watch (the parent, or the first ancestor that is not a shell) and its start
    time (None where /proc cannot tell, then only the parent pid is compared)."""
    pid = os.getppid()
    stat = _stat(pid)
    while through_shells and stat is not None and stat[0] in SHELLS and stat[2] > 1:
        pid, stat = stat[2], _stat(stat[2])
    return pid, (stat[3] if stat else None)


def _gone(pid: int, started: int | None, parent: int) -> bool:
    if os.getppid() != parent:  # re-parented to init or a subreaper: the parent died
        return True
    if started is None:
        return False
    stat = _stat(pid)  # an ancestor further up: ended, a zombie, or its pid reused
    return stat is None or stat[1] in "ZX" or stat[3] != started


def exit_with_parent(
    poll_s: float = 2.0, what: str = "", through_shells: bool = False, expected: int | None = None
) -> threading.Thread:
    """Exit this process (status ``ORPHANED``) within ``poll_s`` seconds of its parent's
    death (with ``through_shells``, of its first ancestor that is not a shell). Call once,
    early; pool workers call it from their initializer, with ``expected`` the pid of the
    process that started them: a worker reaching its initializer after that one died has
    been re-parented already (to init, whose death it would wait for) and exits at once."""
    parent = os.getppid()
    if expected is not None and parent != expected:
        print(f"{what or sys.argv[0]}: parent process {expected} ended before this one "
              "started; exiting", file=sys.stderr, flush=True)  # fmt: skip
        os._exit(ORPHANED)
    pid, started = _watched(through_shells)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if _gone(pid, started, parent):
                print(f"{what or sys.argv[0]}: parent process {pid} ended; exiting",
                      file=sys.stderr, flush=True)  # fmt: skip
                os._exit(ORPHANED)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def end_with_dvc(what: str, poll_s: float = 2.0) -> None:
    """A stage's main process: under ``dvc repro`` (which sets ``DVC_STAGE``), end with dvc,
    seen through the shell that runs the stage's cmd. Run by hand (say under ``nohup``), the
    stage outlives its shell as usual."""
    if os.environ.get("DVC_STAGE"):
        exit_with_parent(poll_s, what=what, through_shells=True)


def identity() -> dict[str, str]:
    """This process as the owner of a run: host, pid and the pid's start time (so a reused
    pid is not mistaken for the process that opened the run)."""
    pid = os.getpid()
    stat = _stat(pid)
    return {
        "host": socket.gethostname(),
        "pid": str(pid),
        "pid_start": str(stat[3] if stat else ""),
    }


def alive(host: str, pid: int, start: str = "") -> bool | None:
    """Whether the process ``identity()`` described still runs; None when it ran on another
    host (this one cannot tell)."""
    if host != socket.gethostname():
        return None
    stat = _stat(pid)
    return stat is not None and stat[1] not in "ZX" and (not start or str(stat[3]) == start)
