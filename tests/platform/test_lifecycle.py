"""exit_with_parent: a stage process ends when whoever started it is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CHILD = (
    "from detlab.platform.lifecycle import exit_with_parent; exit_with_parent(0.2); "
    "import time; time.sleep(60)"
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:  # a zombie (not yet reaped by init) has ended
            return f.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:  # reaped between the signal and the read
        return False


def test_a_process_exits_soon_after_its_parent_is_killed(tmp_path):
    pidfile = tmp_path / "child.pid"
    # the parent (as dvc would be) starts the watching child, then waits on it
    parent = subprocess.Popen(
        ["bash", "-c", f'{sys.executable} -c "{CHILD}" & echo $! > {pidfile}; wait']
    )
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.05)
    child = int(pidfile.read_text())
    time.sleep(1.0)  # the child's watcher is running
    assert alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    for _ in range(50):
        if not alive(child):
            break
        time.sleep(0.1)
    assert not alive(child), "the child outlived its killed parent by 5 s"


def test_a_stage_watches_its_parent_only_under_dvc(monkeypatch):
    import threading

    from detlab.platform.lifecycle import end_with_dvc

    def watchers() -> int:
        return sum(t.name == "exit-with-parent" for t in threading.enumerate())

    before = watchers()
    monkeypatch.delenv("DVC_STAGE", raising=False)
    end_with_dvc("by hand")  # e.g. under nohup: outlives its shell
    assert watchers() == before
    monkeypatch.setenv("DVC_STAGE", "studies")
    end_with_dvc("under dvc")
    assert watchers() == before + 1


STAGE = """
import os, sys, time
from detlab.platform.lifecycle import end_with_dvc
open(sys.argv[1], "w").write(str(os.getpid()))
end_with_dvc("stage", poll_s=0.2)
time.sleep(60)
"""


def test_a_stage_under_dvc_ends_with_dvc_through_a_surviving_dash(tmp_path):
    """dvc runs a stage's cmd with `/bin/sh -c` when SHELL is unset (as in CI): dash does not
    exec the command and outlives dvc's SIGKILL, so the stage must watch past the shell."""
    script, pidfile = tmp_path / "stage.py", tmp_path / "stage.pid"
    script.write_text(STAGE)
    dvc = subprocess.Popen(  # stands in for dvc: runs the cmd through dash, then waits
        [sys.executable, "-c", "import subprocess, sys; subprocess.run(['dash', '-c', sys.argv[1]])",
         f"{sys.executable} {script} {pidfile} "],
        env={**os.environ, "DVC_STAGE": "studies"},
    )  # fmt: skip
    for _ in range(200):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.05)
    stage = int(pidfile.read_text())
    shell = int(Path(f"/proc/{stage}/stat").read_text().rsplit(") ", 1)[1].split()[1])
    assert Path(f"/proc/{shell}/comm").read_text().strip() == "dash"  # dash stayed in between
    time.sleep(1.0)
    assert alive(stage)
    dvc.send_signal(signal.SIGKILL)
    dvc.wait()
    for _ in range(50):
        if not alive(stage):
            break
        time.sleep(0.1)
    assert not alive(stage), "the stage outlived dvc by 5 s (watching the shell, not dvc?)"
    for _ in range(50):  # and the shell, whose only child ended, ends too
        if not alive(shell):
            break
        time.sleep(0.1)
    assert not alive(shell)


def test_a_worker_whose_parent_died_before_it_started_exits_at_once():
    """A pool worker that reaches its initializer after the pool's process died has been
    re-parented (to init): it must not wait for init's death, it exits at once."""
    from detlab.platform.lifecycle import ORPHANED

    code = (
        "from detlab.platform.lifecycle import exit_with_parent; "
        f"exit_with_parent(0.2, expected={os.getpid() + 10**6}); "  # not this child's parent
        "import time; time.sleep(60)"
    )
    t0 = time.time()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == ORPHANED and time.time() - t0 < 30
    assert "ended before this one started" in done.stderr
    same = subprocess.run(
        [sys.executable, "-c", code.replace(f"{os.getpid() + 10**6}", str(os.getpid())).replace(
            "time.sleep(60)", "print('ran')")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert same.returncode == 0 and same.stdout.strip() == "ran"
