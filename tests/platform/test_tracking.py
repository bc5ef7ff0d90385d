"""The commit recorded with each run: "-dirty" only when a source file differs from HEAD."""

from __future__ import annotations

import subprocess

import pytest

from detlab.platform.tracking import git_commit


def git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path):
    for rel in ("pkg/train.py", "sweeps/conf/method/a.yaml", "dvc.lock", "params.yaml",
                "metrics/cell.json", "requirements.lock"):  # fmt: skip
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("v1\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    return tmp_path


def test_files_written_by_dvc_and_runs_do_not_dirty_the_commit(repo):
    clean = git_commit(repo)
    assert len(clean) == 40 and not clean.endswith("-dirty")
    for rel in ("dvc.lock", "params.yaml", "metrics/cell.json"):
        (repo / rel).write_text("v2\n")
    (repo / "pkg/new_untracked.py").write_text("x = 1\n")
    assert git_commit(repo) == clean
    assert git_commit(repo / "pkg") == clean  # from a subfolder too


@pytest.mark.parametrize("rel", ["pkg/train.py", "sweeps/conf/method/a.yaml", "requirements.lock"])
def test_an_edited_source_file_dirties_the_commit(repo, rel):
    clean = git_commit(repo)
    (repo / rel).write_text("v2\n")
    assert git_commit(repo) == clean + "-dirty"


def test_outside_a_repository_the_commit_is_unknown(tmp_path):
    assert git_commit(tmp_path) == "unknown"
