"""The run and job states are string enums that stand in for the strings they replace."""

from __future__ import annotations

import json
import subprocess
import sys

from detlab.platform.states import (
    ENDED,
    FINAL,
    STATE_TAG,
    JobState,
    RunState,
    RunStatus,
    TrainStatus,
)


def test_members_are_the_strings_they_replace():
    assert TrainStatus.STOPPED == "stopped" and TrainStatus.COMPLETED == "completed"
    assert "halted" in {TrainStatus.HALTED} and {"KILLED": 1}[RunStatus.KILLED] == 1
    assert f"{RunStatus.RUNNING}" == "RUNNING" and f"{JobState.UNKNOWN:<9}|" == "UNKNOWN  |"
    assert json.dumps({"s": TrainStatus.COMPLETED}) == '{"s": "completed"}'
    assert (STATE_TAG, RunState.REQUEUED) == ("detlab.state", "requeued")


def test_mlflow_run_statuses_are_mlflows_own():
    from mlflow.entities import RunStatus as MlflowStatus

    assert {s.value for s in RunStatus} == set(map(MlflowStatus.to_string,
                                                    MlflowStatus.all_status()))  # fmt: skip
    assert {"FINISHED", "FAILED", "KILLED"} == ENDED


def test_final_job_states_read_from_slurms_strings():
    assert "COMPLETED" in FINAL and "CANCELLED" in FINAL
    assert not {"PENDING", "RUNNING", "PREEMPTED", "REQUEUED", "UNKNOWN"} & FINAL


def test_the_states_import_neither_torch_nor_mlflow():
    code = "import sys, detlab.platform.states; print(sorted({'torch', 'mlflow'} & sys.modules.keys()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
