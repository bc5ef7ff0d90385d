"""Provenance of a run: the commit of the code that computed it (logged as ``git_commit``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

# What decides a run's results: the code, its configs and the pinned environment. Files that
# DVC or the runs themselves rewrite (dvc.lock, metrics, reports, params.yaml, whose values
# are logged as params) do not make the commit "-dirty".
SOURCE_PATHSPECS = (
    ":(top,glob)**/*.py",
    ":(top,glob)**/conf/**/*.yaml",
    ":(top,glob)plots/**",
    ":(top)pyproject.toml",
    ":(top)setup.py",
    ":(top)requirements.lock",
)


def git_commit(cwd: str | Path = ".") -> str:
    """HEAD's commit, with "-dirty" when a tracked source file differs from it."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *SOURCE_PATHSPECS],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
